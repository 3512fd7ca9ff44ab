"""Stage ``demo``: render the built-in demo scene into ``<scene folder>/input``.

Reads ``params.yaml: demo`` (:class:`~pipeline.demo.config.DemoConfig`). Writes
``input/view_000.png ...``, ``input/ground_truth.json`` (cameras, object boxes, extent,
provenance) and ``input/labels/`` (LERF-OVS-style annotations of every ``label_every``-th view)
atomically: the folder appears complete or not at all (:func:`pipeline.demo.stage.render_demo`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer

from pipeline.demo.config import DemoConfig
from stages.command import PARAMS, Options, command, resolve_scene

log = logging.getLogger(__name__)


def run(config: DemoConfig, out_dir: Path) -> Path:
    """Render the demo scene into ``out_dir/input`` (``out_dir`` is the scene folder); returns it."""
    from pipeline.demo.stage import render_demo

    start = time.perf_counter()
    input_dir = render_demo(config, out_dir)
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
