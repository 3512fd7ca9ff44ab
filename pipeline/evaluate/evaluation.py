"""Evaluate a trained memory on held-out views, and grounding against user masks.

:func:`evaluate_views` renders each view once and compares the RGB render with the view's image
(PSNR, SSIM, LPIPS when available) and, for every model, the features rendered through the
memory with the stored features of that view (cosine distance and L2, the paper's Table 1
protocol, :mod:`pipeline.evaluate.metrics`). Features are read one view at a time. As a reference point
the same errors are given for the constant mean-feature predictor (:func:`mean_features` of the
training views): a memory that has learnt the scene's features beats it by a wide margin.

Grounding samples come from ``data/<scene>/grounding.json``, a list of::

    {"view": "<image name of a registered view>", "text": "a yellow duck", "mask": "masks/duck_000.png"}

``mask`` is a PNG relative to the scene folder; non-zero pixels are the object (resized with
nearest neighbour to the view's size if needed). The predicted mask is the text's relevance map
(:mod:`pipeline.evaluate.query`) upsampled to the image, min-max normalised per view and thresholded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pipeline.core.errors import M3Error
from pipeline.core.images import load_image, to_float
from pipeline.core.scene import Scene, View
from pipeline.evaluate.metrics import (
    FeatureErrors,
    GroundingScores,
    LpipsUnavailable,
    load_lpips,
    lpips_metric,
    psnr,
    ssim,
)
from pipeline.evaluate.query import QueryVector, normalize_relevance, upsample

log = logging.getLogger(__name__)


@dataclass
class ViewResult:
    """Metrics of one view: ``psnr``, ``ssim``, ``lpips`` (or None) and per-model feature errors."""

    name: str
    psnr: float
    ssim: float
    lpips: float | None
    features: dict[str, dict[str, float | int]] = field(default_factory=dict)


def mean_features(store: Any, names: Sequence[str]) -> torch.Tensor:
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
    memory: Any,
    views: Sequence[View],
    stores: dict[str, Any],
    use_lpips: bool = True,
    on_render: Callable[[int, View, Any, torch.Tensor], None] | None = None,
    baselines: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, Any], list[ViewResult], list[str]]:
    """Render ``views`` through ``memory`` (a ``TrainedMemory``) and compare with ground truth.

    ``stores`` maps each model to its open ``FeatureStore``. ``on_render(i, view, render_out,
    gt_rgb [H, W, 3])`` is called per view (e.g. to save images). ``baselines`` maps models to a
    constant prediction ``[d]`` (e.g. :func:`mean_features`), scored as ``baseline_cosine`` and
    ``baseline_l2``. Returns the summary (means over views; feature errors are cell-weighted over
    all views), per-view results and notes (e.g. why LPIPS was omitted).
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
    for i, view in enumerate(tqdm(views, desc="evaluate", unit="view")):
        with torch.no_grad():
            out = memory.render(view)
        rgb = out.rgb.detach().float().cpu().clamp(0, 1)
        gt = torch.from_numpy(to_float(load_image(view.image_path, rgb.shape[1], rgb.shape[0])))
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


@dataclass
class GroundingSample:
    """One user-provided grounding sample: view name, text, mask path (absolute)."""

    view: str
    text: str
    mask: Path


def load_grounding(scene: Scene, file: str) -> list[GroundingSample]:
    """Samples of ``<scene>/<file>`` (see the module docstring); ``[]`` when the file is absent."""
    path = scene.root / file
    if not path.is_file():
        return []
    from pipeline.core.io import read_json

    data = read_json(path)
    if not isinstance(data, list):
        raise M3Error(f"{path}: expected a list of {{view, text, mask}} entries; fix the file")
    samples = []
    for k, entry in enumerate(data):
        if not isinstance(entry, dict) or not {"view", "text", "mask"} <= set(entry):
            raise M3Error(f"{path}: entry {k} needs keys view, text, mask; fix the file")
        mask = scene.root / entry["mask"]
        if not mask.is_file():
            raise M3Error(f"{path}: entry {k}: mask {mask} not found; fix the path (relative to {scene.root})")
        samples.append(GroundingSample(str(entry["view"]), str(entry["text"]), mask))
    return samples


def predicted_mask(memory: Any, view: View, model: str, qv: QueryVector, threshold: float) -> np.ndarray:
    """Boolean ``[H, W]`` mask: relevance of ``qv`` on ``view``, upsampled, normalised, ``>= threshold``."""
    with torch.no_grad():
        out = memory.render(view)
        rel = qv(out.features[model].detach().float().cpu())
    h, w = out.rgb.shape[:2]
    return (normalize_relevance(upsample(rel, h, w)) >= threshold).numpy()


def evaluate_grounding(
    memory: Any,
    views: dict[str, View],
    samples: Sequence[GroundingSample],
    model: str,
    encode: Callable[[str], QueryVector],
    threshold: float,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """mIoU, cIoU, precision@0.5/0.6 of the predicted masks against the samples' masks."""
    scores = GroundingScores()
    per: list[dict[str, Any]] = []
    cache: dict[str, QueryVector] = {}
    for s in tqdm(samples, desc="grounding", unit="sample"):
        if s.view not in views:
            raise M3Error(f"grounding: view '{s.view}' is not a registered view; use an image name from colmap/images")
        view = views[s.view]
        if s.text not in cache:
            cache[s.text] = encode(s.text)
        qv = cache[s.text]
        pred = predicted_mask(memory, view, model, qv, threshold)
        gt_img = Image.open(s.mask).convert("L")
        if gt_img.size != (pred.shape[1], pred.shape[0]):
            gt_img = gt_img.resize((pred.shape[1], pred.shape[0]), Image.NEAREST)
        iou = scores.add(pred, np.asarray(gt_img) > 0)
        per.append({"view": s.view, "text": s.text, "iou": iou})
    return scores.result(), per
