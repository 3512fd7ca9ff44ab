"""Where a query is in 3D: the most relevant Gaussians, trimmed of outliers, their centroid and box.

:func:`localize` ranks Gaussians by relevance, keeps the top ones (a threshold, top-k or a
quantile), drops outliers far from their median (robust trimming) and reports the
opacity-weighted centroid and the axis-aligned box of the rest in world coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.core.errors import M3Error


@dataclass
class Localization:
    """Where a query is in 3D: ``centroid [3]``, ``box_min/box_max [3]`` (world), selected ids."""

    centroid: np.ndarray
    box_min: np.ndarray
    box_max: np.ndarray
    selected: np.ndarray
    inliers: np.ndarray
    threshold: float

    def to_json(self) -> dict[str, Any]:
        return {
            "centroid": self.centroid.tolist(),
            "box_min": self.box_min.tolist(),
            "box_max": self.box_max.tolist(),
            "n_selected": int(self.selected.size),
            "n_inliers": int(self.inliers.size),
            "relevance_threshold": self.threshold,
        }


def localize(
    means: np.ndarray | torch.Tensor,
    relevance: np.ndarray | torch.Tensor,
    opacities: np.ndarray | torch.Tensor | None = None,
    top_k: int | None = None,
    quantile: float = 0.99,
    min_opacity: float = 0.1,
    trim: float = 3.0,
    threshold: float | None = None,
    section: str = "query",
) -> Localization:
    """Centroid and box of the most relevant Gaussians.

    ``means [N, 3]``, ``relevance [N]``, ``opacities [N]`` in [0, 1] (None: all 1). Gaussians with
    opacity below ``min_opacity`` are ignored (they barely render). Those with relevance at or
    above ``threshold`` (else the top ``top_k``, else those at or above the ``quantile`` of
    relevance) are selected (at least the most relevant one); those farther from the selection's
    median than ``median + trim * 1.4826 * MAD`` of the distances are dropped. The centroid is the
    opacity-weighted mean of the rest, the box their min/max. ``section`` (the params section
    whose settings these are) is named in errors.
    """
    xyz = torch.as_tensor(means).detach().double().cpu().numpy().reshape(-1, 3)
    rel = torch.as_tensor(relevance).detach().double().cpu().numpy().reshape(-1)
    op = (
        np.ones(len(xyz))
        if opacities is None
        else torch.as_tensor(opacities).detach().double().cpu().numpy().reshape(-1)
    )
    if not (len(xyz) == len(rel) == len(op)):
        raise ValueError(f"localize: sizes differ: means {len(xyz)}, relevance {len(rel)}, opacities {len(op)}")
    cand = np.flatnonzero(op >= min_opacity)
    if cand.size == 0:
        raise M3Error(f"{section}: no Gaussian has opacity >= {min_opacity}; lower {section}.min_opacity")
    order = cand[np.argsort(-rel[cand], kind="stable")]
    if threshold is not None:
        selected = order[: max(1, int((rel[order] >= threshold).sum()))]
    elif top_k is not None:
        selected = order[: max(1, min(top_k, order.size))]
    else:
        thr_q = np.quantile(rel[cand], quantile)
        selected = order[rel[order] >= thr_q]
    threshold = float(rel[selected].min())
    pts = xyz[selected]
    med = np.median(pts, axis=0)
    dist = np.linalg.norm(pts - med, axis=1)
    d_med = np.median(dist)
    mad = np.median(np.abs(dist - d_med))
    keep = dist <= d_med + trim * 1.4826 * mad + 1e-12
    inliers = selected[keep]
    w = op[inliers] / op[inliers].sum()
    p = xyz[inliers]
    return Localization(
        centroid=(w[:, None] * p).sum(axis=0),
        box_min=p.min(axis=0),
        box_max=p.max(axis=0),
        selected=selected,
        inliers=inliers,
        threshold=threshold,
    )
