"""The LERF-OVS protocol (as LangSplat's public evaluation script computes it) plus a 3D version.

Annotations: one JSON file per annotated frame in a folder (LERF-OVS ``label/<scene>/``), in
LangSplat's layout ``{"info": {"name": "frame_00041.jpg", "height": h, "width": w}, "objects":
[{"category": "green apple", "bbox": [x1, y1, x2, y2], "segmentation": [[x, y], ...]}]}`` or
labelme's ``{"imagePath", "imageHeight", "imageWidth", "shapes": [{"label", "points",
"shape_type": "polygon"}]}`` (box: the polygon's extent). A label that occurs several times in a
frame is one query whose mask is the union of its polygons and whose boxes are all of them.

Per (frame, label) query, on the relevance map of the rendered view resized to the label image
(canonical relevance is LangSplat's ``get_max_across``: min over the negatives of the softmax):

* localisation: the map mean-filtered (``filter_size`` square box, OpenCV ``filter2D``); a hit
  when any pixel holding its maximum lies inside any box of the label (bounds inclusive);
  accuracy = hits / queries;
* IoU: ``v = (map + filtered) / 2``; ``v - min(v)`` divided by its max (+1e-9), mapped to
  ``[-1, 1]`` and clipped to ``[0, 1]``; pixels ``> mask_threshold`` (0.4) form the mask, then a
  7 x 7 majority vote (LangSplat's ``smooth``, including its window, which stops one pixel short
  of the last row and column, and ties going to background); IoU with the polygon mask;
  mIoU = mean over queries.

3D (Gaussians, where masks exist): a Gaussian is *seen* by a label's frame when its centre
projects into the image in front of the camera and no deeper than the rendered depth there
(+5%); it belongs to the label's object when it falls inside the mask in most of the label's
frames that see it. The predicted object is the Gaussians (opacity >= ``min_opacity``) whose
relevance passes the same rule as the 2D masks (min-max normalised over those Gaussians, mapped
to ``[-1, 1]``, clipped, ``> mask_threshold``). Only Gaussians seen by the label's frames are
judged; IoU, precision and recall per label, averaged over labels.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from pipeline.core.errors import M3Error
from pipeline.core.io import read_json
from pipeline.core.progress import progress
from pipeline.core.scene import Scene, View
from pipeline.evaluate.config import LerfConfig
from pipeline.query.colors import upsample
from pipeline.query.encode import Encoder, QueryVector, pick_model
from pipeline.query.session import relevance_engine
from pipeline.splat.trained import TrainedMemory

log = logging.getLogger(__name__)
DEPTH_TOLERANCE = 0.05  # a Gaussian centre up to 5% behind the rendered surface still counts as seen


@dataclass
class LabelQuery:
    """One label of a frame: ``mask [h, w]`` (uint8, union of its polygons), ``boxes [m, 4]`` x1 y1 x2 y2."""

    mask: np.ndarray
    boxes: np.ndarray


@dataclass
class FrameLabels:
    """The annotations of one frame: image ``name``, size and its labels."""

    name: str
    height: int
    width: int
    labels: dict[str, LabelQuery] = field(default_factory=dict)

    def add(self, label: str, polygon: Sequence[Sequence[float]], box: Sequence[float] | None = None) -> None:
        """Add one polygon (pixel ``[[x, y], ...]``) of ``label``, its mask filled as LangSplat does."""
        pts = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        mask = np.zeros((self.height, self.width), np.uint8)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
        b = np.asarray(box if box is not None else [*pts.min(0), *pts.max(0)], np.float64).reshape(1, 4)
        if label in self.labels:
            old = self.labels[label]
            old.mask[mask != 0] = 1
            old.boxes = np.concatenate([old.boxes, b])
        else:
            self.labels[label] = LabelQuery(mask, b)


def _parse(path: Path, data: Any) -> FrameLabels:
    if isinstance(data, dict) and "info" in data and "objects" in data:
        info = data["info"]
        frame = FrameLabels(str(info["name"]), int(info["height"]), int(info["width"]))
        for obj in data["objects"]:
            frame.add(str(obj["category"]), obj["segmentation"], obj["bbox"])
        return frame
    if isinstance(data, dict) and "shapes" in data:
        frame = FrameLabels(Path(str(data["imagePath"])).name, int(data["imageHeight"]), int(data["imageWidth"]))
        for shape in data["shapes"]:
            if shape.get("shape_type", "polygon") == "polygon":
                frame.add(str(shape["label"]), shape["points"])
        return frame
    raise KeyError("info/objects (LangSplat) or shapes (labelme)")


def read_labels(folder: Path) -> list[FrameLabels]:
    """Every ``*.json`` annotation of ``folder``, sorted by file name (see the module docstring)."""
    paths = sorted(Path(folder).glob("*.json"))
    if not paths:
        raise M3Error(f"{folder}: no *.json annotations; point evaluate.lerf.labels at a LERF-OVS label folder")
    frames = []
    for path in paths:
        try:
            frames.append(_parse(path, json.loads(path.read_text())))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise M3Error(f"{path}: not a LERF-OVS/labelme annotation (missing or bad {exc}); fix the file") from None
    return frames


def frame_views(scene: Scene, views: Sequence[View]) -> dict[str, View]:
    """Registered views by image name, and by the input image each came from (``frames.json``: the
    frames stage renames images to ``00000.png ...``), so annotations of the original images match."""
    by_name = {v.name: v for v in views}
    meta = scene.frames_dir / "frames.json"
    if meta.is_file():
        for frame in read_json(meta).get("frames", []):
            if frame.get("source") and frame.get("name") in by_name:
                by_name.setdefault(Path(str(frame["source"])).name, by_name[frame["name"]])
    return by_name


def mean_filter(rel: np.ndarray, size: int) -> np.ndarray:
    """LangSplat's smoothing: ``filter2D`` with a ``size x size`` box of ``1 / size^2``."""
    return cv2.filter2D(rel.astype(np.float32), -1, np.ones((size, size)) / size**2)


