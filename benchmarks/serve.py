"""Benchmark: warm query latency and throughput of ``m3 serve`` beside the cold ``m3 query``.

Not a test: run it by hand on a trained scene (``data/demo`` after the demo pipeline)::

    .venv/bin/python -m benchmarks.serve --scene data/demo                    # the demo and a 1M copy
    .venv/bin/python -m benchmarks.serve --scene data/demo --sizes 0 --clients 1 4 --queries 40

For each size (0: the scene as trained; else a synthetic copy of that many Gaussians) one server
process (``m3 serve``, the scene's ``params.yaml`` settings) answers text queries
(``POST /scenes/{scene}/query``: the 3D answer, no heatmaps) from 1 and 4 concurrent clients
(threads of :class:`stages.server.client.M3Client`), each sending ``--queries`` different texts
in turn, with exact memory attention and with ``attention_k: 16``. Latency is per request as the
client sees it (p50/p90/p99); throughput is requests per second of wall time over all clients.
The first request of each path is reported apart (it builds the query-independent caches). One
more row asks for the heatmaps of the scene's ``query.n_views`` views (what ``m3 query`` writes).

The cold rows run ``m3 query <scene> <text>`` as a new process each time (torch, the text tower
and the memory loaded again, heatmaps written): the median of ``--cold`` runs.

The synthetic copy keeps the scene's heads, bank, features and views (symlinks) and replaces
``model/point_cloud.ply`` with ``n`` Gaussians drawn from the trained ones (every parameter,
the principal queries included), their centres jittered by 1% of the scene's extent: a memory
as large as a big scene's, with the trained one's statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.scene import Scene
from pipeline.splat.gaussians import load_ply, save_ply
from stages.server.client import M3Client, M3ServerError

TEXTS = [
    "a red box", "a green ball", "a blue cylinder", "a yellow duck", "a wooden table", "the floor",
    "a white wall", "a small cube", "a round object", "something metallic", "a chair", "a lamp",
]  # fmt: skip
REPO = Path(__file__).resolve().parent.parent


def synthetic_scene(scene: Scene, n: int, root: Path, seed: int = 0) -> Scene:
    """A copy of ``scene`` under ``root`` whose memory holds ``n`` Gaussians (see the module doc)."""
    out = root / f"{scene.name}-{n}"
    out.mkdir(parents=True)
    for entry in scene.root.iterdir():
        if entry.name != "model":
            (out / entry.name).symlink_to(entry.resolve())
    (out / "model").mkdir()
    for f in scene.model_dir.iterdir():
        if f.is_file() and f.name not in ("point_cloud.ply", "checkpoint.safetensors"):
            shutil.copy2(f, out / "model" / f.name)
    params = load_ply(scene.model_dir / "point_cloud.ply")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(params["means"]), (n,), generator=gen)
    big = {k: v[idx] for k, v in params.items()}
    extent = float((params["means"].amax(0) - params["means"].amin(0)).norm())
    big["means"] = big["means"] + 0.01 * extent * torch.randn(n, 3, generator=gen)
    save_ply(out / "model" / "point_cloud.ply", big)
    return Scene(out)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(scene: Scene, params: Path, log: Path) -> tuple[subprocess.Popen, M3Client, float]:
    """``m3 serve scene`` on a free port; the process, a client and the seconds until ``/health``."""
    port = free_port()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "stages.cli", "serve", str(scene.root), "--port", str(port), "--params", str(params)]
    start = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=err, stderr=subprocess.STDOUT)
    client = M3Client(f"http://127.0.0.1:{port}", timeout=3600)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"m3 serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            client.health()
            return proc, client, time.perf_counter() - start
        except (OSError, M3ServerError):
            time.sleep(0.2)


def load(client: M3Client, scene: str, clients: int, queries: int, **options: Any) -> dict[str, float]:
    """Latency percentiles (ms) and throughput (requests/s) of ``clients`` threads sending ``queries`` texts each."""
    lat: list[float] = []
    guard = threading.Lock()

    def worker(w: int) -> None:
        for i in range(queries):
            t = time.perf_counter()
            client.query(scene, TEXTS[(w * 5 + i) % len(TEXTS)], **options)
            with guard:
                lat.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(lat) * 1000
    return {
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "rps": len(lat) / wall,
    }


def first_query(client: M3Client, scene: str, **options: Any) -> float:
    t = time.perf_counter()
    client.query(scene, "a first query", **options)
    return time.perf_counter() - t


def cold_query(scene: Scene, params: Path, runs: int, tmp: Path) -> float:
    """Median wall seconds of ``m3 query`` as a new process (heatmaps written)."""
    times = []
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}
    for i in range(runs):
        cmd = [sys.executable, "-m", "stages.cli", "query", str(scene.root), TEXTS[i % len(TEXTS)]]
        cmd += ["--out", str(tmp / f"cold-{scene.name}-{i}"), "--params", str(params)]
        t = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_scene(scene: Scene, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Every row of one scene: warm paths x clients, heatmaps, cold CLI."""
    proc, client, ready = start_server(scene, args.params, tmp / f"serve-{scene.name}.log")
    rows: list[dict[str, Any]] = []
    try:
        n = client.scene(scene.name)["gaussians"]
        print(f"{scene.name}: {n} Gaussians, server ready in {ready:.1f} s", file=sys.stderr)
        for label, k in (("exact", None), ("top-16", 16)):
            first = first_query(client, scene.name, attention_k=k)
            for c in args.clients:
                rows.append({"scene": scene.name, "gaussians": n, "path": label, "clients": c, "first_s": first,
                             **load(client, scene.name, c, args.queries, attention_k=k)})  # fmt: skip
        stats = load(client, scene.name, 1, max(3, args.queries // 4), attention_k=16, heatmaps=True)
        rows.append({"scene": scene.name, "gaussians": n, "path": "top-16 + heatmaps", "clients": 1, **stats})
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    if args.cold:
        cold = cold_query(scene, args.params, args.cold, tmp)
        rows.append({"scene": scene.name, "gaussians": n, "path": "cold m3 query", "clients": 1, "p50": cold * 1000})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def cell(r: dict[str, Any], k: str, fmt: str) -> str:
        return format(r[k], fmt) if k in r else "-"

    out = ["| scene | Gaussians | path | clients | p50 ms | p90 ms | p99 ms | requests/s | first query s |",
           "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        figures = [cell(r, k, f) for k, f in (("p50", ".0f"), ("p90", ".0f"), ("p99", ".0f"), ("rps", ".1f"))]
        figures.append(cell(r, "first_s", ".2f"))
        cells = [str(r["scene"]), str(r["gaussians"]), r["path"], str(r["clients"]), *figures]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene", type=Path, required=True, help="a trained scene folder (e.g. data/demo)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[0, 1_000_000], help="0: as trained; else a copy")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--queries", type=int, default=20, help="queries per client")
    ap.add_argument("--cold", type=int, default=3, help="cold m3 query runs per scene (0: none)")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    scene = Scene(args.scene.resolve())
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="m3-serve-bench-") as d:
        tmp = Path(d)
        for size in args.sizes:
            rows += bench_scene(scene if size == 0 else synthetic_scene(scene, size, tmp), args, tmp)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
