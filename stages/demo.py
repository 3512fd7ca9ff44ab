"""Stage ``demo``: render the built-in demo scene into ``<scene folder>/input``.

Reads ``params.yaml: demo`` (:class:`~pipeline.demo.config.DemoConfig`). Writes
``input/view_000.png ...``, ``input/ground_truth.json`` (cameras, object boxes, extent,
provenance) and ``input/labels/`` (LERF-OVS-style annotations of every ``label_every``-th view)
atomically: the folder appears complete or not at all.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import typer

from pipeline.core.code import code_hash
from pipeline.core.errors import M3Error
from pipeline.core.io import provenance
from pipeline.demo.config import DemoConfig
from pipeline.demo.scene import make_demo_scene
from stages.command import PARAMS, Options, command, resolve_scene

log = logging.getLogger(__name__)


def run(config: DemoConfig, out_dir: Path) -> Path:
    """Render the demo scene into ``out_dir/input`` (``out_dir`` is the scene folder); returns it."""
    start = time.perf_counter()
    input_dir = Path(out_dir) / "input"
    if input_dir.is_dir() and any(input_dir.iterdir()):
        made = input_dir / "ground_truth.json"
        try:
            stage = (json.loads(made.read_text()).get("provenance") or {}).get("stage") if made.is_file() else None
        except (OSError, ValueError, AttributeError):
            stage = None
        if stage != "demo":
            raise M3Error(
                f"{input_dir}: holds a scene's own input, not a rendered demo; nothing was replaced "
                "(pick another scene folder for the demo)"
            )
    # no inputs: the generator's code (hashed in the provenance) and the config make the scene
    prov = provenance("demo", config, "", code_hash(__name__))
    make_demo_scene(
        input_dir,
        config.n_views,
        config.width,
        config.height,
        config.seed,
        config.supersample,
        extra={"provenance": prov},
        label_every=config.label_every,
    )
    log.info("demo: %d views in %.1f s -> %s", config.n_views, time.perf_counter() - start, input_dir)
    return input_dir


@command(DemoConfig)
def cli(
    options: Options[DemoConfig],
    scene: str = typer.Argument(
        "demo", help="scene name (folder under data/) or path of the scene folder; writes its input/"
    ),
    params: Path = PARAMS,
) -> None:
    """Render the built-in procedural demo scene (textured room with objects, known cameras).

    Writes <scene>/input/view_000.png ... and <scene>/input/ground_truth.json.
    """
    run(options.load("demo", params), resolve_scene(scene).root)
