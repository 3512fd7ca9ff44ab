"""Command ``m3 render``: RGB and per-model feature PCA images of a trained memory at scene cameras.

Not a DVC stage (a tool over ``data/<scene>/model/``). For each chosen view writes, in
``data/<scene>/renders/`` unless ``--out`` is given (a new or empty folder, or an earlier output
of ``m3 render``, whose renders of other views are kept)::

    <view>_rgb.png            the RGB render at the view's size
    <view>_<model>_pca.png    the rendered features projected on 3 principal components, upsampled
                              (nearest) to the view's size; the projection is fitted on the first
                              rendered view, so colours are comparable across views
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import typer
from PIL import Image

from pipeline.core.errors import M3Error
from pipeline.core.images import PCA3
from pipeline.core.io import output_dir, output_listing
from pipeline.core.runtime import resolve_device
from pipeline.core.scene import Scene, View, load_views
from pipeline.splat.trained import TrainedMemory
from stages.command import SCENE, reports_errors, resolve_scene

log = logging.getLogger(__name__)


def run(scene: Scene, views: list[str] | None = None, out: Path | None = None, device: str = "auto") -> list[Path]:
    """Render ``views`` (names; None: every registered view) of ``scene``; returns the written files."""
    out = Path(out) if out else scene.root / "renders"
    output_listing(out, "render")  # refused before any work: never overwrites what m3 did not write
    memory = TrainedMemory.load(scene, device=resolve_device(device, "render"))
    all_views = load_views(scene)
    by_name = {v.name: v for v in all_views}
    if views:
        missing = [n for n in views if n not in by_name]
        if missing:
            raise M3Error(
                f"{scene.name}: no registered view {missing[0]!r}; pick one of {', '.join(list(by_name)[:5])}, ..."
            )
        chosen: list[View] = [by_name[n] for n in views]
    else:
        chosen = all_views
    pcas: dict[str, PCA3] = {}
    names = []
    with output_dir(out, "render", replace=False) as tmp:  # renders of other views stay
        for view in chosen:
            r = memory.render(view)
            stem = Path(view.name).stem
            rgb = (r.rgb.cpu().numpy() * 255 + 0.5).astype(np.uint8)
            Image.fromarray(rgb).save(tmp / f"{stem}_rgb.png")
            names.append(f"{stem}_rgb.png")
            for m, f in r.features.items():
                f = f.cpu()
                pcas.setdefault(m, PCA3(f))
                img = Image.fromarray(pcas[m](f)).resize((view.width, view.height), Image.NEAREST)
                img.save(tmp / f"{stem}_{m}_pca.png")
                names.append(f"{stem}_{m}_pca.png")
    written = [out / n for n in names]
    log.info("rendered %d view(s) of %s -> %s", len(chosen), scene.name, out)
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
    sc = resolve_scene(scene)
    names = None if all_views else (list(view) if view else [load_views(sc)[0].name])
    run(sc, names, out, device)
