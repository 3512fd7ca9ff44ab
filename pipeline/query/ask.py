"""Ask the memory about a view (``m3 ask``): rendered VLM image tokens in place of the VLM's own.

The memory renders the ``llamav`` features at a camera: the per-patch image tokens of the VLM
whose tokens were stored (same checkpoint, its conf read from the feature store's attrs). They go
to that VLM's language model in place of the tokens its vision tower would compute from a photo
(:mod:`pipeline.features.vlm`), with the view's global tokens (Llama-3.2-Vision's CLS per tile,
which is not a per-patch token and cannot be rendered: the stored one of the view asked about, or
for a novel camera of the nearest registered view). A region restricts the image tokens to the
cells inside it: a pixel box ``x0,y0,x1,y1``, or the cells a text query finds (its relevance in a
language model of the memory, e.g. ``clip``, ``llama3`` or ``seem``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.errors import M3Error
from pipeline.core.scene import View
from pipeline.evaluate.query import build_query, normalize_relevance, upsample
from pipeline.features.store import FeatureStore

_BOX = re.compile(r"^\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*$")


MAX_SIDE = 8192
"""The largest rendered side a pose file may ask for (pixels)."""


def read_pose(path: Path, like: View) -> View:
    """A camera from a JSON file ``{"w2c": 4x4 or 3x4 world-to-camera (OpenCV axes, as COLMAP),
    "K": 3x3 (optional), "width", "height" (optional, whole pixels up to :data:`MAX_SIDE`)}``; what
    it leaves out comes from ``like``. Anything else is an :class:`M3Error` naming the file."""
    if not path.is_file():
        raise M3Error(f"{path}: pose file not found; give a JSON file with a 4x4 world-to-camera 'w2c'")
    usage = "give {'w2c': 4x4 world-to-camera, 'K': 3x3 (optional), 'width', 'height' (optional)}"
    try:
        spec = json.loads(path.read_text())
        w2c = np.eye(4)
        w2c[:3] = np.asarray(spec["w2c"], dtype=np.float64).reshape(-1, 4)[:3]
        K = np.asarray(spec.get("K", like.K), dtype=np.float64).reshape(3, 3)
        size = [spec.get("width", like.width), spec.get("height", like.height)]
    except (json.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise M3Error(f"{path}: not a pose ({type(exc).__name__}: {exc}); {usage}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE for v in size):
        raise M3Error(f"{path}: width and height {size} must be whole pixels in 1..{MAX_SIDE}; {usage}")
    if not (np.isfinite(w2c).all() and np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0):
        raise M3Error(f"{path}: 'w2c' and 'K' must be finite, with positive focal lengths; {usage}")
    return dataclasses.replace(like, name=path.stem, image_path=path, K=K, w2c=w2c, width=size[0], height=size[1])


def nearest_view(camera: View, views: list[View]) -> View:
    """The registered view whose camera centre is closest to ``camera``'s (its viewing direction
    breaks ties)."""
    forward = lambda v: v.w2c[2, :3]  # noqa: E731  (the camera's z axis in world coordinates)
    return min(
        views,
        key=lambda v: (
            round(float(np.linalg.norm(v.center - camera.center)), 6),
            -float(forward(v) @ forward(camera)),
        ),
    )


def parse_box(region: str) -> tuple[float, float, float, float] | None:
    """``"x0,y0,x1,y1"`` (pixels) -> the box; anything else -> None (a text)."""
    m = _BOX.match(region)
    if m is None:
        return None
    x0, y0, x1, y1 = (float(v) for v in m.groups())
    if x1 <= x0 or y1 <= y0:
        raise M3Error(f"ask: region box {region!r} is empty; give x0,y0,x1,y1 with x1 > x0 and y1 > y0 (pixels)")
    return x0, y0, x1, y1


def box_cells(box: tuple[float, float, float, float], grid: tuple[int, int], width: int, height: int) -> torch.Tensor:
    """``keep [h, w]`` bool: the cells of ``grid`` over a ``width x height`` view whose centres lie in ``box``."""
    h, w = grid
    x = (torch.arange(w) + 0.5) * width / w
    y = (torch.arange(h) + 0.5) * height / h
    x0, y0, x1, y1 = box
    return ((y >= y0) & (y < y1))[:, None] & ((x >= x0) & (x < x1))[None, :]


def text_cells(
    relevance_features: torch.Tensor,
    model: str,
    attrs: dict[str, Any],
    text: str,
    grid: tuple[int, int],
    threshold: float,
    device: str,
) -> torch.Tensor:
    """``keep [h, w]`` bool: where ``text`` is found in ``model``'s rendered ``relevance_features
    [h', w', d]`` (cosine relevance, bilinear to ``grid``, min-max normalised, >= ``threshold``)."""
    qv = build_query(model, attrs, text=text, mode="cosine", device=device)
    rel = upsample(qv(relevance_features.detach().float().cpu()), *grid)
    return normalize_relevance(rel) >= threshold


def global_tokens(store: FeatureStore, view: str, dim: int) -> torch.Tensor:
    """The stored global tokens ``[g, D]`` of registered view ``view`` (its ``global_tokens`` records)."""
    if "global_tokens" not in store.record_names:
        return torch.zeros(0, dim)
    rows = sorted((r for r in store.records("global_tokens") if r["view"] == view), key=lambda r: int(r["index"]))
    return torch.tensor([r["token"] for r in rows], dtype=torch.float32).reshape(len(rows), dim)


def region_overlay(rgb: torch.Tensor, keep: torch.Tensor) -> np.ndarray:
    """The render ``rgb [H, W, 3]`` in [0, 1] with the cells outside ``keep [h, w]`` darkened: ``[H, W, 3] uint8``."""
    inside = upsample(keep.float(), rgb.shape[0], rgb.shape[1]) >= 0.5
    img = rgb.detach().float().cpu() * torch.where(inside, 1.0, 0.25)[..., None]
    return (img.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
