"""Benchmark: CPU threads on an idle machine and beside a busy core (``pipeline/core/threads.py``).

Not a test: run it by hand on a trained scene (its inputs are read, nothing is written)::

    .venv/bin/python -m benchmarks.threads --scene data/demo
    .venv/bin/python -m benchmarks.threads --scene data/demo --steps 60 --settings 0 1 2

For each ``train.cpu_threads`` setting (0: the default rule, one thread per core other processes
leave idle) and each machine state (idle; ``busy``: one more process spinning on a core, as a
second job would), a fresh process runs ``--steps`` training steps of the scene's ``params.yaml``
CPU schedule from its sparse points (the Trainer's own step, no checkpoint), after 5 warm-up
steps, and one exact query relevance pass (``query.threads`` the same setting, 10 queries). It
prints seconds per step, seconds per query and the threads the rule chose. Ratio: each setting's
time over the best explicit setting's in the same machine state (the goal: the default within
1.2x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SPIN = "while True:\n    pass\n"  # a second job keeping one core busy


def run_case(scene: str, threads: int, steps: int) -> dict[str, Any]:
    """In this process: seconds per training step and per query with ``threads`` (0: the rule)."""
    import dataclasses

    import torch

    from pipeline.core.config import load_config
    from pipeline.core.scene import Scene
    from pipeline.core.threads import CpuThreads
    from pipeline.query.config import QueryConfig
    from pipeline.query.session import QuerySession
    from pipeline.splat.config import TrainConfig
    from pipeline.splat.train import Trainer, open_inputs, view_order

    sc = Scene(Path(scene))
    params = REPO / "params.yaml"
    cfg = dataclasses.replace(load_config(TrainConfig, "train", params), cpu_threads=threads, device="cpu")
    models = list(json.loads((sc.model_dir / "config.json").read_text())["models"])
    auto = CpuThreads(threads)
    auto.update()
    inputs = open_inputs(sc, cfg, models, "cpu")
    tr = Trainer(sc, cfg, models, inputs)
    chosen = []
    for i in range(5 + steps):
        if i == 5:
            start = time.perf_counter()
        chosen.append(auto.update())
        tr.train_step(inputs.train[view_order(len(inputs.train), tr.step, cfg.seed)])
    step_s = (time.perf_counter() - start) / steps
    qcfg = dataclasses.replace(load_config(QueryConfig, "query", params), threads=threads, device="cpu")
    session = QuerySession(sc, qcfg)
    session.relevance(session.encode(vector=torch.randn(session.engine.bank.shape[1]).numpy()))  # builds
    times = []
    for _ in range(10):
        qv = session.encode(vector=torch.randn(session.engine.bank.shape[1]).numpy())
        t = time.perf_counter()
        session.relevance(qv)
        times.append(time.perf_counter() - t)
    return {"step_s": step_s, "query_s": statistics.median(times), "threads": sorted(set(chosen))}


def in_process(scene: str, threads: int, steps: int) -> dict[str, Any]:
    call = f"run_case({scene!r}, {threads}, {steps})"
    code = f"import json; from benchmarks.threads import run_case; print(json.dumps({call}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene", type=Path, required=True, help="a trained scene folder (e.g. data/demo)")
    ap.add_argument("--steps", type=int, default=60, help="timed training steps per case")
    ap.add_argument("--settings", type=int, nargs="+", default=[0, 1, 2], help="cpu_threads values (0: the rule)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    rows = []
    for state in ("idle", "busy"):
        spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if state == "busy" else None
        try:
            time.sleep(1.0 if spinner else 0.0)
            for threads in args.settings:
                rows.append({"state": state, "setting": threads, **in_process(str(args.scene), threads, args.steps)})
                print(rows[-1], file=sys.stderr)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    print("| machine | cpu_threads | threads used | s / step | ratio to best explicit | s / query | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        explicit = [o for o in rows if o["state"] == r["state"] and o["setting"] > 0]
        best_step = min(o["step_s"] for o in explicit) if explicit else r["step_s"]
        best_query = min(o["query_s"] for o in explicit) if explicit else r["query_s"]
        setting = "0 (rule)" if r["setting"] == 0 else str(r["setting"])
        print(
            f"| {r['state']} | {setting} | {', '.join(map(str, r['threads']))} | {r['step_s']:.3f} | "
            f"{r['step_s'] / best_step:.2f} | {r['query_s']:.4f} | {r['query_s'] / best_query:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
