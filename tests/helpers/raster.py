"""Random Gaussian scenes for rasterizer tests, and one torch thread around each test."""

from __future__ import annotations

import pytest
import torch

W, H = 37, 29  # odd sizes: partial tiles on both axes


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread avoids thread hand-offs that dominate on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_scene(n: int, channels: int = 3, seed: int = 0, dtype=torch.float64, width=W, height=H):
    """n Gaussians in front of a camera at the origin looking down +z (plus one behind it)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * torch.tensor([0.6, 0.5, 0.5], dtype=dtype)
    means[:, 2] += 3.0
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.exp(torch.randn(n, 3, generator=g, dtype=dtype) * 0.4 - 2.5)
    opacities = torch.rand(n, generator=g, dtype=dtype) * 0.9 + 0.05
    colors = torch.rand(n, channels, generator=g, dtype=dtype)
    f = 1.1 * width
    Ks = torch.tensor([[[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]], dtype=dtype)
    rot = torch.linalg.matrix_exp(torch.tensor([[0, -0.05, 0.1], [0.05, 0, -0.08], [-0.1, 0.08, 0]], dtype=dtype))
    viewmats = torch.eye(4, dtype=dtype)[None].clone()
    viewmats[0, :3, :3] = rot
    viewmats[0, :3, 3] = torch.tensor([0.05, -0.03, 0.1], dtype=dtype)
    return [means, quats, scales, opacities, colors], viewmats, Ks
