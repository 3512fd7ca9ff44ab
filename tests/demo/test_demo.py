"""The procedural demo scene: determinism, ground truth consistent with the images and masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.core.errors import M3Error
from pipeline.demo.scene import build_demo_scene, load_demo_scene, make_demo_scene
from stages import demo as demo_stage
from stages.cli import app


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a = make_demo_scene(tmp_path / "a", n_views=3, width=64, height=48, seed=3)
    make_demo_scene(tmp_path / "b", n_views=3, width=64, height=48, seed=3)
    for name in ("view_000.png", "view_002.png", "ground_truth.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = build_demo_scene(n_views=3, width=64, height=48, seed=4)
    v = a.views[1]
    rgb_a, depth_a, _ = a.render(v.K, v.w2c, 64, 48)
    rgb_o, _, _ = other.render(v.K, v.w2c, 64, 48)
    assert np.abs(rgb_a.astype(int) - rgb_o).mean() > 5  # another seed: other textures
    assert np.all(depth_a > 0) and np.isfinite(depth_a).all()  # a closed room: every ray hits
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "ground_truth.json",
        "view_000.png",
        "view_001.png",
        "view_002.png",
    ]


def _project(K: np.ndarray, w2c: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = pts @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:], cam[:, 2]


def test_ground_truth_matches_images_and_masks(demo_input: Path) -> None:
    gt = json.loads((demo_input / "ground_truth.json").read_text())
    assert len(gt["views"]) == 36 and len(gt["objects"]) == 5
    assert gt["width"] == 320 and gt["height"] == 240
    scene = load_demo_scene(demo_input)
    assert [v.name for v in scene.views] == sorted(gt["views"]) and [o.name for o in scene.objects] == [
        "red box",
        "blue sphere",
        "green cylinder",
        "yellow box",
        "purple sphere",
    ]
    centres = []
    visible = np.zeros(len(gt["objects"]), int)
    for i, (name, cam) in enumerate(sorted(gt["views"].items())):
        K, w2c = np.array(cam["K"]), np.array(cam["w2c"])
        np.testing.assert_allclose(w2c[:3, :3] @ w2c[:3, :3].T, np.eye(3), atol=1e-12)
        centres.append(-w2c[:3, :3].T @ w2c[:3, 3])
        if i % 3:
            continue
        rgb, depth, ids = scene.render(K, w2c, 320, 240)
        if i % 9 == 0:  # the written image is this camera's render
            np.testing.assert_array_equal(rgb, np.asarray(Image.open(demo_input / name)))
        for k, obj in enumerate(gt["objects"]):
            mask = ids == k
            lo, hi = np.array(obj["box_min"]), np.array(obj["box_max"])
            corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
            uv, z = _project(K, w2c, corners)
            assert np.all(z > 0)
            rows, cols = np.nonzero(mask)
            if mask.sum() >= 50:
                visible[k] += 1
            if len(rows) == 0:
                continue
            # every mask pixel lies inside the projected box of its object ...
            assert cols.min() >= np.floor(uv[:, 0].min()) - 1 and cols.max() <= np.ceil(uv[:, 0].max())
            assert rows.min() >= np.floor(uv[:, 1].min()) - 1 and rows.max() <= np.ceil(uv[:, 1].max())
            # ... and back-projects (with its depth) into the object's box
            pix = np.stack([cols + 0.5, rows + 0.5, np.ones(len(rows))], axis=1)
            cam_pts = (pix @ np.linalg.inv(K).T) * depth[rows, cols, None]
            world = (cam_pts - w2c[:3, 3]) @ w2c[:3, :3]
            assert np.all(world >= lo - 1e-3) and np.all(world <= hi + 1e-3)
    assert np.all(visible >= 8)  # every object is seen in most of the 12 checked views
    centres = np.array(centres)
    extent = np.max(np.linalg.norm(centres[:, None] - centres[None], axis=-1))
    assert gt["extent"] == pytest.approx(extent) and 6.0 < extent < 7.0


def test_demo_stage_cli(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("demo:\n  n_views: 4\n  width: 64\n  height: 48\n  seed: 1\n")
    out = tmp_path / "scene"
    result = CliRunner().invoke(app, ["demo-scene", str(out), "--n-views", "3", "--params", str(params)])
    assert result.exit_code == 0, result.output
    gt = json.loads((out / "input" / "ground_truth.json").read_text())
    assert sorted(gt["views"]) == ["view_000.png", "view_001.png", "view_002.png"]
    assert gt["provenance"]["config"] == {
        "n_views": 3,
        "width": 64,
        "height": 48,
        "seed": 1,
        "supersample": 1,
        "label_every": 8,
    }
    with Image.open(out / "input" / "view_001.png") as im:
        assert im.size == (64, 48)
    assert [p.name for p in out.iterdir()] == ["input"]  # no temp folders left
    assert [p.name for p in (out / "input" / "labels").iterdir()] == ["view_000.json"]  # views 0, 8, 16, ...
    with pytest.raises(M3Error, match=r"DemoConfig.n_views: 2 is out of range; use >= 3"):
        demo_stage.run(demo_stage.DemoConfig(n_views=2), tmp_path / "x")
    params.write_text("demo:\n  n_view: 4\n")
    result = CliRunner().invoke(app, ["demo-scene", str(out), "--params", str(params)])
    assert result.exit_code == 2 and "unknown key 'n_view'; did you mean 'n_views'?" in result.output


def test_labels_are_the_object_masks(tmp_path: Path) -> None:
    """The written LERF-OVS annotations read back (as the protocol reads them) to the object masks."""
    from pipeline.evaluate.lerf import read_labels

    scene = make_demo_scene(tmp_path / "in", n_views=4, width=160, height=120, seed=0, label_every=2)
    frames = read_labels(tmp_path / "in" / "labels")
    assert [f.name for f in frames] == ["view_000.png", "view_002.png"]
    for frame, view in zip(frames, scene.views[::2]):
        _, _, ids = scene.render(view.K, view.w2c, 160, 120)
        assert (frame.height, frame.width) == (120, 160)
        visible = {o.name for k, o in enumerate(scene.objects) if (ids == k).sum() >= 20}
        assert set(frame.labels) == visible and len(visible) >= 3
        for label, ann in frame.labels.items():
            truth = ids == [o.name for o in scene.objects].index(label)
            inter = np.logical_and(ann.mask, truth).sum()
            assert inter / np.logical_or(ann.mask, truth).sum() > 0.9  # polygons of the visible parts
            ys, xs = np.nonzero(ann.mask)  # every annotated pixel lies in one of the label's boxes
            b = ann.boxes
            in_box = (
                (xs[:, None] >= b[:, 0])
                & (xs[:, None] <= b[:, 2])
                & (ys[:, None] >= b[:, 1])
                & (ys[:, None] <= b[:, 3])
            )
            assert in_box.any(axis=1).all()
