"""Stage ``evaluate``: metrics of a trained memory on held-out views (+ grounding, LERF-OVS when given).

Reads ``params.yaml: evaluate``. Every ``test_every``-th registered view (0, 8, 16, ... — keep it
equal to the views the train stage held out) is rendered once, at the image size the memory was
trained at (the schedule's ``max_side``, recorded in the model) unless ``max_side`` names another; outputs::

    data/<scene>/eval/metrics.json     DVC metrics: test_views, psnr, ssim (lpips when available),
                                       features.<model>.{cosine, l2, cells} (Table 1 protocol) and
                                       {baseline_cosine, baseline_l2} (the constant mean feature of
                                       the training views, for reference), gaussians, model_size_mb,
                                       banks.<model>.{slots, size_mb}, grounding.{mIoU, cIoU,
                                       precision@0.5, precision@0.6, samples} when
                                       data/<scene>/grounding.json exists, lerf_ovs.{
                                       localization_accuracy, mIoU, queries, frames, 3d.{mIoU,
                                       precision, recall, labels}} when the evaluate.lerf.labels
                                       folder exists, seconds
    data/<scene>/eval/per_view.json    method, image_size, notes (e.g. why LPIPS is missing),
                                       per-view metrics, grounding IoUs, LERF-OVS per query
    data/<scene>/eval/provenance.json  config, inputs (the model files) and code hashes
    data/<scene>/eval/renders/         <view>.png: render | ground truth, for the first n_renders views

Compare memory and distillation on the same scene with ``dvc exp run -S train.method=distill``
and ``dvc metrics diff`` / ``dvc exp show`` (see the README).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.bank.store import load_bank
from pipeline.core.code import code_hash
from pipeline.core.errors import M3Error
from pipeline.core.io import atomic_dir, hash_files, provenance, write_json
from pipeline.core.runtime import resolve_device
from pipeline.core.scene import Scene, load_views, resampled_views, split_views
from pipeline.evaluate.config import EvaluateConfig, LerfConfig
from pipeline.evaluate.evaluation import evaluate_grounding, evaluate_views, load_grounding, mean_features
from pipeline.evaluate.lerf import evaluate_lerf, frame_views, read_labels
from pipeline.evaluate.query import Encoder, build_query, load_vectors, pick_model
from pipeline.evaluate.session import relevance_engine, scene_path
from pipeline.features.store import FeatureStore
from pipeline.splat.trained import HEADS_FILE, TrainedMemory
from stages.command import PARAMS, SCENE, Options, command, resolve_scene

log = logging.getLogger(__name__)
MODEL_FILES = ("point_cloud.ply", HEADS_FILE)  # what a trained memory needs at query time


def _size_mb(paths: list[Path]) -> float:
    total = 0
    for p in paths:
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            total += p.stat().st_size
    return round(total / 2**20, 4)


def _sizes(scene: Scene, memory: TrainedMemory) -> dict[str, Any]:
    banks = {}
    for m in memory.models:
        bank, _ = load_bank(scene.bank_path(m))
        banks[m] = {"slots": int(bank.shape[0]), "size_mb": _size_mb([scene.bank_path(m)])}
    return {
        "gaussians": int(len(memory.means)),
        "model_size_mb": _size_mb([scene.model_dir / f for f in MODEL_FILES]),
        "banks": banks,
    }


def _save_render(renders: Path, n: int):
    def save(i: int, view: Any, out: Any, gt: torch.Tensor) -> None:
        if i < n:
            rgb = out.rgb.detach().float().cpu().clamp(0, 1)
            both = torch.cat([rgb, gt], dim=1).numpy()
            Image.fromarray((both * 255 + 0.5).astype(np.uint8)).save(renders / f"{Path(view.name).stem}.png")

    return save


def run(config: EvaluateConfig, scene: Scene) -> dict[str, Any]:
    """Evaluate ``scene``'s trained memory; writes ``eval/``; returns the metrics plus method,
    image_size and notes."""
    start = time.perf_counter()
    device = resolve_device(config.device, "evaluate")
    memory = TrainedMemory.load(scene, device=device)
    side = int(memory.config.get("max_side", 0)) if config.max_side is None else config.max_side
    views = resampled_views(load_views(scene), side)
    train, test = split_views(views, config.test_every)
    if not test:
        raise M3Error(f"evaluate.test_every={config.test_every}: no held-out views; set it to a positive number")
    held_out = set(memory.config.get("test_views", []))
    seen = [v.name for v in test if v.name not in held_out]
    stores = {m: FeatureStore.open(scene.features_path(m)) for m in memory.models}
    model_files = [scene.model_dir / f for f in (*MODEL_FILES, "config.json") if (scene.model_dir / f).is_file()]
    prov = provenance("evaluate", config, hash_files(model_files), code_hash(__name__))
    scene.eval_dir.mkdir(parents=True, exist_ok=True)
    with atomic_dir(scene.eval_dir / "renders") as renders:
        baselines = {m: mean_features(fs, [v.name for v in train]) for m, fs in stores.items()}
        summary, per_view, notes = evaluate_views(
            memory, test, stores, config.lpips, _save_render(renders, config.n_renders), baselines
        )
    metrics: dict[str, Any] = {"test_views": len(test), **summary, **_sizes(scene, memory)}
    details: dict[str, Any] = {
        "method": memory.method,
        "image_size": [test[0].width, test[0].height],
        "notes": notes,
        "views": [vars(r) for r in per_view],
    }
    if seen:
        notes.append(
            f"{len(seen)} of {len(test)} evaluated views were training views; "
            "set evaluate.test_every equal to train.test_every"
        )
    g = config.grounding
    samples = load_grounding(scene, g.file)
    if samples:
        model = pick_model(memory.models, g.model)
        attrs = stores[model].attrs

        def encode(text: str):
            return build_query(model, attrs, text, None, g.mode, g.negatives, g.scale, device)

        metrics["grounding"], details["grounding"] = evaluate_grounding(
            memory, {v.name: v for v in views}, samples, model, encode, g.threshold
        )
    else:
        notes.append(f"grounding skipped: no {scene.root / g.file}")
    labels = scene_path(scene, config.lerf.labels)
    if labels.is_dir():
        metrics["lerf_ovs"], details["lerf_ovs"] = _lerf(config.lerf, scene, memory, views, stores, labels, notes)
    else:
        notes.append(f"lerf-ovs skipped: no label folder {labels}")
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    write_json(scene.eval_dir / "per_view.json", details)
    write_json(scene.eval_dir / "provenance.json", prov)
    write_json(scene.eval_dir / "metrics.json", metrics)
    feats = ", ".join(
        f"{m} cos {v['cosine']:.4f} (mean feature {v['baseline_cosine']:.4f}) / L2 {v['l2']:.4f}"
        for m, v in summary["features"].items()
    )
    log.info(
        "%s (%s): %d held-out views, PSNR %.2f dB, SSIM %.4f, %s; %d Gaussians, %.2f MB",
        scene.name,
        memory.method,
        len(test),
        summary["psnr"],
        summary["ssim"],
        feats,
        metrics["gaussians"],
        metrics["model_size_mb"],
    )
    return {**metrics, **{k: details[k] for k in ("method", "image_size", "notes")}}


def _lerf(
    c: LerfConfig,
    scene: Scene,
    memory: TrainedMemory,
    views: list[Any],
    stores: dict[str, FeatureStore],
    labels: Path,
    notes: list[str],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The LERF-OVS protocol on the annotations in ``labels`` (:mod:`pipeline.evaluate.lerf`)."""
    model = pick_model(memory.models, c.model)
    vectors = load_vectors(scene_path(scene, c.vectors)) if c.vectors else None
    encoder = Encoder(model, stores[model].attrs, c.mode, c.negatives, c.scale, vectors, memory.device)
    engine = relevance_engine(memory, model)
    metrics, per, lerf_notes = evaluate_lerf(
        memory,
        frame_views(scene, views),
        read_labels(labels),
        model,
        encoder.text,
        lambda qv: engine(qv).cpu(),
        c.filter_size,
        c.mask_threshold,
        c.min_opacity,
    )
    notes.extend(lerf_notes)
    log.info(
        "lerf-ovs (%s, %d queries): localisation accuracy %.4f, mIoU %.4f; 3D mIoU %.4f",
        model,
        metrics["queries"],
        metrics["localization_accuracy"],
        metrics["mIoU"],
        metrics["3d"]["mIoU"],
    )
    return metrics, per


@command(EvaluateConfig)
def cli(options: Options[EvaluateConfig], scene: str = SCENE, params: Path = PARAMS) -> None:
    """Evaluate the trained memory on held-out views: PSNR, SSIM, feature cosine/L2 per model, sizes.

    Writes data/<scene>/eval/metrics.json (DVC metrics), per_view.json and renders/; adds grounding
    mIoU/cIoU/precision when data/<scene>/grounding.json exists.
    """
    run(options.load("evaluate", params), resolve_scene(scene))
