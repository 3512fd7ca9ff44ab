"""A query's answer as Gaussians: the relevant ones on their own, and the scene coloured by relevance.

Both are parameter dicts in the layout of :mod:`pipeline.splat.gaussians` (``save_ply`` writes
them as standard 3DGS PLYs that common splat viewers open):

* :func:`subset`: the selected Gaussians with all their parameters (object extraction);
* :func:`recolored`: every Gaussian with view-independent colours (SH DC only, higher bands 0),
  e.g. :func:`relevance_colors`: LangSplat's composite, the Gaussians in the upper half of the
  relevance range in the turbo colormap, the others their RGB dimmed to 30%.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pipeline.evaluate.query import turbo
from pipeline.splat.gaussians import SH_C0, rgb_to_sh

DIM = 0.3  # brightness of the Gaussians a query does not select (LangSplat's composite)


def base_colors(params: dict[str, Tensor]) -> np.ndarray:
    """View-independent RGB ``[N, 3]`` in [0, 1] (the SH DC term)."""
    return (params["sh0"][:, 0].detach().float().cpu() * SH_C0 + 0.5).clamp(0, 1).numpy()


def relevance_colors(rgb: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """LangSplat's composite on min-max normalised ``relevance [N]``: where it is >= 0.5, turbo of
    ``2 r - 1``; elsewhere ``rgb [N, 3]`` dimmed. Returns ``[N, 3]`` in [0, 1]."""
    rel = np.asarray(relevance, np.float64)
    r = (rel - rel.min()) / max(float(rel.max() - rel.min()), 1e-12)
    return np.where((r >= 0.5)[:, None], turbo(2 * r - 1), DIM * np.asarray(rgb, np.float64))


def subset(params: dict[str, Tensor], ids: np.ndarray) -> dict[str, Tensor]:
    """The Gaussians ``ids [m]`` of ``params`` (every entry, queries included)."""
    index = torch.as_tensor(np.asarray(ids, np.int64))
    return {k: v.detach().cpu()[index] for k, v in params.items()}


def recolored(params: dict[str, Tensor], colors: np.ndarray) -> dict[str, Tensor]:
    """``params`` with view-independent ``colors [N, 3]`` in [0, 1] (SH DC; higher bands zeroed)."""
    out = {k: v.detach().cpu().clone() for k, v in params.items()}
    out["sh0"] = rgb_to_sh(torch.as_tensor(np.asarray(colors), dtype=torch.float32))[:, None, :]
    out["shN"] = torch.zeros_like(out["shN"])
    return out