def majority_smooth(mask: np.ndarray, radius: int = 3) -> np.ndarray:
    """LangSplat's ``smooth``: each pixel takes the majority value (ties: 0) of the window of rows
    ``[i - r, min(i + r + 1, h - 1))`` and columns likewise (its window stops before the last row
    and column)."""
    h, w = mask.shape
    ones = np.zeros((h + 1, w + 1), np.int64)
    ones[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.int64), 0), 1)
    r0 = np.maximum(np.arange(h) - radius, 0)
    r1 = np.minimum(np.arange(h) + radius + 1, h - 1)
    c0 = np.maximum(np.arange(w) - radius, 0)
    c1 = np.minimum(np.arange(w) + radius + 1, w - 1)
    total = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    count = ones[r1][:, c1] - ones[r0][:, c1] - ones[r1][:, c0] + ones[r0][:, c0]
    return (2 * count > total).astype(np.uint8)


def localization_hit(rel: np.ndarray, boxes: np.ndarray, filter_size: int) -> tuple[bool, np.ndarray]:
    """Whether a maximum of the mean-filtered ``rel [h, w]`` lies in any of ``boxes [m, 4]``; returns
    that and the maxima ``[k, 2]`` (x, y)."""
    filtered = mean_filter(rel, filter_size)
    ys, xs = np.nonzero(filtered == filtered.max())
    pts = np.stack([xs, ys], 1)
    for x1, y1, x2, y2 in boxes.reshape(-1, 4):
        lo, hi = np.minimum([x1, y1], [x2, y2]), np.maximum([x1, y1], [x2, y2])
        if np.any(np.all((pts >= lo) & (pts <= hi), axis=1)):
            return True, pts
    return False, pts


def predicted_mask(rel: np.ndarray, filter_size: int, threshold: float) -> np.ndarray:
    """LangSplat's mask of ``rel [h, w]``: averaged with its mean filter, normalised, ``> threshold``, smoothed."""
    v = 0.5 * (mean_filter(rel, filter_size) + rel.astype(np.float32))
    v = v - v.min()
    v = np.clip(v / (v.max() + 1e-9) * 2.0 - 1.0, 0.0, 1.0)
    return majority_smooth((v > threshold).astype(np.uint8))


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two masks (0 when both are empty)."""
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 0.0


def selected_gaussians(relevance: np.ndarray, candidates: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean ``[N]``: the 2D mask rule on Gaussians (min-max over ``candidates [N]``, mapped to
    ``[-1, 1]``, clipped, ``> threshold``)."""
    r = relevance[candidates]
    v = np.clip((relevance - r.min()) / (r.max() - r.min() + 1e-9) * 2.0 - 1.0, 0.0, 1.0)
    return candidates & (v > threshold)


