"""``m3 query``: where is "a yellow duck"? Heatmaps on rendered views and a 3D box.

:func:`find` answers one text (or vector) query on a trained memory: per-pixel relevance on a
few rendered views (one colour scale over all of them) and the selected Gaussians' centroid and
box, written as heatmap PNGs and ``localization.json`` into an output folder
(:func:`pipeline.core.io.output_dir`: a new or empty folder, or an earlier ``m3 query`` output).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.core.config import to_dict
from pipeline.core.io import output_dir, output_listing, slug, write_json
from pipeline.core.scene import Scene, View, load_views, views_named
from pipeline.query.colors import heatmap_overlay, normalize_relevance, upsample
from pipeline.query.config import QueryConfig
from pipeline.query.encode import QueryVector, check_query
from pipeline.query.session import QuerySession
from pipeline.splat.trained import TrainedMemory


@torch.no_grad()
def relevance_maps(
    memory: TrainedMemory, views: Sequence[View], model: str, qv: QueryVector
) -> list[tuple[View, torch.Tensor, torch.Tensor]]:
    """``(view, rgb [H, W, 3], relevance [H, W])`` per view: relevance of the rendered ``model``
    features (at the stored feature size), upsampled bilinearly to the render."""
    out = []
    for view in views:
        r = memory.render(view, [model])
        rgb = r.rgb.detach().float().cpu().clamp(0, 1)
        rel = qv(r.features[model].detach().float().cpu())
        out.append((view, rgb, upsample(rel, rgb.shape[0], rgb.shape[1])))
    return out


def chosen_views(views: list[View], config: QueryConfig) -> list[View]:
    """The views named by ``config.views``, else ``n_views`` spread evenly over the registered ones."""
    if config.views:
        return views_named(views, config.views, "query.views")
    n = max(1, min(config.n_views, len(views)))
    return [views[int(i)] for i in np.linspace(0, len(views) - 1, n).round()]


def find(
    config: QueryConfig,
    scene: Scene,
    text: str | None = None,
    vector: np.ndarray | None = None,
    out_dir: Path | None = None,
) -> tuple[dict[str, Any], Path]:
    """Query ``scene``'s trained memory with ``text`` or ``vector [d]``; writes the heatmaps and
    ``localization.json`` to ``out_dir`` (default ``<scene>/query/<text>``); returns that JSON and
    the folder."""
    check_query(text, vector)
    out_dir = Path(out_dir or scene.root / "query" / slug(text or "vector"))
    output_listing(out_dir, "query")  # refused before any work: never replaces what m3 did not write
    session = QuerySession(scene, config)
    memory, model = session.memory, session.model
    qv = session.encode(text, vector)
    maps = relevance_maps(memory, chosen_views(load_views(scene), config), model, qv)
    loc = session.localize(session.relevance(qv))
    lo = min(float(r.min()) for _, _, r in maps)  # one colour scale over all views: comparable
    hi = max(float(r.max()) for _, _, r in maps)
    result = {
        "query": text if text is not None else "<vector>",
        "model": model,
        "mode": config.mode,
        "method": memory.method,
        **loc.to_json(),
        "views": {v.name: {"max_relevance": float(r.max()), "mean_relevance": float(r.mean())} for v, _, r in maps},
        "config": to_dict(config),
    }
    with output_dir(out_dir, "query") as tmp:
        for view, rgb, rel in maps:
            img = heatmap_overlay(rgb, normalize_relevance(rel, lo, hi), config.alpha)
            Image.fromarray(img).save(tmp / f"{Path(view.name).stem}.png")
        write_json(tmp / "localization.json", result)
    return result, out_dir
