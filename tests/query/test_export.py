"""A query's answer as 3DGS PLYs: subsets and relevance colours, readable by plyfile and load_ply."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.query.colors import base_colors, relevance_colors, turbo
from pipeline.query.export import recolored, subset
from pipeline.splat.gaussians import init_params, load_ply, save_ply


def _params(n: int = 50) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(n, 3))
    rgb = rng.integers(0, 256, size=(n, 3)).astype(np.uint8)
    return {k: v.detach() for k, v in init_params(xyz, rgb, {"clip": 4}, sh_degree=2).items()}


def test_subset_and_relevance_colours_round_trip(tmp_path: Path) -> None:
    from plyfile import PlyData

    params = _params()
    params["shN"] += 0.1  # view-dependent colour that the baked PLY must drop
    ids = np.array([3, 7, 11])
    obj = subset(params, ids)
    save_ply(tmp_path / "object.ply", obj)
    back = load_ply(tmp_path / "object.ply")
    assert set(back) == set(params) and len(back["means"]) == 3
    for k in params:
        torch.testing.assert_close(back[k], params[k][ids])
    rel = np.linspace(-3.0, 1.9, 50)  # any range: normalised first
    colors = relevance_colors(base_colors(params), rel)
    np.testing.assert_allclose(colors[:25], 0.3 * base_colors(params)[:25], atol=1e-6)  # lower half: dimmed
    np.testing.assert_allclose(colors[25:], turbo(2 * (rel[25:] + 3.0) / 4.9 - 1), atol=1e-6)
    save_ply(tmp_path / "relevance.ply", recolored(params, colors))
    v = PlyData.read(str(tmp_path / "relevance.ply"))["vertex"]
    assert v.count == 50 and {"x", "f_dc_0", "f_rest_0", "opacity", "scale_0", "rot_0"} <= {
        p.name for p in v.properties
    }
    baked = load_ply(tmp_path / "relevance.ply")
    np.testing.assert_allclose(base_colors(baked), colors, atol=1e-5)
    assert float(baked["shN"].abs().max()) == 0.0
    torch.testing.assert_close(baked["means"], params["means"])


@pytest.mark.slow
def test_export_extracts_the_planted_object(trained_planted, tmp_path: Path) -> None:
    """``m3 export`` through the CLI: the object PLY holds the planted object's Gaussians only."""
    from plyfile import PlyData
    from typer.testing import CliRunner

    from stages.cli import app

    scene = trained_planted.scene
    lo, hi = trained_planted.boxes["blue sphere"]
    out = tmp_path / "export"
    args = ["export", str(scene.root), "--query", "blue sphere", "--vectors", "vectors.json", "--mode", "cosine"]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    sel = json.loads((out / "selection.json").read_text())
    obj = load_ply(out / "object.ply")
    means = obj["means"].numpy()
    assert len(means) == sel["n_inliers"] > 3 and PlyData.read(str(out / "object.ply"))["vertex"].count == len(means)
    span = f"{means.min(0).round(2)}..{means.max(0).round(2)}"
    print(f"blue sphere: {len(means)} Gaussians in {span}, object box {lo.round(2)}..{hi.round(2)}")
    assert np.all(means >= lo - 0.05) and np.all(means <= hi + 0.05)
    whole = load_ply(out / "relevance.ply")
    assert len(whole["means"]) == sel["gaussians"] == len(load_ply(scene.model_dir / "point_cloud.ply")["means"])
