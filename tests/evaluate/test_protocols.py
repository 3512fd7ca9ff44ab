"""Evaluation protocols: RGBA views compared over the trained background, the evaluation size
independent of the training size (ground truth from the full-size image), and a dataset split
that train never sees and evaluate reports on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.errors import M3Error
from pipeline.core.images import WHITE
from pipeline.core.io import write_json
from pipeline.core.scene import View, load_views
from pipeline.evaluate.config import EvaluateConfig
from pipeline.evaluate.evaluation import eval_views, evaluate_scene, evaluate_views, trained_background
from pipeline.evaluate.metrics import psnr
from pipeline.splat.train import train
from pipeline.splat.trained import RenderOut, write_model
from tests.evaluate.test_stage import KnownRenders
from tests.helpers.training import build_scene, quick_config

H, W = 16, 20


def _rgba_view(root: Path) -> tuple[View, np.ndarray]:
    """An RGBA image file: left half transparent over garbage green, right half an opaque colour."""
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[:, : W // 2] = (0, 255, 0, 0)
    rgba[:, W // 2 :, :3] = np.random.default_rng(0).integers(0, 256, (H, W - W // 2, 3))
    rgba[:, W // 2 :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(root / "a.png")
    return View("a.png", root / "a.png", np.eye(3), np.eye(4), W, H), rgba


@pytest.mark.parametrize("background", [WHITE, (0.0, 0.0, 0.0)])
def test_rgba_views_are_compared_over_the_background(tmp_path: Path, background: tuple) -> None:
    view, rgba = _rgba_view(tmp_path)
    alpha = torch.from_numpy(rgba[..., 3] / 255.0).float()
    rgb = torch.from_numpy(rgba[..., :3] / 255.0).float() * alpha[..., None]  # the rasterizer's, over black
    gts = []
    summary, _, _ = evaluate_views(
        KnownRenders({"a.png": RenderOut(rgb, alpha, {})}), [view], {}, use_lpips=False,
        on_render=lambda i, v, out, gt: gts.append((out.rgb, gt)), background=background,
    )  # fmt: skip
    assert summary["psnr"] == 100.0  # the render over the background is the image over it
    out_rgb, gt = gts[0]
    assert torch.all(gt[:, : W // 2] == torch.tensor(background)) and torch.equal(out_rgb, gt)
    opaque = KnownRenders({"a.png": RenderOut(rgb, torch.ones(H, W), {})})  # a render ignoring alpha
    wrong, _, _ = evaluate_views(opaque, [view], {}, use_lpips=False, background=WHITE)
    assert wrong["psnr"] < 10.0


def test_evaluation_uses_the_trained_fixed_background() -> None:
    def config(bg: str | None) -> dict:
        return {"provenance": {"config": {"train": {} if bg is None else {"background": bg}}}}

    assert trained_background(config("white")) == trained_background(config("random")) == WHITE
    assert trained_background(config("black")) == (0.0, 0.0, 0.0)
    assert trained_background(config(None)) == trained_background({}) == WHITE  # a memory from before


def test_evaluation_size_is_independent_of_the_training_size(tmp_path: Path) -> None:
    """``size`` and ``max_side`` pick the render size; the ground truth is the full-size image
    resized once (bicubic), never the training-size image resized again."""
    full = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)  # high frequencies
    Image.fromarray(full).save(tmp_path / "v.png")
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    view = View("v.png", tmp_path / "v.png", K, np.eye(4), 64, 48)
    sizes = {
        "size": eval_views(EvaluateConfig(size=[16, 12]), [view], 32)[0],
        "trained": eval_views(EvaluateConfig(), [view], 32)[0],
        "max_side": eval_views(EvaluateConfig(max_side=40), [view], 32)[0],
        "full": eval_views(EvaluateConfig(max_side=0), [view], 32)[0],
    }
    assert {k: (v.width, v.height) for k, v in sizes.items()} == {
        "size": (16, 12), "trained": (32, 24), "max_side": (40, 30), "full": (64, 48),
    }  # fmt: skip
    np.testing.assert_allclose(sizes["size"].K, K * np.array([[0.25], [0.25], [1.0]]))
    with pytest.raises(M3Error, match=r"evaluate\.size is \[16, 12, 3\]; give \[width, height\]"):
        eval_views(EvaluateConfig(size=[16, 12, 3]), [view], 32)
    once = Image.fromarray(full).resize((16, 12), Image.Resampling.BICUBIC)
    twice = Image.fromarray(full).resize((32, 24), Image.Resampling.BICUBIC).resize((16, 12), Image.Resampling.BICUBIC)
    as_render = {n: torch.from_numpy(np.asarray(im) / 255.0).float() for n, im in (("once", once), ("twice", twice))}
    gts = []
    for render in as_render.values():
        memory = KnownRenders({"v.png": RenderOut(render, torch.ones(12, 16), {})})
        summary, _, _ = evaluate_views(memory, [sizes["size"]], {}, False, lambda i, v, o, gt: gts.append(gt))
        gts.append(summary["psnr"])
    assert gts[0].shape == (12, 16, 3) and gts[1] == 100.0  # metrics at the requested size, from the original
    assert gts[3] < 60.0 and psnr(as_render["twice"], gts[0]) == gts[3]


def test_dataset_split_is_never_trained_and_is_evaluated(tmp_path: Path) -> None:
    scene = build_scene(tmp_path / "split", n_views=10, width=64, height=48, n_points=300, models={"clip": (16, 4)})
    names = [v.name for v in load_views(scene)]
    held_out = [names[3], names[5]]  # not the every-8th views 0 and 8
    write_json(scene.split_path, {"test": held_out})
    tr = train(scene, quick_config(iterations=2, query_dims={"clip": 8}), ["clip"], progress=False)
    assert [v.name for v in tr.inp.test] == held_out and not {v.name for v in tr.inp.train} & set(held_out)
    assert {names[0], names[8]} <= {v.name for v in tr.inp.train}  # the split replaces every-8th
    write_model(scene.model_dir, tr, {"steps": tr.step})
    metrics, details = evaluate_scene(EvaluateConfig(device="cpu", lpips=False, n_renders=1, size=[32, 24]), scene)
    assert metrics["test_views"] == 2 and [v["name"] for v in details["views"]] == held_out
    assert details["image_size"] == [32, 24] and not any("were training views" in n for n in details["notes"])
    per_view = json.loads((scene.eval_dir / "per_view.json").read_text())
    assert [v["name"] for v in per_view["views"]] == held_out
