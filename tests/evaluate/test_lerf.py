"""The LERF-OVS protocol: annotation formats, LangSplat's steps, and the 2D + 3D metrics on known renders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.errors import M3Error
from pipeline.core.scene import View
from pipeline.evaluate import lerf as L
from pipeline.query.encode import QueryVector
from pipeline.splat.trained import RenderOut


def _majority_loop(mask: np.ndarray, r: int = 3) -> np.ndarray:
    """Reference: per pixel, the most frequent value (the smaller on ties) of rows
    max(0, i - r) .. min(i + r + 1, h - 1) - 1 and columns likewise."""
    h, w = mask.shape
    out = mask.copy()
    for i in range(h):
        for j in range(w):
            win = mask[max(0, i - r) : min(i + r + 1, h - 1), max(0, j - r) : min(j + r + 1, w - 1)]
            out[i, j] = 1 if win.sum() * 2 > win.size else 0
    return out


def test_majority_smooth_matches_the_window_rule() -> None:
    rng = np.random.default_rng(0)
    for p in (0.3, 0.5, 0.7):
        mask = (rng.random((23, 31)) < p).astype(np.uint8)
        np.testing.assert_array_equal(L.majority_smooth(mask), _majority_loop(mask))
    mask = np.zeros((12, 12), np.uint8)
    mask[-1, :] = 1  # the last row is outside every window: it vanishes
    assert L.majority_smooth(mask).sum() == 0


def test_mask_and_localisation_steps() -> None:
    h, w = 60, 80
    rel = np.full((h, w), 0.2, np.float32)
    rel[20:40, 30:50] = 0.9  # the object
    rel[5, 5] = 1.0  # a single-pixel spike: the mean filter removes it
    hit, pts = L.localization_hit(rel, np.array([[30.0, 20.0, 49.0, 39.0]]), filter_size=10)
    assert hit and np.all((pts[:, 0] >= 30) & (pts[:, 0] <= 49) & (pts[:, 1] >= 20) & (pts[:, 1] <= 39))
    assert not L.localization_hit(rel, np.array([[0.0, 0.0, 20.0, 15.0]]), filter_size=10)[0]
    assert L.localization_hit(rel, np.array([[0.0, 0.0, 5.0, 5.0]]), filter_size=1)[0]  # unfiltered: the spike
    gt = np.zeros((h, w), np.uint8)
    gt[20:40, 30:50] = 1
    assert L.iou(L.predicted_mask(rel, 10, 0.4), gt) > 0.85
    assert L.iou(L.predicted_mask(1.0 - rel, 10, 0.4), gt) < 0.01
    sel = L.selected_gaussians(np.array([0.0, 0.1, 0.9, 1.0, 5.0]), np.array([True, True, True, True, False]), 0.4)
    assert sel.tolist() == [False, False, True, True, False]  # (r - min) / (max - min) * 2 - 1 > 0.4 among candidates


def test_read_labels_langsplat_and_labelme(tmp_path: Path) -> None:
    square = [[10, 10], [19, 10], [19, 19], [10, 19]]
    other = [[30, 5], [35, 5], [35, 8], [30, 8]]
    (tmp_path / "frame_00002.json").write_text(
        json.dumps(
            {
                "info": {"name": "frame_00002.jpg", "height": 40, "width": 50},
                "objects": [
                    {"category": "cup", "bbox": [10, 10, 19, 19], "segmentation": square},
                    {"category": "cup", "bbox": [30, 5, 35, 8], "segmentation": other},
                ],
            }
        )
    )
    (tmp_path / "frame_00001.json").write_text(
        json.dumps(
            {
                "imagePath": "../images/frame_00001.jpg",
                "imageHeight": 40,
                "imageWidth": 50,
                "shapes": [
                    {"label": "plate", "points": square, "shape_type": "polygon"},
                    {"label": "note", "points": [[0, 0], [3, 3]], "shape_type": "rectangle"},
                ],
            }
        )
    )
    frames = L.read_labels(tmp_path)
    assert [f.name for f in frames] == ["frame_00001.jpg", "frame_00002.jpg"]
    plate = frames[0].labels["plate"]
    assert list(frames[0].labels) == ["plate"] and plate.boxes.tolist() == [[10, 10, 19, 19]]
    assert plate.mask.sum() == 100 and plate.mask[10:20, 10:20].all()  # fillPoly includes the border
    cup = frames[1].labels["cup"]
    assert cup.boxes.shape == (2, 4) and cup.mask.sum() == 100 + 6 * 4  # one query, the union of both
    (tmp_path / "frame_00003.json").write_text(json.dumps({"objects": []}))
    with pytest.raises(M3Error, match="frame_00003.json: not a LERF-OVS/labelme annotation"):
        L.read_labels(tmp_path)
    with pytest.raises(M3Error, match="no \\*.json annotations"):
        L.read_labels(tmp_path / "missing")


def test_frames_match_their_input_images(tmp_path: Path) -> None:
    """Annotations name the input images; the frames stage renamed them (frames.json keeps the source)."""
    from pipeline.core.io import write_json
    from pipeline.core.scene import Scene

    scene = Scene(tmp_path / "s")
    views = [View(f"{i:05d}.png", Path(f"{i:05d}.png"), np.eye(3), np.eye(4), 8, 6) for i in range(2)]
    assert set(L.frame_views(scene, views)) == {"00000.png", "00001.png"}
    frames = [{"name": "00000.png", "source": "shots/frame_00007.jpg"}, {"name": "00009.png", "source": "x.jpg"}]
    write_json(scene.frames_dir / "frames.json", {"frames": frames})
    by_name = L.frame_views(scene, views)
    assert by_name["frame_00007.jpg"] is views[0] and "x.jpg" not in by_name  # 00009.png is not registered


class PlantedMemory:
    """Known renders and Gaussians: features carry ``q`` inside a square of the image, and the
    Gaussians in front of that square are the object's."""

    def __init__(self, view: View, q: torch.Tensor, h: int, w: int) -> None:
        self.view, self.device = view, "cpu"
        feats = torch.zeros(h, w, len(q))
        feats[..., 1] = 1.0
        feats[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = q
        self.feats = feats
        # a grid of Gaussian centres at depth 2, one per pixel block, plus hidden ones behind at depth 4
        u, v = np.meshgrid(np.arange(2, view.width, 4) + 0.5, np.arange(2, view.height, 4) + 0.5)
        pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1)
        rays = pix @ np.linalg.inv(view.K).T
        self.front = rays * 2.0
        pts = np.concatenate([self.front, rays * 4.0])
        self.means = torch.from_numpy(pts).float()
        self.opacities = torch.ones(len(pts))
        col, row = np.floor(pix[:, 0]), np.floor(pix[:, 1])  # inside the label's polygon (below)
        obj = (col >= view.width // 3) & (col <= 2 * view.width // 3 - 1)
        obj &= (row >= view.height // 3) & (row <= 2 * view.height // 3 - 1)
        self.object = np.concatenate([obj, obj])  # the hidden ones are relevant too, but never seen

    def render(self, view: View, models: list[str] | None = None) -> RenderOut:
        return RenderOut(
            torch.zeros(view.height, view.width, 3), torch.ones(view.height, view.width), {"m": self.feats}
        )

    def render_depth(self, view: View, width: int, height: int) -> torch.Tensor:
        return torch.full((height, width), 2.0)


def test_protocol_on_planted_renders() -> None:
    H, W, d = 48, 64, 6
    K = np.array([[50.0, 0, W / 2], [0, 50.0, H / 2], [0, 0, 1]])
    view = View("frame_00001.png", Path("frame_00001.png"), K, np.eye(4), W, H)
    q = torch.zeros(d)
    q[0] = 1.0
    memory = PlantedMemory(view, q, 12, 16)
    frame = L.FrameLabels("frame_00001.jpg", H, W)  # matched to the view by stem
    frame.add(
        "thing",
        [[W // 3, H // 3], [2 * W // 3 - 1, H // 3], [2 * W // 3 - 1, 2 * H // 3 - 1], [W // 3, 2 * H // 3 - 1]],
    )
    frame.add("elsewhere", [[0, 0], [8, 0], [8, 8], [0, 8]])
    vectors = {"thing": q, "elsewhere": q}  # the second label is queried with the wrong vector

    def gaussian_relevance(qv: QueryVector) -> torch.Tensor:
        return torch.from_numpy(np.where(memory.object, 0.9, 0.1)).float()

    metrics, per, notes = L.evaluate_lerf(
        memory,
        {view.name: view},
        [frame, L.FrameLabels("frame_00009.jpg", H, W)],
        "m",
        lambda text: QueryVector(vectors[text], text=text),
        gaussian_relevance,
        filter_size=5,
    )
    by_label = {p["label"]: p for p in per}
    # LangSplat's mask keeps the top 30% of the normalised range: the upsampled square's ramps are cut
    assert by_label["thing"]["hit"] and by_label["thing"]["iou"] > 0.6
    assert not by_label["elsewhere"]["hit"] and by_label["elsewhere"]["iou"] == 0.0
    assert metrics["localization_accuracy"] == 0.5 and metrics["queries"] == 2 and metrics["frames"] == 1
    assert metrics["mIoU"] == pytest.approx(by_label["thing"]["iou"] / 2)
    assert notes == ["lerf-ovs: frame frame_00009.jpg is not a registered view; its queries are skipped"]
    # 3D: the seen object Gaussians are found exactly; the hidden ones are never judged
    assert metrics["3d"]["labels"] == 2
    assert metrics["3d"]["mIoU"] == pytest.approx(0.5) and metrics["3d"]["precision"] == pytest.approx(0.5)
