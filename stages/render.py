"""Command ``m3 render``: RGB and per-model feature PCA images of a trained memory at scene cameras.

Not a DVC stage (a tool over ``data/<scene>/model/``). Writes, in ``data/<scene>/renders/`` unless
``--out`` is given (a new or empty folder, or an earlier output of ``m3 render``, whose renders of
other views are kept)::

    <view>_rgb.png            the RGB render at the view's size
    <view>_<model>_pca.png    the rendered features projected on 3 principal components

The work is :func:`pipeline.view.render.render_views`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from stages.command import SCENE, reports_errors, resolve_scene

if TYPE_CHECKING:
    from pipeline.core.scene import Scene

log = logging.getLogger(__name__)


def run(scene: Scene, views: list[str] | None = None, out: Path | None = None, device: str = "auto") -> list[Path]:
    """Render ``views`` (names; None: every registered view) of ``scene``; returns the written files."""
    from pipeline.view.render import render_views

    written = render_views(scene, views, out, device)
    log.info("rendered %d file(s) of %s -> %s", len(written), scene.name, written[0].parent if written else out)
    return written


@reports_errors
def cli(
    scene: str = SCENE,
    view: list[str] | None = typer.Option(None, "--view", help="image name of a registered view (repeatable)"),
    all_views: bool = typer.Option(False, "--all", help="render every registered view"),
    out: Path | None = typer.Option(
        None, help="output folder: new, empty or an earlier m3 render output (default: data/<scene>/renders)"
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
) -> None:
    """Render RGB and per-model feature PCA images of the trained memory at scene cameras.

    Give --view NAME (repeatable) or --all; without either, the first registered view is rendered.
    """
    from pipeline.core.scene import load_views

    sc = resolve_scene(scene)
    names = None if all_views else (list(view) if view else [load_views(sc)[0].name])
    run(sc, names, out, device)
