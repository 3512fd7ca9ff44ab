"""Referring-segmentation metrics of a trained memory against user masks (``evaluate.grounding``).

Grounding samples come from ``data/<scene>/grounding.json``, a list of::

    {"view": "<image name of a registered view>", "text": "a yellow duck", "mask": "masks/duck_000.png"}

``mask`` is a PNG relative to the scene folder; non-zero pixels are the object (resized with
nearest neighbour to the view's size if needed). The predicted mask is the text's relevance map
(:mod:`pipeline.query.encode`) upsampled to the image, min-max normalised per view and thresholded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.core.errors import M3Error
from pipeline.core.io import read_json
from pipeline.core.progress import progress
from pipeline.core.scene import Scene, View, views_named
from pipeline.evaluate.config import GroundingConfig
from pipeline.evaluate.metrics import GroundingScores
from pipeline.query.colors import normalize_relevance, upsample
from pipeline.query.encode import Encoder, QueryVector, pick_model
from pipeline.splat.trained import TrainedMemory


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


def predicted_mask(memory: TrainedMemory, view: View, model: str, qv: QueryVector, threshold: float) -> np.ndarray:
    """Boolean ``[H, W]`` mask: relevance of ``qv`` on ``view``, upsampled, normalised, ``>= threshold``."""
    with torch.no_grad():
        out = memory.render(view, [model])
        rel = qv(out.features[model].detach().float().cpu())
    h, w = out.rgb.shape[:2]
    return (normalize_relevance(upsample(rel, h, w)) >= threshold).numpy()


def evaluate_grounding(
    memory: TrainedMemory,
    views: list[View],
    samples: Sequence[GroundingSample],
    model: str,
    encode: Callable[[str], QueryVector],
    threshold: float,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """mIoU, cIoU, precision@0.5/0.6 of the predicted masks against the samples' masks."""
    scores = GroundingScores()
    per: list[dict[str, Any]] = []
    cache: dict[str, QueryVector] = {}
    for s in progress(samples, desc="grounding", unit="sample"):
        view = views_named(views, [s.view], "grounding.json")[0]
        if s.text not in cache:
            cache[s.text] = encode(s.text)
        qv = cache[s.text]
        pred = predicted_mask(memory, view, model, qv, threshold)
        gt_img = Image.open(s.mask).convert("L")
        if gt_img.size != (pred.shape[1], pred.shape[0]):
            gt_img = gt_img.resize((pred.shape[1], pred.shape[0]), Image.Resampling.NEAREST)
        iou = scores.add(pred, np.asarray(gt_img) > 0)
        per.append({"view": s.view, "text": s.text, "iou": iou})
    return scores.result(), per


def grounding_on_scene(
    config: GroundingConfig, scene: Scene, memory: TrainedMemory, views: list[View]
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """Grounding metrics and per-sample IoUs of ``scene``'s samples (None without a grounding file);
    texts are encoded once each by the model's text tower (or ``config.vectors``)."""
    samples = load_grounding(scene, config.file)
    if not samples:
        return None
    model = pick_model(memory.models, config.model, "evaluate.grounding")
    encoder = Encoder.from_store(scene, model, config, memory.device)
    return evaluate_grounding(memory, views, samples, model, encoder.text, config.threshold)
