"""Test scenes from the demo renderer with ground-truth cameras: images, a COLMAP model whose
points are back-projected from ground-truth depth (a dense, exact stand-in for SfM), banks
for synthetic feature stores, and posed scenes of the session's demo views."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.bank.config import BankConfig
from pipeline.bank.reduction import build_bank
from pipeline.bank.store import bank_hash, save_bank
from pipeline.core.scene import Scene
from pipeline.features.store import FeatureStore


def backproject(K: np.ndarray, w2c: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """World points ``[h*w, 3]`` of the pixel centres of ``depth [h, w]`` (z in the camera frame)."""
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    cam = rays * depth[..., None]
    R, t = w2c[:3, :3], w2c[:3, 3]
    return (cam.reshape(-1, 3) - t) @ R


def gt_scene(root: Path, demo, width: int, height: int, n_points: int, stride: int, skip_every: int = 0) -> Scene:
    """Scene folder at ``root`` with the demo's views rendered into ``images/`` and a COLMAP model
    of their ground-truth cameras plus ``n_points`` points (every ``stride``-th pixel of each view's
    depth, views ``i % skip_every == 0`` left out when ``skip_every``), picked with seed 0."""
    import pycolmap
    from PIL import Image

    scene = Scene(root)
    scene.images_dir.mkdir(parents=True)
    rec = pycolmap.Reconstruction()
    K = demo.views[0].K
    rec.add_camera_with_trivial_rig(
        pycolmap.Camera(
            model="PINHOLE", width=width, height=height, params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]], camera_id=1
        )
    )
    pts, cols = [], []
    for i, v in enumerate(demo.views):
        rgb, depth, _ = demo.render(v.K, v.w2c, width, height)
        Image.fromarray(rgb).save(scene.images_dir / v.name)
        rec.add_image_with_trivial_frame(
            pycolmap.Image(name=v.name, camera_id=1, image_id=i + 1), pycolmap.Rigid3d(v.w2c[:3, :4])
        )
        if not skip_every or i % skip_every:
            pts.append(backproject(v.K, v.w2c, depth)[::stride])
            cols.append(rgb.reshape(-1, 3)[::stride])
    pts, cols = np.concatenate(pts), np.concatenate(cols)
    for k in np.random.default_rng(0).choice(len(pts), min(n_points, len(pts)), replace=False):
        rec.add_point3D(pts[k], pycolmap.Track(), cols[k])
    scene.sparse_dir.mkdir(parents=True)
    rec.write(str(scene.sparse_dir))
    return scene


def bank_from_store(scene: Scene, model: str, store: FeatureStore, prov: dict) -> None:
    """Build and save ``model``'s bank (theta 0.9) from ``store``, recording the features' provenance ``prov``."""
    d = store.shape[2]
    res = build_bank(
        ((f.reshape(-1, d), None) for _, f, _ in store.iter_views()), BankConfig(threshold=0.9, verify=False)
    )
    save_bank(
        scene.bank_path(model),
        res.bank,
        {
            "provenance": {
                "stage": "bank",
                "config": {"model": model},
                "features": prov,
                "bank_hash": bank_hash(res.bank),
            }
        },
    )


def posed_scene(root: Path, demo_input: Path, n_views: int) -> Scene:
    """A scene folder with ``n_views`` demo views as an undistorted COLMAP model (ground-truth poses).

    Views past the demo's count reuse its images cyclically under new names.
    """
    import pycolmap

    gt = json.loads((demo_input / "ground_truth.json").read_text())
    demo = sorted(gt["views"])
    scene = Scene(root)
    scene.images_dir.mkdir(parents=True)
    scene.sparse_dir.mkdir(parents=True)
    rec = pycolmap.Reconstruction()
    for i in range(n_views):
        src = demo[i % len(demo)]
        name = f"{i:05d}.png"
        shutil.copy(demo_input / src, scene.images_dir / name)
        if i == 0:
            with Image.open(demo_input / src) as im:
                width, height = im.size
            K = np.asarray(gt["views"][src]["K"])
            rec.add_camera_with_trivial_rig(
                pycolmap.Camera(
                    model="PINHOLE",
                    width=width,
                    height=height,
                    camera_id=1,
                    params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]],
                )
            )
        w2c = np.asarray(gt["views"][src]["w2c"], dtype=np.float64)
        rec.add_image_with_trivial_frame(
            pycolmap.Image(name=name, camera_id=1, image_id=i + 1), pycolmap.Rigid3d(w2c[:3, :4])
        )
    rec.write(str(scene.sparse_dir))
    return scene
