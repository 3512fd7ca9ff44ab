"""``m3 query``: where is "a yellow duck"? Heatmaps on rendered views and a 3D box.

:func:`find` answers one text (or vector) query on a trained memory: per-pixel relevance on a
few rendered views (one colour scale over all of them) and the selected Gaussians' centroid and
box, written as heatmap PNGs and ``localization.json`` into an output folder
(:func:`pipeline.core.io.output_dir`: a new or empty folder, or an earlier ``m3 query`` output).
:func:`answer` is the computing part, on an already loaded
:class:`~pipeline.query.session.QuerySession` (``m3 serve`` keeps one warm per scene).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.config import to_dict
from pipeline.core.images import png_bytes
from pipeline.core.scene import Scene, View, load_views, views_named
from pipeline.query.colors import heatmap_overlay, normalize_relevance, upsample
from pipeline.query.config import QueryConfig
from pipeline.query.encode import QueryVector
from pipeline.query.files import query_folder, save_answer
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


@dataclass
class Answer:
    """One query's answer: ``localization.json``'s content (``result``), the heatmaps ``{view name:
    [H, W, 3] uint8}`` and every Gaussian's relevance ``[N]`` (on the CPU)."""

    result: dict[str, Any]
    heatmaps: dict[str, np.ndarray]
    relevance: torch.Tensor


def answer(
    session: QuerySession,
    config: QueryConfig,
    views: list[View],
    text: str | None = None,
    vector: np.ndarray | None = None,
    heatmaps: bool = True,
) -> Answer:
    """Answer ``text`` or ``vector [d]`` with an already loaded ``session`` (its memory, model,
    encoder and relevance engine): heatmaps on :func:`chosen_views` of the registered ``views``
    (one colour scale over all of them; none without ``heatmaps``: the 3D answer alone, its
    ``views`` empty, costs no render) and the selected Gaussians' centroid and box."""
    memory, model = session.memory, session.model
    qv = session.encode(text, vector)
    maps = relevance_maps(memory, chosen_views(views, config), model, qv) if heatmaps else []
    rel = session.relevance(qv)
    loc = session.localize(rel)
    lo = min((float(r.min()) for _, _, r in maps), default=0.0)  # one colour scale over all views: comparable
    hi = max((float(r.max()) for _, _, r in maps), default=1.0)
    result = {
        "query": text if text is not None else "<vector>",
        "model": model,
        "mode": config.mode,
        "method": memory.method,
        **loc.to_json(),
        "views": {v.name: {"max_relevance": float(r.max()), "mean_relevance": float(r.mean())} for v, _, r in maps},
        "config": to_dict(config),
    }
    images = {v.name: heatmap_overlay(rgb, normalize_relevance(r, lo, hi), config.alpha) for v, rgb, r in maps}
    return Answer(result, images, rel)


def find(
    config: QueryConfig,
    scene: Scene,
    text: str | None = None,
    vector: np.ndarray | None = None,
    out_dir: Path | None = None,
) -> tuple[dict[str, Any], Path]:
    """Query ``scene``'s trained memory with ``text`` or ``vector [d]`` (:func:`answer`); writes the
    heatmaps and ``localization.json`` to ``out_dir`` (default ``<scene>/query/<text>``); returns
    that JSON and the folder."""
    out_dir = query_folder(scene, text, vector, out_dir)
    found = answer(QuerySession(scene, config), config, load_views(scene), text, vector)
    save_answer(out_dir, found.result, {name: png_bytes(img) for name, img in found.heatmaps.items()})
    return found.result, out_dir
