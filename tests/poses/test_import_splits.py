"""Evaluation protocols at the poses stage: a dataset's own held-out split (NeRF-synthetic
``transforms_train.json`` / ``transforms_test.json``), named held-out views, RGBA inputs whose
alpha survives undistortion (the features stage sees them over white), and the split as train
and evaluate read it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import M3Error
from pipeline.core.geometry import opengl_c2w_from_w2c
from pipeline.core.scene import Scene, View, import_pycolmap, load_split, load_views, split_views
from pipeline.features.extract import extract_view
from pipeline.features.models.base import FeatureMap
from pipeline.poses.config import PosesConfig
from stages import poses

TEST_EVERY = 6  # demo views 0, 6, 12, ... form the test split


def _alpha(height: int, width: int, i: int) -> np.ndarray:
    """A matte ``[H, W] uint8``: transparent top-left block, half-transparent strip, opaque rest."""
    a = np.full((height, width), 255, np.uint8)
    a[: height // 4, : width // 4 + i] = 0
    a[-10:, :] = 128
    return a


def _nerf_synthetic(demo_input: Path, root: Path) -> tuple[list[str], list[str]]:
    """The demo as a NeRF-synthetic scene in ``root/input``: RGBA PNGs in train/ and test/ (the
    transparent pixels hold garbage colour), a transforms file per split; returns the image names."""
    gt = json.loads((demo_input / "ground_truth.json").read_text())
    names = sorted(gt["views"])
    K = np.array(gt["views"][names[0]]["K"])
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for i, name in enumerate(names):
        split = "test" if i % TEST_EVERY == 0 else "train"
        rgb = np.asarray(Image.open(demo_input / name).convert("RGB")).copy()
        a = _alpha(*rgb.shape[:2], i)
        rgb[a == 0] = (255, 0, 255)
        (root / "input" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.dstack([rgb, a]), "RGBA").save(root / "input" / split / name)
        c2w = opengl_c2w_from_w2c(np.array(gt["views"][name]["w2c"]))
        splits[split].append({"file_path": f"./{split}/{Path(name).stem}", "transform_matrix": c2w.tolist()})
    for split, frames in splits.items():
        meta = {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "frames": frames}
        (root / "input" / f"transforms_{split}.json").write_text(json.dumps(meta))
    train = [f"train/{n}" for i, n in enumerate(names) if i % TEST_EVERY]
    test = [f"test/{n}" for i, n in enumerate(names) if i % TEST_EVERY == 0]
    return train, test


def test_dataset_split_is_imported_posed_and_held_out_with_alpha(demo_input: Path, tmp_path: Path) -> None:
    scene = Scene(tmp_path / "synthetic")
    train, test = _nerf_synthetic(demo_input, scene.root)
    cfg = PosesConfig(source="transforms", import_path="input/transforms_train.json", split="dataset")
    stats = poses.run(cfg, scene)
    views = load_views(scene)
    assert [v.name for v in views] == sorted(train + test)  # the test views are posed too
    assert stats["registered_views"] == len(views) and stats["held_out_views"] == len(test) == 6
    assert load_split(scene) == sorted(test)
    tr, te = split_views(views, 8, load_split(scene))  # the split replaces every-8th
    assert [v.name for v in te] == sorted(test) and not {v.name for v in tr} & set(test)
    rec = import_pycolmap().Reconstruction(str(scene.sparse_dir))
    seen = {rec.images[el.image_id].name for p in rec.points3D.values() for el in p.track.elements}
    assert rec.num_points3D() > 100 and seen <= set(train)  # points from the training views only
    seen_pixels: list = []
    model = SimpleNamespace(extract=lambda x: seen_pixels.append(x) or FeatureMap(x[:1], x[0] > -1))
    for name in sorted(train + test)[:3]:  # test views
        src = Image.open(scene.root / "input" / name)
        out = Image.open(scene.images_dir / name)
        assert out.mode == "RGBA" and out.size == src.size
        a_in, a_out = np.asarray(src)[..., 3].astype(int), np.asarray(out)[..., 3].astype(int)
        assert np.abs(a_out - a_in).max() <= 1  # PINHOLE: undistortion is the identity
        opaque = a_in == 255
        assert np.abs(np.asarray(out)[..., :3].astype(int) - np.asarray(src)[..., :3])[opaque].max() <= 1
        extract_view(model, scene.images_dir / name, *src.size)  # the features stage's reader
        pixels = seen_pixels[-1].permute(1, 2, 0).numpy()  # [H, W, 3] in [0, 1]
        assert np.all(pixels[a_in == 0] == 1.0)  # over white: never the garbage colour under alpha 0
        np.testing.assert_allclose(pixels[opaque], np.asarray(out)[..., :3][opaque] / 255, atol=1e-6)


def test_rgb_inputs_stay_rgb_without_a_split(demo_input: Path, tmp_path: Path) -> None:
    """No alpha, no split: colmap/images stays RGB, no split file, held_out names views."""
    scene = Scene(tmp_path / "plain")
    gt = json.loads((demo_input / "ground_truth.json").read_text())
    names = sorted(gt["views"])[:10]
    (scene.root / "input").mkdir(parents=True)
    K = np.array(gt["views"][names[0]]["K"])
    frames = []
    for name in names:
        Image.open(demo_input / name).convert("RGB").save(scene.root / "input" / name)
        c2w = opengl_c2w_from_w2c(np.array(gt["views"][name]["w2c"]))
        frames.append({"file_path": name, "transform_matrix": c2w.tolist()})
    meta = {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "frames": frames}
    (scene.root / "input" / "transforms.json").write_text(json.dumps(meta))
    stats = poses.run(PosesConfig(source="transforms", import_path="input/transforms.json"), scene)
    assert "held_out_views" not in stats and load_split(scene) is None and not scene.split_path.exists()
    assert all(Image.open(scene.images_dir / n).mode == "RGB" for n in names)
    with pytest.raises(M3Error, match=r"poses\.held_out names 'nope\.png', not a registered view"):
        poses.run(PosesConfig(source="transforms", import_path="input/transforms.json", held_out=["nope.png"]), scene)
    named = PosesConfig(source="transforms", import_path="input/transforms.json", held_out=[names[3], names[1]])
    assert poses.run(named, scene)["held_out_views"] == 2
    assert load_split(scene) == [names[1], names[3]]


def test_split_errors_name_the_fix(tmp_path: Path) -> None:
    scene = Scene(tmp_path / "s")
    (scene.root / "input").mkdir(parents=True)
    (scene.root / "input" / "transforms_train.json").write_text(json.dumps({"frames": [{"file_path": "x"}]}))
    with pytest.raises(M3Error, match=r"no transforms_test\.json or transforms_val\.json beside .*poses\.split: none"):
        poses.run(PosesConfig(source="transforms", import_path="input/transforms_train.json", split="dataset"), scene)
    with pytest.raises(M3Error, match=r"poses\.split: dataset needs poses\.source: transforms"):
        poses.run(PosesConfig(source="colmap", import_path="input", split="dataset"), scene)
    scene.colmap_dir.mkdir()
    scene.split_path.write_text(json.dumps({"test": "view_000.png"}))
    with pytest.raises(M3Error, match=r"split\.json: 'test' must be a list of image names; rerun `m3 poses s`"):
        load_split(scene)
    scene.split_path.write_text("{")
    with pytest.raises(M3Error, match=r"split\.json: not a readable split file"):
        load_split(scene)


def test_split_views_by_names_or_every_nth() -> None:
    views = [View(f"{i:02d}.png", Path(f"{i:02d}.png"), np.eye(3), np.eye(4), 4, 3) for i in range(17)]
    train, test = split_views(views, 8)
    assert [v.name for v in test] == ["00.png", "08.png", "16.png"] and len(train) == 14  # LLFF's every 8th
    train, test = split_views(views, 8, ["03.png", "05.png"])
    assert [v.name for v in test] == ["03.png", "05.png"] and "00.png" in [v.name for v in train]
    assert split_views(views, 0) == (views, [])
    assert split_views(views, 8, []) == (views, [])


def test_import_llff_poses_bounds(demo_input: Path, tmp_path: Path) -> None:
    """A poses_bounds.npy of full-size (2x) cameras with [down, right, back] axes and the images
    at half size (as images_8 is to LLFF's full size): the demo's cameras come back."""
    gt = json.loads((demo_input / "ground_truth.json").read_text())
    names = sorted(gt["views"])[:10]
    scene = Scene(tmp_path / "llff")
    (scene.root / "input" / "images_2").mkdir(parents=True)
    rows = []
    for name in names:
        Image.open(demo_input / name).save(scene.root / "input" / "images_2" / name)
        c2w = opengl_c2w_from_w2c(np.array(gt["views"][name]["w2c"]))  # [right, up, back]
        K = np.array(gt["views"][name]["K"])
        hwf = [2 * gt["height"], 2 * gt["width"], 2 * K[0, 0]]
        pose = np.column_stack([-c2w[:3, 1], c2w[:3, 0], c2w[:3, 2], c2w[:3, 3], hwf])
        rows.append(np.concatenate([pose.ravel(), [0.5, 20.0]]))
    np.save(scene.root / "input" / "poses_bounds.npy", np.array(rows))
    cfg = PosesConfig(source="llff", import_path="input/poses_bounds.npy", import_images="input/images_2")
    stats = poses.run(cfg, scene)
    views = load_views(scene)
    assert [v.name for v in views] == names and stats["points"] > 100
    for v in views:
        np.testing.assert_allclose(v.w2c, np.array(gt["views"][v.name]["w2c"]), atol=1e-9)
        np.testing.assert_allclose(v.K, np.array(gt["views"][v.name]["K"]), atol=1e-9)
    np.save(scene.root / "input" / "poses_bounds.npy", np.array(rows)[:, :15])
    with pytest.raises(M3Error, match=r"poses_bounds\.npy: expected an \[N, 17\] array .* got shape \(10, 15\)"):
        poses.run(cfg, scene)
    np.save(scene.root / "input" / "poses_bounds.npy", np.array(rows)[:4])
    with pytest.raises(M3Error, match=r"images_2: 10 images for the 4 poses of poses_bounds\.npy"):
        poses.run(cfg, scene)