def seen_pixels(
    memory: TrainedMemory, view: View, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussians whose centre ``view`` sees at size ``(height, width)``: ids ``[m]``, rows, columns."""
    depth = memory.render_depth(view, width, height).cpu().numpy()
    means = memory.means.detach().double().cpu().numpy()
    w2c, K = np.asarray(view.w2c, np.float64), np.asarray(view.K, np.float64)
    cam = means @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    front = z > 1e-6
    u = (K[0, 0] * cam[:, 0] / np.where(front, z, 1) + K[0, 2]) * width / view.width
    v = (K[1, 1] * cam[:, 1] / np.where(front, z, 1) + K[1, 2]) * height / view.height
    col, row = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    inside = front & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    ids = np.flatnonzero(inside)
    keep = z[ids] <= depth[row[ids], col[ids]] * (1 + DEPTH_TOLERANCE)
    ids = ids[keep]
    return ids, row[ids], col[ids]


def evaluate_lerf(
    memory: TrainedMemory,
    views: dict[str, View],
    frames: Sequence[FrameLabels],
    model: str,
    encode: Callable[[str], QueryVector],
    gaussian_relevance: Callable[[QueryVector], torch.Tensor],
    filter_size: int = 30,
    mask_threshold: float = 0.4,
    min_opacity: float = 0.1,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """The 2D and 3D protocol over ``frames`` (see the module docstring).

    ``views`` maps image names to registered views (:func:`frame_views`; a frame matches by name,
    else by stem),
    ``encode`` turns a label into a query, ``gaussian_relevance`` a query into ``[N]`` relevance.
    Returns the metrics, one record per query and notes (frames that are not registered views).
    """
    by_stem = {Path(n).stem: v for n, v in views.items()}
    opacity = memory.opacities.detach().cpu().numpy()
    candidates = opacity >= min_opacity
    queries: dict[str, QueryVector] = {}
    seen: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(opacity), np.int32))
    inside: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(opacity), np.int32))
    per, notes = [], []
    for frame in progress(frames, desc="lerf-ovs", unit="frame"):
        view = views.get(frame.name) or by_stem.get(Path(frame.name).stem)
        if view is None:
            notes.append(f"lerf-ovs: frame {frame.name} is not a registered view; its queries are skipped")
            continue
        with torch.no_grad():
            feats = memory.render(view).features[model].detach().float().cpu()
        ids, rows, cols = seen_pixels(memory, view, frame.height, frame.width)
        for label, ann in frame.labels.items():
            if label not in queries:
                queries[label] = encode(label)
            rel = upsample(queries[label](feats), frame.height, frame.width).numpy()
            hit, _ = localization_hit(rel, ann.boxes, filter_size)
            score = iou(predicted_mask(rel, filter_size, mask_threshold), ann.mask)
            per.append({"frame": frame.name, "label": label, "iou": score, "hit": hit})
            seen[label][ids] += 1
            inside[label][ids] += ann.mask[rows, cols].astype(np.int32)
    if not per:
        raise M3Error("lerf-ovs: no annotated frame is a registered view; check the label folder and the scene")
    ious3d, prec3d, rec3d = [], [], []
    for label, qv in queries.items():
        judged = candidates & (seen[label] > 0)
        gt = judged & (2 * inside[label] > seen[label])
        pred = selected_gaussians(gaussian_relevance(qv).numpy(), candidates, mask_threshold) & judged
        both = (pred & gt).sum()
        ious3d.append(iou(pred, gt))
        prec3d.append(float(both / pred.sum()) if pred.any() else 0.0)
        rec3d.append(float(both / gt.sum()) if gt.any() else 0.0)
    metrics = {
        "localization_accuracy": float(np.mean([p["hit"] for p in per])),
        "mIoU": float(np.mean([p["iou"] for p in per])),
        "queries": len(per),
        "frames": len({p["frame"] for p in per}),
        "3d": {
            "mIoU": float(np.mean(ious3d)),
            "precision": float(np.mean(prec3d)),
            "recall": float(np.mean(rec3d)),
            "labels": len(queries),
        },
    }
    return metrics, per, notes


def lerf_on_scene(
    config: LerfConfig, scene: Scene, memory: TrainedMemory, views: Sequence[View]
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]] | None:
    """The protocol on the annotations in ``config.labels`` (relative to the scene folder, or
    absolute); None when that folder does not exist. Labels are encoded once each."""
    labels = scene.path_of(config.labels)
    if not labels.is_dir():
        return None
    model = pick_model(memory.models, config.model, "evaluate.lerf")
    encoder = Encoder.from_store(scene, model, config, memory.device)
    engine = relevance_engine(memory, model)
    metrics, per, notes = evaluate_lerf(
        memory, frame_views(scene, views), read_labels(labels), model, encoder.text, lambda qv: engine(qv).cpu(),
        config.filter_size, config.mask_threshold, config.min_opacity,
    )  # fmt: skip
    log.info(
        "lerf-ovs (%s, %d queries): localisation accuracy %.4f, mIoU %.4f; 3D mIoU %.4f", model, metrics["queries"],
        metrics["localization_accuracy"], metrics["mIoU"], metrics["3d"]["mIoU"],
    )  # fmt: skip
    return metrics, per, notes
