"""Training test scenes: the demo scene with ground-truth cameras, initial points back-projected
from ground-truth depth of the training views, and synthetic 3D-consistent feature stores (a
vector per object plus a smooth function of the surface point, unit norm) at each model's grid,
with banks built from them; and a quick CPU training config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pipeline.core.scene import Scene
from pipeline.demo.scene import build_demo_scene
from pipeline.features.store import FeatureStore
from pipeline.splat.config import Schedule, TrainConfig
from tests.helpers.scenes import backproject, bank_from_store, gt_scene

MODELS = {"clip": (32, 4), "dinov2": (24, 8)}  # model -> (feature dim, image pixels per cell)


def _features(demo, K, w2c, w: int, h: int, d: int, rng_seed: int) -> np.ndarray:
    rng = np.random.default_rng(rng_seed)
    obj_vec = rng.normal(size=(len(demo.objects) + 1, d))
    freq = rng.normal(size=(3, 6)) * 0.8
    mix = rng.normal(size=(12, d)) * 0.6
    _, depth, obj = demo.render(K, w2c, w, h)
    x = backproject(K, w2c, depth)
    f = obj_vec[obj.reshape(-1) + 1] + np.concatenate([np.sin(x @ freq), np.cos(x @ freq)], 1) @ mix
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    return f.reshape(h, w, d)


def build_scene(
    root: Path, n_views: int = 36, width: int = 320, height: int = 240, n_points: int = 6000, models: dict = MODELS
) -> Scene:
    """A scene folder with COLMAP model, images, feature stores and banks (see module docstring)."""
    demo = build_demo_scene(n_views, width, height, seed=0)
    scene = gt_scene(root, demo, width, height, n_points, stride=7, skip_every=8)  # points from training views
    names = [v.name for v in demo.views]
    for j, (m, (d, cell)) in enumerate(models.items()):
        w, h = width // cell, height // cell
        prov = {"config": {"model": m}, "config_hash": f"cfg-{m}", "inputs_hash": "synthetic"}
        scene.features_dir.mkdir(exist_ok=True)
        fs = FeatureStore.create(scene.features_path(m), names, h, w, d, {"model": m, "provenance": prov}, False)
        for i, v in enumerate(demo.views):
            Kf = v.K * np.array([[w / width], [h / height], [1.0]])
            fs.write(i, _features(demo, Kf, v.w2c, w, h, d, j))
        bank_from_store(scene, m, fs, prov)
    return scene


SCHEDULE_KEYS = {f.name for f in dataclasses.fields(Schedule)}


def quick_config(**kw) -> TrainConfig:
    """A 4-step CPU run; ``kw`` may hold top-level and CPU-schedule keys."""
    sched = {"iterations": 4, "densify_start": 2, "sh_increase_every": 2, "downscales": 0}
    base = dict(
        checkpoint_every=2,
        log_every=1,
        densify_every=2,
        pixels=200,
        backend="torch",
        device="cpu",
        query_dims={"clip": 8, "dinov2": 8},
    )
    for key, value in kw.items():
        (sched if key in SCHEDULE_KEYS else base)[key] = value
    return TrainConfig(**base).with_schedule("cpu", **sched)
