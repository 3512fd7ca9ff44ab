"""Stage ``demo``: render the built-in demo scene into ``<scene folder>/input``.

Reads ``params.yaml: demo``. Writes ``input/view_000.png ...`` and ``input/ground_truth.json``
(cameras, object boxes, extent, provenance) atomically: the folder appears complete or not at all.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from pipeline import M3Error, logger
from pipeline.config import PARAMS_FILE, from_dict, load_section, to_dict
from pipeline import demo
from pipeline.io import hash_files, provenance
from pipeline.scene import Scene
from stages.common import PARAMS_HELP, override, reports_errors

log = logger.getChild("demo")


@dataclass(frozen=True)
class DemoConfig:
    """The ``demo`` section of ``params.yaml``."""

    n_views: int = 36
    width: int = 320
    height: int = 240
    seed: int = 0
    supersample: int = 1  # rays per pixel along each axis (2: 4 rays, smoother edges, 4x slower)


def run(config: DemoConfig, out_dir: Path) -> Path:
    """Render the demo scene into ``out_dir/input`` (``out_dir`` is the scene folder); returns it."""
    if config.n_views < 3 or config.width < 16 or config.height < 16 or config.supersample < 1:
        raise M3Error(
            f"demo: n_views={config.n_views}, {config.width}x{config.height}, supersample={config.supersample} "
            "is too small; use n_views >= 3, width/height >= 16 and supersample >= 1"
        )
    start = time.perf_counter()
    input_dir = Path(out_dir) / "input"
    # the generator's own source is the input: a changed generator makes a different scene
    prov = provenance("demo", to_dict(config), hash_files([Path(demo.__file__)]))
    demo.make_demo_scene(
        input_dir, config.n_views, config.width, config.height, config.seed, config.supersample,
        extra={"provenance": prov},
    )
    log.info("demo: %d views in %.1f s -> %s", config.n_views, time.perf_counter() - start, input_dir)
    return input_dir


@reports_errors
def cli(
    scene: str = typer.Argument("demo", help="scene name (folder under data/) or path of the scene folder; writes its input/"),
    n_views: Optional[int] = typer.Option(None, help="number of views on the camera ring"),
    width: Optional[int] = typer.Option(None, help="image width in pixels"),
    height: Optional[int] = typer.Option(None, help="image height in pixels"),
    seed: Optional[int] = typer.Option(None, help="random seed (textures, object and camera jitter)"),
    supersample: Optional[int] = typer.Option(None, help="rays per pixel along each axis (anti-aliasing)"),
    params: Path = typer.Option(PARAMS_FILE, help=PARAMS_HELP),
) -> None:
    """Render the built-in procedural demo scene (textured room with objects, known cameras).

    Writes <scene>/input/view_000.png ... and <scene>/input/ground_truth.json.
    """
    cfg = override(
        load_section(DemoConfig, "demo", params),
        n_views=n_views, width=width, height=height, seed=seed, supersample=supersample,
    )
    run(from_dict(DemoConfig, to_dict(cfg), "m3 demo-scene options"), Scene.resolve(scene).root)
