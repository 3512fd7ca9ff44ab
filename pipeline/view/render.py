"""``m3 render``: RGB and per-model feature PCA images of a trained memory at scene cameras.

For each chosen view :func:`render_views` writes ``<view>_rgb.png`` (the render at the view's
size) and ``<view>_<model>_pca.png`` (the rendered features projected on 3 principal components,
upsampled nearest to the view's size; the projection is fitted on the first view rendered, so
colours are comparable across views) into an output folder (:func:`pipeline.core.io.output_dir`:
new or empty, or an earlier ``m3 render`` output, whose renders of other views are kept).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.images import PCA3
from pipeline.core.io import output_dir, output_listing
from pipeline.core.runtime import resolve_device
from pipeline.core.scene import Scene, View, load_views, views_named
from pipeline.splat.trained import TrainedMemory


def render_images(
    memory: TrainedMemory, view: View, pcas: dict[str, PCA3], models: list[str] | None = None
) -> dict[str, Image.Image]:
    """``{"rgb": the render at the view's size, "<model>_pca": the rendered features of each of
    ``models`` (None: every model) on 3 principal components, upsampled nearest to the view's size}``.
    A model's projection is taken from ``pcas``, or fitted on this view and added to it."""
    r = memory.render(view, models)
    images = {"rgb": Image.fromarray((r.rgb.cpu().numpy() * 255 + 0.5).astype(np.uint8))}
    for m, f in r.features.items():
        f = f.cpu()
        if m not in pcas:  # fitted once, on the first view
            pcas[m] = PCA3(f)
        images[f"{m}_pca"] = Image.fromarray(pcas[m](f)).resize((view.width, view.height), Image.Resampling.NEAREST)
    return images


def render_views(scene: Scene, names: list[str] | None, out: Path | None = None, device: str = "auto") -> list[Path]:
    """Render the views ``names`` (None: every registered view) of ``scene``'s memory into ``out``
    (default ``<scene>/renders``, :func:`render_images`); returns the written files."""
    out = Path(out) if out else scene.root / "renders"
    output_listing(out, "render")  # refused before any work: never overwrites what m3 did not write
    memory = TrainedMemory.load(scene, device=resolve_device(device, "render"))
    views = load_views(scene)
    chosen = views_named(views, names, "render --view") if names else views
    pcas: dict[str, PCA3] = {}
    written = []
    with output_dir(out, "render", replace=False) as tmp:  # renders of other views stay
        for view in chosen:
            for suffix, img in render_images(memory, view, pcas).items():
                name = f"{Path(view.name).stem}_{suffix}.png"
                img.save(tmp / name)
                written.append(name)
    return [out / n for n in written]
