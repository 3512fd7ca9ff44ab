"""Evaluate a trained memory on held-out views: the ``evaluate`` stage's work.

:func:`evaluate_views` renders each view once and compares the RGB render with the view's image
(PSNR, SSIM, LPIPS when available) and, for every model, the features rendered through the
memory with the stored features of that view (cosine distance and L2, the paper's Table 1
protocol, :mod:`pipeline.evaluate.metrics`). Features are read one view at a time. As a reference point
the same errors are given for the constant mean-feature predictor (:func:`mean_features` of the
training views): a memory that has learnt the scene's features beats it by a wide margin.

:func:`evaluate_scene` is the whole stage: the held-out views, sizes, grounding
(:mod:`pipeline.evaluate.grounding`) and LERF-OVS (:mod:`pipeline.evaluate.lerf`) when their
annotations exist, and the outputs in ``data/<scene>/eval/``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.bank.store import load_bank
from pipeline.core.code import code_hash
from pipeline.core.errors import M3Error
from pipeline.core.images import WHITE, composite, load_pixels, to_float
from pipeline.core.io import atomic_dir, hash_files, provenance, write_json
from pipeline.core.progress import progress
from pipeline.core.runtime import resolve_device
from pipeline.core.scene import Scene, View, load_split, load_views, resampled_views, split_views
from pipeline.core.threads import CpuThreads
from pipeline.evaluate.config import EvaluateConfig
from pipeline.evaluate.grounding import grounding_on_scene
from pipeline.evaluate.lerf import lerf_on_scene
from pipeline.evaluate.metrics import FeatureErrors, LpipsUnavailable, load_lpips, lpips_metric, psnr, ssim
from pipeline.features.store import FeatureStore
from pipeline.splat.trained import HEADS_FILE, RenderOut, TrainedMemory

log = logging.getLogger(__name__)
MODEL_FILES = ("point_cloud.ply", HEADS_FILE)  # what a trained memory needs at query time


@dataclass
class ViewResult:
    """Metrics of one view: ``psnr``, ``ssim``, ``lpips`` (or None) and per-model feature errors."""

    name: str
    psnr: float
    ssim: float
    lpips: float | None
    features: dict[str, dict[str, float | int]] = field(default_factory=dict)


def mean_features(store: FeatureStore, names: Sequence[str]) -> torch.Tensor:
    """Mean stored feature ``[d]`` (float64) over the valid cells of the views ``names``, one view at a time."""
    index = {n: i for i, n in enumerate(store.names)}
    total, count = torch.zeros(store.shape[2], dtype=torch.float64), 0
    for name in names:
        if name not in index:
            raise M3Error(f"features: no entry for view {name}; rerun the features stage for this scene")
        feats, valid = store.read(index[name])
        rows = torch.from_numpy(feats.reshape(-1, feats.shape[-1])[valid.reshape(-1)].astype(np.float64))
        total += rows.sum(0)
        count += len(rows)
    if not count:
        raise M3Error("mean_features: the training views have no valid feature cells; check the features stage")
    return total / count


def evaluate_views(
    memory: TrainedMemory,
    views: Sequence[View],
    stores: dict[str, FeatureStore],
    use_lpips: bool = True,
    on_render: Callable[[int, View, RenderOut, torch.Tensor], None] | None = None,
    baselines: dict[str, torch.Tensor] | None = None,
    background: tuple[float, ...] = WHITE,
) -> tuple[dict[str, Any], list[ViewResult], list[str]]:
    """Render ``views`` through ``memory`` (a ``TrainedMemory``) and compare with ground truth.

    ``stores`` maps each model to its open ``FeatureStore``. ``on_render(i, view, render_out,
    gt_rgb [H, W, 3])`` is called per view (e.g. to save images). ``baselines`` maps models to a
    constant prediction ``[d]`` (e.g. :func:`mean_features`), scored as ``baseline_cosine`` and
    ``baseline_l2``. A view whose image has alpha (an RGBA input) is compared over ``background``
    (RGB in [0, 1]): the image composited, the render as ``rgb + (1 - alpha) bg``. Returns the
    summary (means over views; feature errors are cell-weighted over all views), per-view results
    and notes (e.g. why LPIPS was omitted).
    """
    baselines = baselines or {}
    notes: list[str] = []
    lp = None
    if use_lpips:
        try:
            lp = load_lpips()
        except LpipsUnavailable as exc:
            notes.append(str(exc))
    else:
        notes.append("LPIPS omitted: disabled by evaluate.lpips")
    index = {m: {n: i for i, n in enumerate(fs.names)} for m, fs in stores.items()}
    totals = {m: FeatureErrors() for m in stores}
    base_totals = {m: FeatureErrors() for m in baselines}
    results: list[ViewResult] = []
    for i, view in enumerate(progress(views, desc="evaluate", unit="view")):
        with torch.no_grad():
            out = memory.render(view)
        rgb = out.rgb.detach().float().cpu().clamp(0, 1)
        gt = torch.from_numpy(to_float(load_pixels(view.image_path, rgb.shape[1], rgb.shape[0])))
        if gt.shape[-1] == 4:
            bg = torch.tensor(background, dtype=torch.float32)
            gt, rgb = composite(gt, bg), rgb + (1 - out.alpha.detach().float().cpu()[..., None]) * bg
            out = dataclasses.replace(out, rgb=rgb)
        res = ViewResult(view.name, psnr(rgb, gt), ssim(rgb, gt), lpips_metric(lp, rgb, gt) if lp else None)
        for model, fs in stores.items():
            if view.name not in index[model]:
                raise M3Error(
                    f"{model} features: no entry for view {view.name}; rerun the features stage for this scene"
                )
            feats, valid = fs.read(index[model][view.name])
            pred = out.features[model].detach().float().cpu()
            if tuple(pred.shape) != tuple(feats.shape):
                raise M3Error(
                    f"{model}: rendered features {tuple(pred.shape)} differ from stored {tuple(feats.shape)}; "
                    "retrain the model on the current features"
                )
            per = FeatureErrors()
            target, mask = torch.from_numpy(feats.astype(np.float32)), torch.from_numpy(valid)
            per.add(pred, target, mask)
            totals[model].add(pred, target, mask)
            if model in baselines:
                const = baselines[model].to(target.dtype).expand_as(target)
                base_totals[model].add(const, target, mask)
            res.features[model] = per.result()
        results.append(res)
        if on_render is not None:
            on_render(i, view, out, gt)
    features = {m: acc.result() for m, acc in totals.items()}
    for m, acc in base_totals.items():
        base = acc.result()
        features[m].update(baseline_cosine=base["cosine"], baseline_l2=base["l2"])
    summary: dict[str, Any] = {
        "psnr": float(np.mean([r.psnr for r in results])),
        "ssim": float(np.mean([r.ssim for r in results])),
        "features": features,
    }
    if lp is not None:
        summary["lpips"] = float(np.mean([r.lpips for r in results]))
    return summary, results, notes


def _size_mb(paths: list[Path]) -> float:
    total = sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
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


def _save_render(renders: Path, n: int) -> Callable[[int, View, RenderOut, torch.Tensor], None]:
    def save(i: int, view: View, out: RenderOut, gt: torch.Tensor) -> None:
        if i < n:
            rgb = out.rgb.detach().float().cpu().clamp(0, 1)
            both = torch.cat([rgb, gt], dim=1).numpy()
            Image.fromarray((both * 255 + 0.5).astype(np.uint8)).save(renders / f"{Path(view.name).stem}.png")

    return save


def eval_views(config: EvaluateConfig, views: list[View], trained_side: int) -> list[View]:
    """``views`` at the evaluation size: ``size`` [width, height] when set, else the longer side
    ``max_side`` (null: ``trained_side``, the training size; 0: full size); intrinsics scaled."""
    if config.size is None:
        return resampled_views(views, trained_side if config.max_side is None else config.max_side)
    if len(config.size) != 2:
        raise M3Error(f"params.yaml: evaluate.size is {config.size}; give [width, height] (or null)")
    w, h = config.size
    return [
        dataclasses.replace(v, K=v.K * np.array([[w / v.width], [h / v.height], [1.0]]), width=w, height=h)
        for v in views
    ]


def trained_background(config: dict[str, Any]) -> tuple[float, ...]:
    """The fixed colour a memory was trained over (its ``train.background``; random: white) for views
    with alpha, from its ``config.json``."""
    train = ((config.get("provenance") or {}).get("config") or {}).get("train") or {}
    return (0.0, 0.0, 0.0) if train.get("background") == "black" else WHITE


def evaluate_scene(config: EvaluateConfig, scene: Scene) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``evaluate`` stage on ``scene``'s trained memory: writes ``eval/`` (metrics.json,
    per_view.json, provenance.json, renders/); returns the metrics and the details (method, image
    size, notes, per-view figures). Held out: the poses stage's dataset split when it
    wrote one, else every ``test_every``-th view."""
    start = time.perf_counter()
    device = resolve_device(config.device, "evaluate")
    if device == "cpu":
        CpuThreads(config.threads).update()
    memory = TrainedMemory.load(scene, device=device)
    views = eval_views(config, load_views(scene), int(memory.config.get("max_side", 0)))
    held_out = load_split(scene)
    train, test = split_views(views, config.test_every, held_out)
    if not test:
        if held_out is not None:
            raise M3Error(f"{scene.split_path}: no held-out views; rerun `m3 poses {scene.name}` with a split")
        raise M3Error(f"evaluate.test_every={config.test_every}: no held-out views; set it to a positive number")
    stores = {m: FeatureStore.open(scene.features_path(m)) for m in memory.models}
    model_files = [scene.model_dir / f for f in (*MODEL_FILES, "config.json") if (scene.model_dir / f).is_file()]
    prov = provenance("evaluate", config, hash_files(model_files), code_hash(__name__))
    scene.eval_dir.mkdir(parents=True, exist_ok=True)
    with atomic_dir(scene.eval_dir / "renders") as renders:
        baselines = {m: mean_features(fs, [v.name for v in train]) for m, fs in stores.items()}
        save = _save_render(renders, config.n_renders)
        bg = trained_background(memory.config)
        summary, per_view, notes = evaluate_views(memory, test, stores, config.lpips, save, baselines, bg)
    metrics: dict[str, Any] = {"test_views": len(test), **summary, **_sizes(scene, memory)}
    details: dict[str, Any] = {
        "method": memory.method,
        "image_size": [test[0].width, test[0].height],
        "notes": notes,
        "views": [vars(r) for r in per_view],
    }
    kept_out = set(memory.config.get("test_views", []))  # the views training held out
    seen = [v.name for v in test if v.name not in kept_out]
    if seen:
        notes.append(
            f"{len(seen)} of {len(test)} evaluated views were training views; "
            "set evaluate.test_every equal to train.test_every (or retrain after the poses stage's split)"
        )
    grounded = grounding_on_scene(config.grounding, scene, memory, views)
    if grounded is None:
        notes.append(f"grounding skipped: no {scene.root / config.grounding.file}")
    else:
        metrics["grounding"], details["grounding"] = grounded
    lerf = lerf_on_scene(config.lerf, scene, memory, views)
    if lerf is None:
        notes.append(f"lerf-ovs skipped: no label folder {scene.path_of(config.lerf.labels)}")
    else:
        metrics["lerf_ovs"], details["lerf_ovs"], lerf_notes = lerf
        notes.extend(lerf_notes)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    write_json(scene.eval_dir / "per_view.json", details)
    write_json(scene.eval_dir / "provenance.json", prov)
    write_json(scene.eval_dir / "metrics.json", metrics)
    return metrics, details
