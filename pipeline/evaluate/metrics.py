"""Image, feature and grounding metrics.

* Images: :func:`psnr` (identical images give the documented cap :data:`PSNR_CAP` dB, so that
  ``metrics.json`` never holds ``inf``), :func:`ssim` (Gaussian window 11, sigma 1.5, the
  standard constants), :func:`lpips_metric` (only when the ``lpips`` package and its weights are
  available locally; otherwise ``None`` plus a note).
* Features (the paper's Table 1 protocol): between features rendered through the memory and the
  stored foundation-model features, the cosine distance ``mean(1 - cos)`` and the L2 error as the
  per-dimension mean squared error, over valid cells. :class:`FeatureErrors` accumulates them over
  views so a scene never needs to be held in memory.
* Grounding (referring segmentation, as in the paper): per-sample IoU, mIoU (mean of IoUs), cIoU
  (cumulative intersection over cumulative union) and precision@t (fraction of samples with
  IoU >= t), see :func:`grounding_metrics`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

PSNR_CAP = 100.0
"""PSNR (dB) reported for identical images (MSE below 1e-10 of the squared peak)."""


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.float() if not t.is_floating_point() else t.to(torch.float32)


def psnr(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, max_val: float = 1.0) -> float:
    """PSNR in dB of ``pred`` vs ``target`` (same shape, e.g. ``[H, W, 3]`` in ``[0, max_val]``).

    ``10 log10(max_val^2 / MSE)``, capped at :data:`PSNR_CAP` (identical images).
    """
    a, b = _as_tensor(pred), _as_tensor(target)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = float(torch.mean((a - b) ** 2))
    if mse <= max_val**2 * 10 ** (-PSNR_CAP / 10):
        return PSNR_CAP
    return 10.0 * math.log10(max_val**2 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] @ g[None, :]


def ssim(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    max_val: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
) -> float:
    """Mean SSIM of two images ``[H, W, C]`` (or ``[H, W]``) in ``[0, max_val]``.

    Gaussian window (11, sigma 1.5), K1 = 0.01, K2 = 0.03, valid convolution (no padding), mean
    over channels and positions, as in the 3DGS evaluation code. Identical images give 1.
    """
    a, b = _as_tensor(pred), _as_tensor(target)
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    a = a.permute(2, 0, 1)[None]
    b = b.permute(2, 0, 1)[None]
    c = a.shape[1]
    win = min(window, a.shape[-1], a.shape[-2])
    w = _gaussian_window(win, sigma).expand(c, 1, win, win).contiguous()

    def filt(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


class LpipsUnavailable(RuntimeError):
    """LPIPS cannot run here (package or weights missing); the message says why."""


def load_lpips(net: str = "vgg", device: str | torch.device = "cpu") -> torch.nn.Module:
    """The LPIPS network from the ``lpips`` package, with weights already on this machine.

    Raises :class:`LpipsUnavailable` (never downloads: the backbone weights must be in the torch
    hub cache) when the package or the weights are missing.
    """
    try:
        import lpips
    except ImportError:
        raise LpipsUnavailable("LPIPS omitted: the 'lpips' package is not installed") from None
    try:
        return lpips.LPIPS(net=net, verbose=False).to(device).eval()
    except Exception as exc:  # download attempts fail offline with various errors
        raise LpipsUnavailable(f"LPIPS omitted: its '{net}' weights are not available locally ({exc})") from exc


@torch.no_grad()
def lpips_metric(net: torch.nn.Module, pred: torch.Tensor, target: torch.Tensor) -> float:
    """LPIPS of two images ``[H, W, 3]`` in ``[0, 1]`` (lower is better)."""
    dev = next(net.parameters()).device
    a = _as_tensor(pred).permute(2, 0, 1)[None].to(dev) * 2 - 1
    b = _as_tensor(target).permute(2, 0, 1)[None].to(dev) * 2 - 1
    return float(net(a, b).mean())


def feature_errors(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell cosine distance ``1 - cos`` and per-cell mean squared error over dimensions.

    ``pred, target [..., d]``, ``valid [...]`` bool (None: all cells). Returns two flat tensors
    ``[M]`` over the valid cells.
    """
    a, b = _as_tensor(pred), _as_tensor(target).to(pred.device)
    if a.shape != b.shape:
        raise ValueError(f"feature_errors: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    if valid is not None:
        m = torch.as_tensor(valid, device=a.device).reshape(-1).bool()
        a, b = a[m], b[m]
    cos = F.cosine_similarity(a, b, dim=-1, eps=1e-8)
    return 1.0 - cos, ((a - b) ** 2).mean(dim=-1)


def cosine_distance(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """``mean(1 - cos(pred, target))`` over valid cells (``[..., d]``): 0 identical, 1 orthogonal."""
    return float(feature_errors(pred, target, valid)[0].mean())


def l2_error(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Per-dimension mean squared error over valid cells (``[..., d]``)."""
    return float(feature_errors(pred, target, valid)[1].mean())


@dataclass
class FeatureErrors:
    """Streaming accumulator of :func:`feature_errors` over views (cell-weighted means)."""

    cos_sum: float = 0.0
    l2_sum: float = 0.0
    count: int = 0

    def add(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        cos, l2 = feature_errors(pred, target, valid)
        self.cos_sum += float(cos.double().sum())
        self.l2_sum += float(l2.double().sum())
        self.count += int(cos.numel())

    def result(self) -> dict[str, float | int]:
        """``{"cosine": mean(1 - cos), "l2": mean MSE per dim, "cells": n}`` (NaN when empty)."""
        n = self.count
        return {
            "cosine": self.cos_sum / n if n else float("nan"),
            "l2": self.l2_sum / n if n else float("nan"),
            "cells": n,
        }


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, int, int]:
    """IoU of two boolean masks ``[H, W]``: ``(iou, intersection, union)``; empty vs empty is 1."""
    p, g = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"mask_iou: shapes differ {p.shape} vs {g.shape}")
    inter = int(np.logical_and(p, g).sum())
    union = int(np.logical_or(p, g).sum())
    return (inter / union if union else 1.0), inter, union


@dataclass
class GroundingScores:
    """Accumulates per-sample IoUs for :func:`grounding_metrics`."""

    ious: list[float] = field(default_factory=list)
    inter: int = 0
    union: int = 0

    def add(self, pred: np.ndarray, gt: np.ndarray) -> float:
        iou, i, u = mask_iou(pred, gt)
        self.ious.append(iou)
        self.inter += i
        self.union += u
        return iou

    def result(self, thresholds: Sequence[float] = (0.5, 0.6)) -> dict[str, float | int]:
        """``mIoU``, ``cIoU``, ``precision@t`` for each threshold, and ``samples``."""
        ious = np.asarray(self.ious, dtype=np.float64)
        out: dict[str, float | int] = {
            "mIoU": float(ious.mean()) if ious.size else float("nan"),
            "cIoU": self.inter / self.union if self.union else float("nan"),
            "samples": int(ious.size),
        }
        for t in thresholds:
            out[f"precision@{t:g}"] = float((ious >= t).mean()) if ious.size else float("nan")
        return out


def grounding_metrics(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]], thresholds: Sequence[float] = (0.5, 0.6)
) -> dict[str, float | int]:
    """mIoU, cIoU and precision@t over ``(pred_mask, gt_mask)`` pairs of boolean ``[H, W]`` masks."""
    scores = GroundingScores()
    for pred, gt in pairs:
        scores.add(pred, gt)
    return scores.result(thresholds)
