"""Benchmark: the memory's semantics with oracle features (the real bank, train and evaluate stages).

Not a test: run it by hand on the posed demo scene (``data/demo`` after ``m3 demo``, ``frames`` and
``poses``; 2-4 min of 2 cores per variant)::

    .venv/bin/python -m benchmarks.oracle --scene data/demo
    .venv/bin/python -m benchmarks.oracle --scene data/demo --variants default distill

No foundation-model checkpoint is needed: the ``clip`` feature store holds *oracle* features. The
demo scene knows every pixel's object (:meth:`pipeline.demo.scene.DemoScene.render` with the
ground-truth camera of the view's input image), so each feature cell ``[d]`` (d = 512) is its
object's fixed random unit vector plus isotropic noise of expected norm ``--sigma`` (drawn per view
and cell), renormalised; cells on the room (no object) get one more random vector. The grid is
ViT-L/14@336's patch grid of the registered views (24 x 32 for the demo's 318 x 238 images).

A scene folder is built in a temp dir: ``input/``, ``frames/`` and ``colmap/`` are symlinks to the
source scene (only read), ``features/clip.zarr`` and ``vectors.json`` ({object name: its vector})
are written there. Then the library functions of the stages run with ``params.yaml``'s settings:
:func:`pipeline.bank.stage.bank_scene` (``bank.clip``), :func:`pipeline.splat.stage.train_scene`
(``train``: the CPU schedule on the CPU) and :func:`pipeline.evaluate.evaluation.evaluate_scene`
(``evaluate``, with ``lerf.vectors: vectors.json`` and ``lerf.mode: cosine``: the canonical mode
needs a text tower for its negative phrases, which oracle vectors do not have).

Variants (``--variants``): ``default`` (params.yaml), ``cells`` (``train.feature_render: cells``),
``distill`` (``train.method: distill``) and ``attention_k`` (the default memory again, its 3D
relevance with ``attention_k: 16``: ``evaluate.lerf`` has no such key, so this row calls
:func:`pipeline.evaluate.lerf.evaluate_lerf` with a top-16 relevance engine; the 2D figures
render the memory as the default row does; a bank of at most 16 slots makes it exact). Each row:
LERF-OVS 2D localisation accuracy, 2D mIoU and 3D mIoU, the held-out PSNR, and the training's CPU
seconds (all threads) and wall seconds. One more row scores the stored oracle features of the
labelled views themselves with the 2D protocol (no memory): what the feature grid and the
protocol's filters allow. The queries localised wrongly are listed below the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import load_config
from pipeline.core.io import config_hash, read_json, write_json
from pipeline.core.scene import Scene, load_views
from pipeline.features.store import FeatureStore

REPO = Path(__file__).resolve().parent.parent
MODEL = "clip"
DIM = 512
PATCH, SHORT_SIDE = 14, 336  # ViT-L/14@336
VARIANTS = {
    "default": {},
    "attention_k": {},
    "cells": {"feature_render": "cells"},
    "distill": {"method": "distill"},
}
GOALS = {"localization_accuracy": 1.0, "mIoU": 0.85, "3d_mIoU": 0.6}
log = logging.getLogger("oracle")


def oracle_scene(source: Path, root: Path, sigma: float, seed: int) -> Scene:
    """The scene folder at ``root``: ``source``'s input, frames and COLMAP model (symlinks), oracle
    features of ``MODEL`` and ``vectors.json`` (see the module docstring)."""
    from pipeline.demo.scene import load_demo_scene

    root.mkdir()
    for part in ("input", "frames", "colmap"):
        (root / part).symlink_to((source / part).resolve(), target_is_directory=True)
    scene = Scene(root)
    demo = load_demo_scene(scene.input_dir)
    gt = {v.name: v for v in demo.views}
    source_of = {f["name"]: Path(f["source"]).name for f in read_json(scene.frames_dir / "frames.json")["frames"]}
    views = load_views(scene)
    width, height = views[0].width, views[0].height
    fh = SHORT_SIDE // PATCH if height <= width else round(SHORT_SIDE * height / width / PATCH)
    fw = round(SHORT_SIDE * width / height / PATCH) if height <= width else SHORT_SIDE // PATCH
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(len(demo.objects) + 1, DIM))  # row 0: the room, row i + 1: object i
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    conf = {"model": MODEL, "weights": "oracle", "dim": DIM, "sigma": sigma, "seed": seed}
    prov = {
        "stage": "features",
        "config": conf,
        "config_hash": config_hash(conf),
        "inputs_hash": config_hash(read_json(scene.input_dir / "ground_truth.json")["views"]),
    }
    attrs = {
        "model": MODEL, "config": conf, "dim": DIM, "grid": [fh, fw], "image_size": [height, width],
        "feature_stride": [height / fh, width / fw], "provenance": prov,
    }  # fmt: skip
    scene.features_dir.mkdir()
    store = FeatureStore.create(scene.features_path(MODEL), [v.name for v in views], fh, fw, DIM, attrs, False)
    for i, view in enumerate(views):
        truth = gt[source_of[view.name]]
        Kf = view.K * np.array([[fw / view.width], [fh / view.height], [1.0]])
        _, _, obj = demo.render(Kf, truth.w2c, fw, fh)
        f = table[obj.reshape(-1) + 1] + rng.normal(size=(fh * fw, DIM)) * sigma / np.sqrt(DIM)
        store.write(i, (f / np.linalg.norm(f, axis=1, keepdims=True)).reshape(fh, fw, DIM))
    write_json(root / "vectors.json", {o.name: table[k + 1].tolist() for k, o in enumerate(demo.objects)})
    log.info("oracle features: %d views, grid %d x %d, d = %d, sigma %.2f", len(views), fh, fw, DIM, sigma)
    return scene


def lerf_top_k(scene: Scene, evaluate: Any, k: int) -> dict[str, Any]:
    """LERF-OVS of ``scene``'s trained memory with a top-``k`` memory attention engine (``evaluate``:
    the ``EvaluateConfig``)."""
    from pipeline.evaluate.evaluation import eval_views
    from pipeline.evaluate.lerf import evaluate_lerf, frame_views, read_labels
    from pipeline.query.encode import Encoder
    from pipeline.query.session import relevance_engine
    from pipeline.splat.trained import TrainedMemory

    memory = TrainedMemory.load(scene)
    config = evaluate.lerf
    views = eval_views(evaluate, load_views(scene), int(memory.config.get("max_side", 0)))
    encoder = Encoder.from_store(scene, MODEL, config, memory.device)
    engine = relevance_engine(memory, MODEL, attention_k=k)
    metrics, per, _ = evaluate_lerf(
        memory, frame_views(scene, views), read_labels(scene.path_of(config.labels)), MODEL, encoder.text,
        lambda qv: engine(qv).cpu(), config.filter_size, config.mask_threshold, config.min_opacity,
    )  # fmt: skip
    return {**metrics, "per": per}


def lerf_stored(scene: Scene, evaluate: Any) -> dict[str, Any]:
    """The 2D protocol on the *stored* oracle features of the labelled views (no memory): what the
    feature grid and the protocol's filters allow; ``misses``: the queries localised wrongly."""
    import torch

    from pipeline.evaluate.lerf import frame_views, iou, localization_hit, predicted_mask, read_labels
    from pipeline.query.colors import upsample
    from pipeline.query.encode import Encoder

    config = evaluate.lerf
    store = FeatureStore.open(scene.features_path(MODEL))
    index = {n: i for i, n in enumerate(store.names)}
    views = frame_views(scene, load_views(scene))
    encoder = Encoder.from_store(scene, MODEL, config)
    hits, ious, misses = [], [], []
    for frame in read_labels(scene.path_of(config.labels)):
        feats = torch.from_numpy(store.read(index[views[frame.name].name])[0].astype(np.float32))
        for label, ann in frame.labels.items():
            rel = upsample(encoder.text(label)(feats), frame.height, frame.width).numpy()
            hits.append(localization_hit(rel, ann.boxes, config.filter_size)[0])
            ious.append(iou(predicted_mask(rel, config.filter_size, config.mask_threshold), ann.mask))
            if not hits[-1]:
                misses.append(f"{frame.name}: {label}")
    return {"localization_accuracy": float(np.mean(hits)), "mIoU": float(np.mean(ious)), "misses": misses}


