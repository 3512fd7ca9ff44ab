"""Features of a scene with the local executor vs a pool of Ray actors: seconds and RAM.

Each run is a fresh Python process extracting every view of the scene into a fresh copy of it
(``stages.features.run``), so nothing is cached between runs. Three executors, interleaved: local
(torch's default threads, one per core), local with one torch thread (as each actor runs), and Ray:
a private Ray on this machine (``--cpus`` CPUs, 100 MiB object store, no dashboard) with
``--actors`` actors of 1 CPU each. Reported per executor, median over ``--repeats`` runs (min-max in brackets):

- ``ray start s``: ``ray.init`` of the private Ray (0 for local);
- ``stage s``: the stage's own seconds, of which ``ready s`` until the first view is stored (local:
  building the model; Ray: starting the actors and loading the model in each);
- ``views/s``: extraction rate after that (views 2..n over the time from the first to the last);
- ``driver MiB``: peak RSS of the stage's process (``ru_maxrss``);
- ``actor MiB``: peak RSS of each actor process (``VmHWM``, read every 0.2 s until it exits);
- ``ray other MiB``: summed peak RSS of Ray's other processes (raylet, GCS, idle workers, ...).

    python benchmarks/ray_features.py data/demo --repeats 3     # a posed scene (after `dvc repro poses@demo`)
    python benchmarks/ray_features.py data/demo --input-size 672   # heavier views: 48 x 64 maps
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CONF = {"weights": "random", "input_size": 224}  # make demo WEIGHTS=random: 16 x 21 x 32 maps
LABELS = {"local": "local", "local-1t": "local, 1 torch thread", "ray": "ray, {actors} actors (1 CPU each)"}


def _peak_mb(pid: int) -> float | None:
    """Peak RSS (``VmHWM``) of process ``pid`` in MiB, or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RaySampler(threading.Thread):
    """Keeps the latest peak RSS of every descendant process of this one (Ray's processes)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.is_set():
            for proc in me.children(recursive=True):
                peak = _peak_mb(proc.pid)
                try:
                    name = " ".join(proc.cmdline()[:1]) or proc.name()
                except psutil.Error:
                    continue
                if peak is not None:
                    self.peaks[proc.pid] = (name, max(peak, self.peaks.get(proc.pid, ("", 0.0))[1]))
            time.sleep(0.2)


class Clock:
    """``on_view`` of the stage: when the first and the last view were stored."""

    def __init__(self) -> None:
        self.start, self.times = time.perf_counter(), []

    def __call__(self, i: int) -> None:
        self.times.append(time.perf_counter())

    def figures(self) -> dict:
        first, last = self.times[0], self.times[-1]
        return {"ready_s": first - self.start, "rate": (len(self.times) - 1) / max(last - first, 1e-9)}


def child(executor: str, scene: Path, actors: int, cpus: int, conf: dict) -> dict:
    """One measured run in this process (see the module docstring)."""
    import torch

    from pipeline.cluster.config import ClusterConfig
    from pipeline.cluster.session import ray_session
    from pipeline.core.scene import Scene
    from stages.features import run

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "scene"
        shutil.copytree(scene, copy, ignore=shutil.ignore_patterns("features"))
        if executor.startswith("local"):
            if executor == "local-1t":  # as each actor runs (Ray sets 1 thread per CPU reserved)
                torch.set_num_threads(1)
            clock = Clock()
            stats = run(conf, Scene(copy), "clip", device="cpu", on_view=clock)
            return clock.figures() | {
                "ray_start_s": 0.0,
                "stage_s": stats["seconds"],
                "views": stats["views"],
                "driver_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "actors_mb": [],
                "ray_other_mb": 0.0,
            }
        sampler = RaySampler()
        t0 = time.perf_counter()
        with ray_session(ClusterConfig(local_cpus=cpus, object_store_mb=100)):
            started = time.perf_counter() - t0
            sampler.start()
            cluster = ClusterConfig(executor="ray", actors=actors, actor_cpus=1.0)
            clock = Clock()
            stats = run(conf, Scene(copy), "clip", device="cpu", cluster=cluster, on_view=clock)
            time.sleep(0.5)  # a last sample of the actors before Ray stops
        sampler.stop.set()
        sampler.join()
        actors_mb = [mb for name, mb in sampler.peaks.values() if name.startswith("ray::FeatureWorker")]
        other = sum(mb for name, mb in sampler.peaks.values() if not name.startswith("ray::FeatureWorker"))
        return clock.figures() | {
            "ray_start_s": started,
            "stage_s": stats["seconds"],
            "views": stats["views"],
            "driver_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "actors_mb": actors_mb,
            "ray_other_mb": other,
        }


def _measure(executor: str, scene: Path, actors: int, cpus: int, input_size: int) -> dict:
    cmd = [sys.executable, __file__, str(scene), "--child", executor, "--actors", str(actors), "--cpus", str(cpus)]
    cmd += ["--input-size", str(input_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cell(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return (
        f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"
        if len(values) > 1
        else f"{med:.{digits}f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene", type=Path, help="a posed scene folder (colmap/ with images and sparse model)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per executor (the median is shown)")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors (1 CPU each)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the private Ray")
    parser.add_argument("--input-size", type=int, default=224, help="features.clip.input_size (short side)")
    parser.add_argument("--json", type=Path, help="also save every run's figures here")
    parser.add_argument("--child", choices=list(LABELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        conf = CONF | {"input_size": args.input_size}
        print(json.dumps(child(args.child, args.scene, args.actors, args.cpus, conf)))
        return
    runs: dict[str, list[dict]] = {executor: [] for executor in LABELS}
    for _ in range(args.repeats):  # interleaved, so a drift of the machine's speed hits both alike
        for executor in runs:
            runs[executor].append(_measure(executor, args.scene, args.actors, args.cpus, args.input_size))
    print(f"clip, weights random, input_size {args.input_size}; median (min-max) of {args.repeats} runs")
    print("| executor | ray start s | stage s | ready s | views/s | driver MiB | actor MiB (each) | ray other MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for executor, rs in runs.items():
        name = LABELS[executor].format(actors=args.actors)
        print(
            f"| {name} | {_cell([r['ray_start_s'] for r in rs])} | {_cell([r['stage_s'] for r in rs])} "
            f"| {_cell([r['ready_s'] for r in rs])} | {_cell([r['rate'] for r in rs], 2)} "
            f"| {_cell([r['driver_mb'] for r in rs], 0)} "
            f"| {_cell([mb for r in rs for mb in r['actors_mb']], 0)} | {_cell([r['ray_other_mb'] for r in rs], 0)} |"
        )
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
