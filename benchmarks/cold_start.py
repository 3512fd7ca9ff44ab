"""Benchmark: the CLI's cold start, ``m3 --help`` and ``m3 <command> --help`` for every command.

Not a test: run it by hand (~1 min on 2 cores at the default 5 repeats)::

    .venv/bin/python -m benchmarks.cold_start                     # this checkout
    .venv/bin/python -m benchmarks.cold_start --root ../other     # another checkout of the project
    .venv/bin/python -m benchmarks.cold_start --commands query features --repeats 9

Each help runs in a fresh process (``python -m stages.cli [command] --help`` in ``--root``, which
imports that checkout's ``stages`` and ``pipeline``), ``--repeats`` times, interleaved across
commands so that load from other processes spreads over all of them. The table gives the median
and the fastest wall time (milliseconds, process start to exit) and which heavy libraries the help
loaded (one more run per command that lists them from ``sys.modules``). The goal: under 500 ms and
no torch for every row (``tests/stages/test_cli.py`` checks the libraries, never the time).
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

HEAVY = ("torch", "numpy", "zarr", "dvc", "pycolmap", "transformers")
"""Libraries a help should not load."""
LOADED = """
import sys
from stages.cli import app
try:
    app({args!r})
except SystemExit:
    pass
print("loaded:", *(m for m in {heavy!r} if m in sys.modules))
"""


def help_seconds(root: Path, args: list[str]) -> float:
    """Wall seconds of one ``m3 <args>`` run in a fresh process (its output discarded)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stages.cli", *args], cwd=root, capture_output=True, check=True)
    return time.perf_counter() - start


def loaded_libraries(root: Path, args: list[str]) -> list[str]:
    """The :data:`HEAVY` libraries in ``sys.modules`` after ``m3 <args>`` in a fresh process."""
    code = LOADED.format(args=args, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    return out.rpartition("loaded:")[2].split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="project checkout to time")
    parser.add_argument("--commands", nargs="*", help="commands to time (default: every one, and m3 --help)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per command")
    parser.add_argument("--json", type=Path, help="also save the numbers here")
    args = parser.parse_args()

    listed = subprocess.run(
        [sys.executable, "-c", "from stages.cli import COMMANDS; print(*COMMANDS)"],
        cwd=args.root, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    runs = [[c, "--help"] for c in args.commands or listed]
    if not args.commands:
        runs.insert(0, ["--help"])
    times: dict[str, list[float]] = {" ".join(r): [] for r in runs}
    for _ in range(args.repeats):
        for r in runs:
            times[" ".join(r)].append(help_seconds(args.root, r))
    rows: list[dict[str, Any]] = []
    for r in runs:
        name = " ".join(r)
        rows.append(
            {
                "command": f"m3 {name}",
                "median_ms": round(1000 * statistics.median(times[name])),
                "min_ms": round(1000 * min(times[name])),
                "loaded": loaded_libraries(args.root, r),
            }
        )
    print(f"{args.repeats} runs each, wall milliseconds\n")
    print("| command | median ms | min ms | heavy libraries loaded |\n|---|---|---|---|")
    for row in rows:
        print(f"| `{row['command']}` | {row['median_ms']} | {row['min_ms']} | {', '.join(row['loaded']) or '-'} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
