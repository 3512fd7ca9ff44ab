"""Benchmark: the CPU rasterizer, today's path (torch backend, gsplat's box tiles) against the new one
(compiled kernel, exact ellipse tiles), forward and forward+backward, interleaved, medians.

    python -m benchmarks.raster                       # the full grid (10k/50k x 3 sizes x 3/35 channels)
    python -m benchmarks.raster --sizes 320x240 --gaussians 50000 --channels 35 --threads 1 2

Scenes are random (tests/splat/test_raster.py's generator) with Gaussian sizes chosen so that the
image is covered about ``--layers`` times over (a trained scene's depth complexity), the same 3D
scene at every resolution. Per row: milliseconds (median of ``--repeats`` interleaved runs) of
forward and of forward+backward for both paths and their ratio, and the tile-list entries and
listed pixel-entry pairs (entries x 64 pixels per 8 px tile) of box and ellipse tiles.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from pipeline.splat.raster import rasterize
from pipeline.splat.raster_cpp import kernel
from pipeline.splat.tiles import isect_tiles

PATHS = {"today": ("torch", "box"), "new": ("cpp", "ellipse")}


def scene(n: int, channels: int, layers: float, width: int, height: int, seed: int = 0) -> tuple:
    """``n`` Gaussians in front of a camera, covering the image about ``layers`` times (3-sigma
    discs), rendered at ``width x height`` (the scene itself does not depend on the size)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * torch.tensor([0.6, 0.45, 0.5])
    means[:, 2] += 3.0
    quats = torch.randn(n, 4, generator=g)
    # a disc of 3 sigma covers pi (3 s f / z)^2 pixels; f = 1.1 W, z ~ 3: n discs ~ layers x W H
    sigma = math.sqrt(layers * 4 / 3 / (n * math.pi * 9)) * 3 / 1.1
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.3) * sigma
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    colors = torch.rand(n, channels, generator=g)
    f = 1.1 * width
    Ks = torch.tensor([[[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]])
    return [means, quats, scales, opacities, colors], torch.eye(4)[None], Ks


def once(params: list, viewmats, Ks, width: int, height: int, path: str, backward: bool, clock) -> float:
    backend, tiles = PATHS[path]
    ps = [p.detach().clone().requires_grad_(backward) for p in params]
    start = clock()
    img, alpha, meta = rasterize(*ps, viewmats, Ks, width, height, backend=backend, tiles=tiles)
    if backward:
        meta["means2d"].retain_grad()
        (img.sum() + alpha.sum()).backward()
    return clock() - start


def pairs(params: list, viewmats, Ks, width: int, height: int) -> dict[str, int]:
    """Tile-list entries with box and with ellipse tiles (8 px tiles, both paths' default)."""
    out = {}
    _, _, meta = rasterize(*params, viewmats, Ks, width, height, backend="torch", tile_size=8)
    m2d, rad, dep = meta["means2d"][0], meta["radii"][0], meta["depths"][0]
    img = torch.zeros(len(m2d), dtype=torch.long)
    tw, th = math.ceil(width / 8), math.ceil(height / 8)
    for name, ellipse in (("box", None), ("ellipse", (meta["conics"][0], meta["opacities"][0], width, height))):
        _, ids, _ = isect_tiles(m2d, rad, dep, img, 8, tw, th, ellipse)
        out[name] = len(ids)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gaussians", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--sizes", nargs="+", default=["160x120", "320x240", "640x480"])
    ap.add_argument("--channels", type=int, nargs="+", default=[3, 35])
    ap.add_argument("--layers", type=float, default=20.0, help="depth complexity: image coverage by 3-sigma discs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or the process's CPU time (all threads; steadier on a busy machine)",
    )
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    assert kernel() is not None, "the compiled kernel does not build here"
    print(
        f"{'N':>6} {'size':>8} {'C':>3} {'thr':>3} | {'fwd today':>9} {'fwd new':>8} {'x':>5} | "
        f"{'f+b today':>9} {'f+b new':>8} {'x':>5} | {'entries box':>11} {'ellipse':>8} "
        f"{'pairs box':>10} {'ellipse':>9}"
    )
    for n in args.gaussians:
        for size in args.sizes:
            width, height = map(int, size.split("x"))
            for c in args.channels:
                params, viewmats, Ks = scene(n, c, args.layers, width, height)
                counts = pairs(params, viewmats, Ks, width, height)
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    times: dict[tuple[str, bool], list[float]] = {}
                    for _ in range(args.repeats):  # interleaved: today, new, today, new, ...
                        for backward in (False, True):
                            for path in PATHS:
                                times.setdefault((path, backward), []).append(
                                    once(params, viewmats, Ks, width, height, path, backward, clock)
                                )
                    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
                    print(
                        f"{n:>6} {size:>8} {c:>3} {threads:>3} | {ms['today', False]:9.0f} {ms['new', False]:8.0f} "
                        f"{ms['today', False] / ms['new', False]:5.1f} | {ms['today', True]:9.0f} "
                        f"{ms['new', True]:8.0f} {ms['today', True] / ms['new', True]:5.1f} | "
                        f"{counts['box']:11d} {counts['ellipse']:8d} {counts['box'] * 64:10d} "
                        f"{counts['ellipse'] * 64:9d}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
