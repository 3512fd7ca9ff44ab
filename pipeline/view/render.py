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
from pipeline.core.scene import Scene, load_views, views_named
from pipeline.splat.trained import TrainedMemory


def render_views(scene: Scene, names: list[str] | None, out: Path | None = None, device: str = "auto") -> list[Path]:
    """Render the views ``names`` (None: every registered view) of ``scene``'s memory into ``out``
    (default ``<scene>/renders``); returns the written files."""
    out = Path(out) if out else scene.root / "renders"
    output_listing(out, "render")  # refused before any work: never overwrites what m3 did not write
    memory = TrainedMemory.load(scene, device=resolve_device(device, "render"))
    views = load_views(scene)
    chosen = views_named(views, names, "render --view") if names else views
    pcas: dict[str, PCA3] = {}
    written = []
    with output_dir(out, "render", replace=False) as tmp:  # renders of other views stay
        for view in chosen:
            r = memory.render(view)
            stem = Path(view.name).stem
            Image.fromarray((r.rgb.cpu().numpy() * 255 + 0.5).astype(np.uint8)).save(tmp / f"{stem}_rgb.png")
            written.append(f"{stem}_rgb.png")
            for m, f in r.features.items():
                f = f.cpu()
                if m not in pcas:  # fitted once, on the first view
                    pcas[m] = PCA3(f)
                img = Image.fromarray(pcas[m](f)).resize((view.width, view.height), Image.Resampling.NEAREST)
                img.save(tmp / f"{stem}_{m}_pca.png")
                written.append(f"{stem}_{m}_pca.png")
    return [out / n for n in written]