def load_config_evaluate(params: Path) -> Any:
    """``params``' ``evaluate`` section with the oracle vectors and cosine relevance."""
    from pipeline.evaluate.config import EvaluateConfig

    return load_config(EvaluateConfig, "evaluate", params, {"lerf": {"vectors": "vectors.json", "mode": "cosine"}})


def run_variant(scene: Scene, name: str, params: Path) -> dict[str, Any]:
    """Train (unless ``attention_k``: the default memory is reused) and evaluate one variant; its row."""
    from pipeline.evaluate.evaluation import evaluate_scene
    from pipeline.splat.config import TrainConfig
    from pipeline.splat.stage import train_scene

    evaluate = load_config_evaluate(params)
    if name == "attention_k":
        metrics = read_json(scene.eval_dir / "metrics.json")
        train = read_json(scene.model_dir / "stats.json")
        lerf = lerf_top_k(scene, evaluate, 16)
    else:
        shutil.rmtree(scene.model_dir, ignore_errors=True)
        shutil.rmtree(scene.eval_dir, ignore_errors=True)
        config = load_config(TrainConfig, "train", params, VARIANTS[name])
        train = train_scene(config, scene, [MODEL], progress=False)
        metrics, details = evaluate_scene(evaluate, scene)
        lerf = {**metrics["lerf_ovs"], "per": details["lerf_ovs"]}
    return {
        "variant": name,
        "localization_accuracy": lerf["localization_accuracy"],
        "mIoU": lerf["mIoU"],
        "3d_mIoU": lerf["3d"]["mIoU"],
        "psnr": metrics["psnr"],
        "train_cpu_s": train["cpu_seconds"],
        "train_s": train["seconds"],
        "gaussians": train["gaussians"],
        "queries": lerf["queries"],
        "misses": [f"{p['frame']}: {p['label']}" for p in lerf["per"] if not p["hit"]],
    }


