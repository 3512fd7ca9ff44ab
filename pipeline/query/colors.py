"""Relevance as colours: heatmaps over rendered views (2D) and colours of Gaussians (3D).

Both use the turbo colormap: :func:`heatmap_overlay` blends it over a render with an opacity
that grows with relevance; :func:`relevance_colors` is LangSplat's composite for Gaussians (the
upper half of the relevance range in turbo, the rest of the scene dimmed).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.splat.gaussians import SH_C0


def turbo(x: np.ndarray) -> np.ndarray:
    """Turbo colormap (polynomial fit by A. Mikhailov): ``x [...]`` in [0, 1] -> RGB ``[..., 3]`` in [0, 1]."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)[..., None]
    r = np.array([0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943])
    g = np.array([0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604])
    b = np.array([0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973])
    powers = x ** np.arange(6)
    return np.clip(np.stack([powers @ r, powers @ g, powers @ b], axis=-1), 0.0, 1.0)


def normalize_relevance(rel: torch.Tensor, lo: float | None = None, hi: float | None = None) -> torch.Tensor:
    """Relevance ``[...]`` mapped to [0, 1] between ``lo`` and ``hi`` (default: its min and max)."""
    lo = float(rel.min()) if lo is None else lo
    hi = float(rel.max()) if hi is None else hi
    return ((rel - lo) / max(hi - lo, 1e-12)).clamp(0, 1)


def upsample(rel: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Relevance ``[h, w]`` resized bilinearly to ``[height, width]``."""
    return F.interpolate(rel[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]


def heatmap_overlay(rgb: torch.Tensor | np.ndarray, rel01: torch.Tensor | np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The RGB render ``[H, W, 3]`` in [0, 1] with relevance ``[H, W]`` in [0, 1] as a turbo overlay.

    Returns ``[H, W, 3] uint8``; the overlay's opacity grows with relevance (irrelevant pixels keep
    a dimmed render).
    """
    img = torch.as_tensor(rgb).detach().float().cpu().numpy()
    r = torch.as_tensor(rel01).detach().float().cpu().numpy()
    a = (alpha * r)[..., None]
    out = (1 - a) * (0.6 * img) + a * turbo(r)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


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
