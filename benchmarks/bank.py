"""Benchmark: the streaming FAISS bank (``pipeline.bank.reduction``) vs the published Algorithm 1.

Not a test: run it by hand (~15 min on 2 idle cores; the published algorithm dominates)::

    .venv/bin/python benchmarks/bank.py                       # synthetic scene-like features
    .venv/bin/python benchmarks/bank.py --features data/demo/features/clip.zarr
    .venv/bin/python benchmarks/bank.py --stream-rows 1000000 # peak RAM of a 1M-row stream

For every N it prints, for both algorithms: seconds, bank size t, coverage (fraction of rows
with a bank entry of cosine >= theta) and mean best cosine (both exact, computed after the
timed run), then the speed-up and the ratio of bank sizes. Wall and CPU seconds are both shown:
on a shared machine CPU seconds (all threads) compare more fairly.

Synthetic data ("scene-like", d = 768): a scene of ``n_objects`` objects, each a smooth 2-D
surface of features (random Fourier field through a rank-16 basis around the object's centre,
plus a direction shared by all features); every view is a 64 x 64 grid split into 20 Voronoi
regions, each showing a random window of one object's surface, plus per-pixel noise. More views
see more of the same surfaces, so the bank grows sublinearly in N, as it does on real captures.
The published algorithm covers ~80% of the rows of this data at N = 25k (theta 0.8).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.bank.reduction import BankConfig, build_bank, coverage_stats
from pipeline.core.runtime import peak_ram_mb

SIZES = (25_000, 50_000, 100_000, 200_000)


def scene_views(
    n_views: int, d: int = 768, n_objects: int = 60, rank: int = 16, hw: int = 64, objects_per_view: int = 20,
    shared: float = 0.7, spread: float = 1.5, noise: float = 0.3, freq: float = 0.5, n_freq: int = 32,
    jitter: float = 0.02, seed: int = 0,
) -> Iterator[np.ndarray]:  # fmt: skip
    """Yield ``n_views`` synthetic views of one scene, each ``[hw*hw, d] float32`` (see module doc)."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(d)
    mean /= np.linalg.norm(mean)
    centres = rng.standard_normal((n_objects, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = rng.standard_normal((n_objects, rank, d)) / np.sqrt(d * rank)
    omega = rng.standard_normal((n_objects, 2, n_freq)) * np.pi * freq
    phase = rng.random((n_objects, n_freq)) * 2 * np.pi
    mix = rng.standard_normal((n_objects, n_freq, rank)) * np.sqrt(2.0 / n_freq)
    yy, xx = np.mgrid[0:hw, 0:hw] / hw * 2 - 1
    pix = np.stack([yy.ravel(), xx.ravel()], 1)
    for _ in range(n_views):
        objs = rng.choice(n_objects, objects_per_view, replace=False)
        seeds = rng.random((objects_per_view, 2)) * 2 - 1
        region = ((pix[:, None, :] - seeds[None]) ** 2).sum(-1).argmin(-1)
        x = shared * mean + noise * rng.standard_normal((hw * hw, d)) / np.sqrt(d)
        for j, o in enumerate(objs):
            sel = region == j
            ang, scale = rng.random() * 2 * np.pi, 0.5 + rng.random()
            rot = scale * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
            u = (pix[sel] - seeds[j]) @ rot + rng.random(2) * 2 - 1  # window on the surface
            z = np.sin(u @ omega[o] + phase[o]) @ mix[o] + jitter * rng.standard_normal(rank)
            x[sel] += centres[o] + spread * (z @ basis[o])
        yield x.astype(np.float32)


def synthetic_rows(n: int, d: int = 768, seed: int = 0) -> np.ndarray:
    """The first ``n`` rows ``[n, d]`` of the synthetic scene (views in order)."""
    views = scene_views(-(-n // 4096), d=d, seed=seed)
    return np.concatenate(list(views))[:n]


def feature_rows(path: Path, n: int) -> np.ndarray:
    """The first ``n`` valid rows ``[n', d]`` of a stored feature store (views in order)."""
    from pipeline.features.store import FeatureStore

    store = FeatureStore.open(path)
    rows, have = [], 0
    for _, feats, valid in store.iter_views():
        rows.append(feats.reshape(-1, feats.shape[-1])[valid.reshape(-1)].astype(np.float32))
        have += len(rows[-1])
        if have >= n:
            break
    return np.concatenate(rows)[:n]


def published_bank(x: np.ndarray, theta: float, chunk: int = 1024) -> np.ndarray:
    """The published Algorithm 1 as the reference code runs it; returns entry row numbers ``[t]``.

    All rows are normalised in memory; each chunk of ``chunk`` rows is compared with *all* N rows
    (``[chunk, N]`` products, O(N^2 d)); a row not yet used whose neighbour set
    ``J = {cos >= theta}`` has no used member is accepted, and all of J is marked used.
    """
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    used = np.zeros(len(x), dtype=bool)
    entries = []
    for start in range(0, len(x), chunk):
        sim = xn[start : start + chunk] @ xn.T  # [chunk, N]
        for j, row in enumerate(sim):
            if used[start + j]:
                continue
            neighbours = row >= theta
            if used[neighbours].any():
                continue
            entries.append(start + j)
            used[neighbours] = True
    return np.asarray(entries, dtype=np.int64)


def compare(x: np.ndarray, theta: float, published: bool) -> dict:
    """Run both algorithms on ``x [N, d]``; exact coverage stats for each bank."""
    cfg = BankConfig(threshold=theta, dtype="float32", verify=False)
    out: dict = {"N": len(x)}
    start, cpu = time.perf_counter(), time.process_time()
    ours = build_bank(lambda: ((x[i : i + 4096], None) for i in range(0, len(x), 4096)), cfg)
    out["ours"] = {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "t": len(ours.bank),
    }
    out["ours"].update(coverage_stats(ours.bank, [(x, None)], cfg))
    if published:
        start, cpu = time.perf_counter(), time.process_time()
        entries = published_bank(x, theta)
        out["published"] = {
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu,
            "t": len(entries),
        }
        out["published"].update(coverage_stats(x[entries], [(x, None)], cfg))
        out["speedup"] = out["published"]["seconds"] / out["ours"]["seconds"]
        out["t_ratio"] = out["ours"]["t"] / out["published"]["t"]
    return out


def _line(name: str, r: dict) -> str:
    return (
        f"  {name:<10} {r['seconds']:9.2f} s (cpu {r['cpu_seconds']:8.1f} s)  t={r['t']:6d}  "
        f"coverage={r['coverage']:.4f}  "
        f"mean best cos={r['mean_best_cosine']:.4f}  min={r['min_best_cosine']:.4f}"
    )


def stream_peak(n: int, theta: float) -> dict:
    """Stream ``n`` synthetic rows view by view through the reduction; stats incl. peak RAM."""
    cfg = BankConfig(threshold=theta, dtype="float32", verify=False)
    views = lambda: ((v, None) for v in scene_views(-(-n // 4096)))  # noqa: E731 - regenerated every pass
    result = build_bank(views, cfg)
    return {**result.stats, "peak_ram_mb": peak_ram_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="row counts N")
    ap.add_argument("--theta", type=float, default=0.8, help="cosine threshold")
    ap.add_argument("--features", type=Path, help="a feature store (zarr) to take rows from")
    ap.add_argument("--no-published", action="store_true", help="only time our reduction")
    ap.add_argument("--stream-rows", type=int, help="measure peak RAM streaming this many synthetic rows")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.stream_rows:
        # a fresh process, so that ru_maxrss is the stream's own peak
        code = (
            "import json,sys; from benchmarks.bank import stream_peak; "
            f"print(json.dumps(stream_peak({args.stream_rows}, {args.theta})))"
        )
        stats = json.loads(
            subprocess.run(
                [sys.executable, "-c", code], check=True, capture_output=True, text=True
            ).stdout.splitlines()[-1]
        )
        print(
            f"stream N={stats['N']}: t={stats['t']}, {stats['seconds']:.1f} s, peak RAM {stats['peak_ram_mb']:.0f} MiB"
        )
        results = [stats]
    else:
        source = f"features {args.features}" if args.features else "synthetic scene-like"
        print(f"data: {source}, theta {args.theta}")
        results = []
        for n in args.sizes:
            x = feature_rows(args.features, n) if args.features else synthetic_rows(n)
            r = compare(x, args.theta, not args.no_published)
            results.append(r)
            print(f"N={r['N']} d={x.shape[1]}")
            print(_line("ours", r["ours"]))
            if "published" in r:
                print(_line("published", r["published"]))
                print(f"  speed-up x{r['speedup']:.1f}, t ours/published {r['t_ratio']:.2f}")
            sys.stdout.flush()
        if len(results) > 1:
            first, last = results[0], results[-1]
            print(
                f"our time ratio N={last['N']}/N={first['N']}: {last['ours']['seconds'] / first['ours']['seconds']:.2f}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