def print_table(rows: list[dict[str, Any]], stored: dict[str, Any]) -> None:
    print("| variant | 2D loc. accuracy | 2D mIoU | 3D mIoU | PSNR | train CPU s | train s | Gaussians | goals met |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        met = all(r[k] >= v for k, v in GOALS.items())
        print(
            f"| {r['variant']} | {r['localization_accuracy']:.3f} | {r['mIoU']:.3f} | {r['3d_mIoU']:.3f} | "
            f"{r['psnr']:.2f} | {r['train_cpu_s']:.0f} | {r['train_s']:.0f} | {r['gaussians']} | "
            f"{'yes' if met else 'no'} |"
        )
    print(f"| stored features (no memory, 2D) | {stored['localization_accuracy']:.3f} | {stored['mIoU']:.3f} |")
    for r in [*rows, {"variant": "stored features", **stored}]:
        print(f"{r['variant']}: wrongly localised: {', '.join(r['misses']) or 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene", type=Path, required=True, help="a posed demo scene (e.g. data/demo)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--sigma", type=float, default=0.1, help="expected norm of each cell's noise")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    if "attention_k" in args.variants and "default" not in args.variants:
        ap.error("the attention_k variant reuses the default memory: add default to --variants")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from pipeline.bank.config import BankConfig
    from pipeline.bank.stage import bank_scene

    rows = []
    with tempfile.TemporaryDirectory(prefix="m3-oracle-") as tmp:
        scene = oracle_scene(args.scene, Path(tmp) / args.scene.name, args.sigma, args.seed)
        bank = bank_scene(load_config(BankConfig, f"bank.{MODEL}", args.params), scene, MODEL)
        log.info("bank: %d rows -> %d slots", bank["N"], bank["t"])
        stored = lerf_stored(scene, load_config_evaluate(args.params))
        order = [v for v in VARIANTS if v in args.variants]  # attention_k right after default
        for name in order:
            rows.append(run_variant(scene, name, args.params))
            log.info("%s", rows[-1])
    print_table(rows, stored)
    print("goals: 2D localisation accuracy 1.0, 2D mIoU >= 0.85, 3D mIoU >= 0.6")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "stored": stored}, indent=2))


if __name__ == "__main__":
    main()
