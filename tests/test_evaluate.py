"""Evaluation plumbing on known renders, grounding on hand-made masks, and the demo end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.evaluation import evaluate_grounding, evaluate_views, load_grounding
from pipeline.featurestore import FeatureStore
from pipeline.query import QueryVector
from pipeline.scene import Scene, View
from pipeline.trained import RenderOut

H, W, h, w, D = 16, 20, 4, 5, 8


class KnownRenders:
    """A memory whose renders are given per view (to check the metrics, not a model)."""

    def __init__(self, renders: dict[str, RenderOut]) -> None:
        self.renders = renders

    def render(self, view: View) -> RenderOut:
        return self.renders[view.name]


def _views(root: Path, n: int) -> tuple[list[View], list[torch.Tensor]]:
    rng = np.random.default_rng(0)
    views, images = [], []
    for i in range(n):
        img = rng.uniform(0.2, 0.8, size=(H, W, 3))
        u8 = (img * 255).round().astype(np.uint8)
        Image.fromarray(u8).save(root / f"v{i}.png")
        images.append(torch.from_numpy(u8.astype(np.float32) / 255))
        views.append(View(f"v{i}.png", root / f"v{i}.png", np.eye(3), np.eye(4), W, H))
    return views, images


def test_evaluate_views_known_errors(tmp_path: Path) -> None:
    views, images = _views(tmp_path, 2)
    rng = np.random.default_rng(1)
    feats = [rng.normal(size=(h, w, D)).astype(np.float16) for _ in views]
    valid = np.ones((h, w), bool)
    valid[0, 0] = False
    fs = FeatureStore.create(tmp_path / "clip.zarr", [v.name for v in views], h, w, D, {}, has_mask=True)
    for i, f in enumerate(feats):
        fs.write(i, f, valid)
    exact = RenderOut(images[0], torch.ones(H, W), {"clip": torch.from_numpy(feats[0].astype(np.float32))})
    off = RenderOut(images[1] + 0.1, torch.ones(H, W), {"clip": -torch.from_numpy(feats[1].astype(np.float32))})
    saved = []
    summary, per_view, notes = evaluate_views(
        KnownRenders({"v0.png": exact, "v1.png": off}), views, {"clip": fs}, use_lpips=False,
        on_render=lambda i, v, out, gt: saved.append((i, v.name, tuple(gt.shape))),
    )
    assert per_view[0].psnr == 100.0 and per_view[0].ssim == pytest.approx(1.0, abs=1e-5)
    assert per_view[1].psnr == pytest.approx(20.0, abs=0.01)
    assert per_view[0].features["clip"]["cosine"] == pytest.approx(0.0, abs=1e-3)
    assert per_view[1].features["clip"]["cosine"] == pytest.approx(2.0, abs=1e-3)  # negated features
    f1 = feats[1].astype(np.float64)[valid]
    assert per_view[1].features["clip"]["l2"] == pytest.approx(float((4 * f1**2).mean()), rel=1e-3)
    assert summary["features"]["clip"]["cells"] == 2 * (h * w - 1)  # the invalid cell is skipped
    assert summary["features"]["clip"]["cosine"] == pytest.approx(1.0, abs=1e-3)
    assert summary["psnr"] == pytest.approx((100 + 20) / 2, abs=0.01)
    assert "lpips" not in summary and any("LPIPS omitted" in n for n in notes)
    assert saved == [(0, "v0.png", (H, W, 3)), (1, "v1.png", (H, W, 3))]


def test_grounding_from_json_and_masks(tmp_path: Path) -> None:
    scene = Scene(tmp_path / "s")
    (scene.root / "masks").mkdir(parents=True)
    views, images = _views(scene.root, 1)
    q = torch.zeros(D)
    q[0] = 1.0
    feats = torch.zeros(h, w, D)
    feats[..., 1] = 1.0  # everything orthogonal to q ...
    feats[1:3, 1:3] = q  # ... except a 2x2-cell square = pixels [4:12, 4:12)
    memory = KnownRenders({"v0.png": RenderOut(images[0], torch.ones(H, W), {"clip": feats})})
    exact = np.zeros((H, W), np.uint8)
    exact[4:12, 4:12] = 255
    wrong = np.zeros((H, W), np.uint8)
    wrong[12:, :4] = 255
    Image.fromarray(exact).save(scene.root / "masks" / "a.png")
    Image.fromarray(wrong).save(scene.root / "masks" / "b.png")
    entries = [
        {"view": "v0.png", "text": "thing", "mask": "masks/a.png"},
        {"view": "v0.png", "text": "thing", "mask": "masks/b.png"},
    ]
    (scene.root / "grounding.json").write_text(json.dumps(entries))
    samples = load_grounding(scene, "grounding.json")
    assert [s.mask.name for s in samples] == ["a.png", "b.png"]
    encoded = []

    def encode(text: str) -> QueryVector:
        encoded.append(text)
        return QueryVector(q)

    result, per = evaluate_grounding(memory, {"v0.png": views[0]}, samples, "clip", encode, threshold=0.5)
    assert encoded == ["thing"]  # one encoding per distinct text
    # bilinear upsampling blurs the square's border symmetrically: at 0.5 it is nearly exact
    assert per[0]["iou"] > 0.8 and per[1]["iou"] == 0.0
    assert result["samples"] == 2 and result["mIoU"] == pytest.approx(per[0]["iou"] / 2)
    assert result["precision@0.5"] == 0.5
    assert load_grounding(Scene(tmp_path / "none"), "grounding.json") == []
