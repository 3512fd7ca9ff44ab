"""Training losses: RGB (0.8 L1 + 0.2 (1 - SSIM)) and feature (0.5 (mean(1 - cos) + MSE))."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _gauss_1d(size: int = 11, sigma: float = 1.5, device: torch.device | None = None) -> Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: Tensor, b: Tensor, window: int = 11) -> Tensor:
    """Mean SSIM of two images ``[H, W, C]`` in [0, 1] (Gaussian window 11, sigma 1.5, as 3DGS).

    The Gaussian window is applied as two separable 1D convolutions (same result, ~5x cheaper).
    """
    c = a.shape[-1]
    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    g = _gauss_1d(window, device=a.device)
    wy, wx = g.view(1, 1, -1, 1).expand(c, 1, window, 1), g.view(1, 1, 1, -1).expand(c, 1, 1, window)
    pad = window // 2

    def filt(t: Tensor) -> Tensor:
        t = F.conv2d(t, wy, padding=(pad, 0), groups=c)
        return F.conv2d(t, wx, padding=(0, pad), groups=c)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean()


def rgb_loss(pred: Tensor, gt: Tensor, ssim_weight: float = 0.2) -> Tensor:
    """``(1 - w) L1 + w (1 - SSIM)`` of ``pred, gt [H, W, 3]``."""
    l1 = (pred - gt).abs().mean()
    return (1 - ssim_weight) * l1 + ssim_weight * (1 - ssim(pred, gt))


def feature_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``0.5 (mean(1 - cos) + MSE)`` over rows of ``pred, target [P, d]`` (MSE per dimension)."""
    cos = F.cosine_similarity(pred, target, dim=-1)
    return 0.5 * ((1 - cos).mean() + F.mse_loss(pred, target))
