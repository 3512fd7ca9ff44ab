"""Peak RAM of the features stage versus the number of views.

Runs ``stages.features.run`` on an existing posed scene in a fresh Python process and prints one
JSON line: ``{"views", "peak_rss_mb", "rss_after_model_mb", "seconds"}``. ``peak_rss_mb`` is the
kernel's high-water mark of the process (``ru_maxrss``), so nothing between samples is missed.
``tests/features/test_stage.py`` runs it on 10 and 40 views of the demo scene::

    python benchmarks/features_memory.py data/demo --model clip --conf '{"weights": "random"}'
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(scene: Path, model: str, conf: dict) -> dict:
    """Run the stage in this process; peak and post-model-build RSS in MiB."""
    from pipeline.core.scene import Scene
    from pipeline.features.models import build_model
    from stages.features import run

    start = time.perf_counter()
    built = build_model(model, conf, "cpu")
    after_model = _rss_mb()
    stats = run(conf, Scene(Path(scene)), model, model=built)
    return {
        "views": stats["views"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_model_mb": round(after_model, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }


def measure_in_subprocess(scene: Path, model: str, conf: dict) -> dict:
    """:func:`measure` in a fresh interpreter (so earlier allocations do not count)."""
    out = subprocess.run(
        [sys.executable, __file__, str(scene), "--model", model, "--conf", json.dumps(conf)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene", type=Path, help="scene folder with colmap/ (posed views)")
    parser.add_argument("--model", default="clip", help="registered adapter name")
    parser.add_argument("--conf", default="{}", help="features.<model> settings as JSON")
    args = parser.parse_args()
    print(json.dumps(measure(args.scene, args.model, json.loads(args.conf))))


if __name__ == "__main__":
    main()
