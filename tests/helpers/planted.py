"""A demo scene whose features carry known vectors on its objects, so queries have a right answer.

The scene has ground-truth cameras and points (:func:`tests.helpers.scenes.gt_scene`) and one
model ("clip") whose features have *no semantics* (a smooth function of the surface point, in a
12-dim subspace) except on the objects: every pixel of object ``i`` carries the planted unit
vector ``v_i``, orthogonal to the subspace and to the other objects' vectors. ``vectors.json``
in the scene folder maps each object's name to its vector (``SelectConfig.vectors`` /
``LerfConfig.vectors``), and ``labels/`` holds LERF-OVS annotations of the held-out views (0, 8,
16, ...) at the image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.io import write_json
from pipeline.core.scene import Scene
from pipeline.demo.scene import DemoScene
from pipeline.features.store import FeatureStore
from tests.helpers.scenes import backproject, bank_from_store, gt_scene


@dataclass
class Planted:
    """The scene, each object's planted vector ``[d]`` and world box (``min``, ``max`` [3]), and
    the demo scene it was rendered from (e.g. to render object masks at any camera)."""

    scene: Scene
    vectors: dict[str, np.ndarray]
    boxes: dict[str, tuple[np.ndarray, np.ndarray]]
    demo: DemoScene


def planted_scene(
    root: Path,
    n_views: int = 24,
    width: int = 128,
    height: int = 96,
    cell: int = 4,
    d: int = 24,
    n_points: int = 1500,
    label_every: int = 8,
) -> Planted:
    """Write the planted scene at ``root`` (see the module docstring)."""
    from pipeline.demo.labels import write_frame_labels
    from pipeline.demo.scene import build_demo_scene

    demo = build_demo_scene(n_views, width, height, seed=0)
    names = [o.name for o in demo.objects]
    rng = np.random.default_rng(3)
    freq, mix = rng.normal(size=(3, 6)) * 0.8, rng.normal(size=(12, d))
    null = np.linalg.svd(mix)[2][12:]  # orthonormal rows, orthogonal to the span of mix's rows
    planted = {name: null[i] for i, name in enumerate(names)}
    scene = gt_scene(root, demo, width, height, n_points, stride=11)
    fh, fw = height // cell, width // cell
    scene.features_dir.mkdir()
    prov = {"config": {"model": "clip"}, "config_hash": "planted", "inputs_hash": "synthetic"}
    fs = FeatureStore.create(
        scene.features_path("clip"), [v.name for v in demo.views], fh, fw, d, {"provenance": prov}, has_mask=False
    )
    for i, v in enumerate(demo.views):
        Kf = v.K * np.array([[fw / width], [fh / height], [1.0]])
        _, fdepth, obj = demo.render(Kf, v.w2c, fw, fh)
        x = backproject(Kf, v.w2c, fdepth)
        f = np.concatenate([np.sin(x @ freq), np.cos(x @ freq)], 1) @ mix
        for k, name in enumerate(names):
            f[obj.reshape(-1) == k] = planted[name]
        fs.write(i, (f / np.linalg.norm(f, axis=1, keepdims=True)).reshape(fh, fw, d))
        if label_every and i % label_every == 0:
            _, _, ids = demo.render(v.K, v.w2c, width, height)
            write_frame_labels(scene.root / "labels", v.name, ids, names)
    bank_from_store(scene, "clip", fs, prov)
    write_json(scene.root / "vectors.json", {k: v.tolist() for k, v in planted.items()})
    boxes = {o.name: (o.box_min, o.box_max) for o in demo.objects}
    return Planted(scene, planted, boxes, demo)


def train_planted(root: Path, iterations: int = 150) -> Planted:
    """The planted scene with a memory trained on it (CPU, torch rasterizer, no densification)."""
    from pipeline.splat.config import TrainConfig
    from pipeline.splat.train import train
    from pipeline.splat.trained import write_model

    planted = planted_scene(root)
    cfg = TrainConfig(query_dims={"clip": 8}, pixels=500, device="cpu", backend="torch", checkpoint_every=1000)
    cfg = cfg.with_schedule("cpu", iterations=iterations, densify_start=1000)
    tr = train(planted.scene, cfg, ["clip"], progress=False)
    write_model(planted.scene.model_dir, tr, {"steps": tr.step})
    return planted
