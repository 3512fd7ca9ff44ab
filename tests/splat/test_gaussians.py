"""Gaussian parameters: init from points, PLY round trip, densification carries the queries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.errors import M3Error
from pipeline.splat.gaussians import colors_from_sh, init_params, load_ply, render_rgb, save_ply


def _params(n: int = 50, dims: dict | None = None) -> torch.nn.ParameterDict:
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(n, 3))
    rgb = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    return init_params(xyz, rgb, dims or {"clip": 4, "dinov2": 6}, sh_degree=3)


def test_init_from_points_sets_colours_and_scales() -> None:
    xyz = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [5, 5, 5]])
    rgb = np.array([[255, 0, 0]] * 5, dtype=np.uint8)
    p = init_params(xyz, rgb, {"clip": 16}, sh_degree=2, init_opacity=0.1)
    assert p["shN"].shape == (5, 8, 3) and p["q_clip"].shape == (5, 16)
    colour = colors_from_sh(p, torch.eye(4), degree=0)
    assert torch.allclose(colour[0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-5)
    assert torch.allclose(torch.sigmoid(p["opacities"]), torch.full((5,), 0.1), atol=1e-6)
    assert torch.exp(p["scales"][4, 0]) > 3 * torch.exp(p["scales"][0, 0])  # isolated point is larger
    with pytest.raises(M3Error, match="no 3D points"):
        init_params(np.zeros((0, 3)), np.zeros((0, 3), np.uint8), {}, 3)


def test_ply_round_trip_is_exact_and_standard(tmp_path) -> None:
    from plyfile import PlyData

    p = _params()
    with torch.no_grad():
        p["shN"].normal_()
    save_ply(tmp_path / "g.ply", p)
    names = [q.name for q in PlyData.read(str(tmp_path / "g.ply"))["vertex"].properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert "f_rest_44" in names and "opacity" in names and "rot_3" in names
    assert "q_clip_3" in names and "q_dinov2_5" in names and "q_clip_4" not in names
    back = load_ply(tmp_path / "g.ply")
    assert set(back) == set(p)
    for k in p:
        assert torch.equal(back[k], p[k].detach()), k
    with pytest.raises(M3Error, match="no Gaussians"):
        load_ply(tmp_path / "missing.ply")


def test_default_strategy_clones_splits_and_prunes_queries() -> None:
    from gsplat.strategy import DefaultStrategy

    torch.manual_seed(0)
    p = _params(200)
    with torch.no_grad():
        p["means"].mul_(0.3)
        p["means"][:, 2] += 4.0
        p["opacities"][:20] = -10.0  # to be pruned
        p["q_clip"].copy_(torch.arange(200, dtype=torch.float32)[:, None].repeat(1, 4))
    opts = {k: torch.optim.Adam([{"params": v, "lr": 1e-3, "name": k}], eps=1e-15) for k, v in p.items()}
    strat = DefaultStrategy(refine_start_iter=0, refine_every=1, grow_grad2d=0.0, reset_every=10**6)
    strat.check_sanity(p, opts)
    state = strat.initialize_state(scene_scale=1.0)
    K = torch.tensor([[100.0, 0, 32], [0, 100, 24], [0, 0, 1]])
    rgb, _, info = render_rgb(p, torch.eye(4), K, 64, 48, degree=0, backend="torch")
    strat.step_pre_backward(p, opts, state, 1, info)
    (rgb.sum() + p["q_clip"].sum() * 0).backward()
    strat.step_post_backward(p, opts, state, 1, info, packed=False)
    n = len(p["means"])
    assert n != 200 and all(len(v) == n for v in p.values())
    assert opts["q_clip"].param_groups[0]["params"][0] is p["q_clip"]
    ids = p["q_clip"][:, 0].detach().round().long()
    assert ids.min() >= 20  # pruned Gaussians' queries are gone
    assert len(ids) > len(torch.unique(ids))  # grown Gaussians carry copies of their parent's query
    assert torch.equal(p["q_clip"].detach(), ids[:, None].float().repeat(1, 4))
