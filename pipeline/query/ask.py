"""``m3 ask``: ask the memory about a view; a VLM answers from rendered image tokens in place of its own.

The memory renders the ``llamav`` features at a camera: the per-patch image tokens of the VLM
whose tokens were stored (same checkpoint, its conf read from the feature store's attrs). They go
to that VLM's language model in place of the tokens its vision tower would compute from a photo
(:mod:`pipeline.features.vlm`), with the view's global tokens (Llama-3.2-Vision's CLS per tile,
which is not a per-patch token and cannot be rendered: the stored one of the view asked about, or
for a novel camera of the nearest registered view). A region restricts the image tokens to the
cells inside it: a pixel box ``x0,y0,x1,y1``, or the cells a text query finds (its relevance in a
language model of the memory, e.g. ``clip``, ``llama3`` or ``seem``). :func:`ask` answers one
question and writes ``render.png`` (+ ``region.png``) and ``answer.json`` to an output folder.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.core.config import to_dict
from pipeline.core.errors import M3Error
from pipeline.core.io import output_dir, output_listing, slug, write_json
from pipeline.core.runtime import resolve_device
from pipeline.core.scene import Scene, View, load_views, views_named
from pipeline.features.store import FeatureStore
from pipeline.features.vlm import ImageTokens
from pipeline.query.colors import normalize_relevance, upsample
from pipeline.query.config import AskConfig
from pipeline.query.encode import Encoder, load_adapter, pick_model
from pipeline.splat.trained import RenderOut, TrainedMemory

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
    qv = Encoder(model, attrs, mode="cosine", device=device).text(text)
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


def camera_of(views: list[View], view: str | None, pose: Path | None) -> View:
    """The camera asked about: a registered ``view`` (default the first), or a ``pose`` file."""
    if view is not None and pose is not None:
        raise M3Error("ask: give --view or --pose, not both")
    if pose is not None:
        return read_pose(pose, nearest_view(read_pose(pose, views[0]), views))
    return views_named(views, [view], "ask --view")[0] if view is not None else views[0]


def region_cells(
    region: str, rendered: RenderOut, model: str, region_model: str | None, camera: View, scene: Scene,
    threshold: float, device: str,
) -> torch.Tensor:  # fmt: skip
    """``keep [h, w]`` bool over ``model``'s rendered grid: a pixel box, or where a text is found in
    ``region_model``'s rendered features."""
    h, w = rendered.features[model].shape[:2]
    grid = (h, w)
    box = parse_box(region)
    if box is not None:
        keep = box_cells(box, grid, camera.width, camera.height)
    else:
        if region_model is None:
            raise ValueError(f"region_cells: the text region {region!r} needs a region_model")
        attrs = FeatureStore.open(scene.features_path(region_model)).attrs
        keep = text_cells(rendered.features[region_model], region_model, attrs, region, grid, threshold, device)
    if not bool(keep.any()):
        raise M3Error(f"ask: region {region!r} holds no feature cell of the view; widen it")
    return keep


def answer_question(
    memory: TrainedMemory,
    scene: Scene,
    config: AskConfig,
    question: str,
    camera: View,
    source: View,
    region: str | None = None,
    device: str = "cpu",
) -> tuple[dict[str, Any], RenderOut, torch.Tensor | None]:
    """Answer ``question`` at ``camera`` with an already loaded ``memory`` (``m3 serve`` keeps one
    warm): render ``config.model``'s VLM tokens there, keep ``region``'s cells (a pixel box or a
    text; None: all), add the global tokens stored for view ``source`` and let the VLM read them.
    Returns ``answer.json``'s content (its camera's ``pose`` None), the render and ``keep [h, w]``."""
    store = FeatureStore.open(scene.features_path(config.model))
    vlm = getattr(load_adapter(config.model, store.attrs, device), "vlm", None)
    if vlm is None:
        raise M3Error(f"ask.model: '{config.model}' stores no VLM image tokens; use llamav")
    region_model = pick_model(memory.models, config.region_model, "ask") if region and not parse_box(region) else None
    rendered = memory.render(camera, [config.model] + ([region_model] if region_model else []))
    keep = None
    if region:
        threshold = config.region_threshold
        keep = region_cells(region, rendered, config.model, region_model, camera, scene, threshold, device)
    tokens = ImageTokens(rendered.features[config.model], global_tokens(store, source.name, vlm.dim))
    grid = rendered.features[config.model].shape[:2]
    result = {
        "question": question,
        "answer": vlm.generate(question, tokens, keep, config.max_new_tokens),
        "camera": {"view": camera.name, "pose": None, "global_tokens_from": source.name},
        "region": region,
        "region_model": region_model,
        "image_tokens": int(keep.sum()) if keep is not None else int(grid[0] * grid[1]),
        "global_tokens": len(tokens.globals),
        "model": config.model,
        "checkpoint": store.attrs.get("checkpoint"),
        "weights": store.attrs.get("weights"),
        "config": to_dict(config),
    }
    return result, rendered, keep


def ask(
    config: AskConfig,
    scene: Scene,
    question: str,
    view: str | None = None,
    pose: Path | None = None,
    region: str | None = None,
    out_dir: Path | None = None,
) -> tuple[dict[str, Any], Path]:
    """Answer ``question`` about a camera of ``scene``'s memory; writes ``render.png`` (+
    ``region.png``) and ``answer.json`` to ``out_dir`` (default
    ``<scene>/ask/<view>-<question>[-in-<region>]``); returns answer.json's content and the folder."""
    if not question.strip():
        raise M3Error('ask: the question is empty; e.g. m3 ask <scene> "What is on the table?"')
    device = resolve_device(config.device, "ask")
    memory = TrainedMemory.load(scene, device=device)
    if config.model not in memory.models:
        raise M3Error(f"ask: the memory holds no '{config.model}' ({', '.join(memory.models)}); add it to models:")
    views = load_views(scene)
    camera = camera_of(views, view, pose)
    name = f"{Path(camera.name).stem}-{slug(question)}" + (f"-in-{slug(region)}" if region else "")
    out_dir = Path(out_dir or scene.root / "ask" / name)
    output_listing(out_dir, "ask")  # refused before any work: never replaces what m3 did not write
    source = nearest_view(camera, views) if pose is not None else camera  # whose global tokens
    result, rendered, keep = answer_question(memory, scene, config, question, camera, source, region, device)
    result["camera"]["pose"] = str(pose) if pose else None
    with output_dir(out_dir, "ask") as tmp:
        rgb = rendered.rgb.detach().float().cpu()
        Image.fromarray((rgb.numpy() * 255 + 0.5).astype(np.uint8)).save(tmp / "render.png")
        if keep is not None:
            Image.fromarray(region_overlay(rgb, keep)).save(tmp / "region.png")
        write_json(tmp / "answer.json", result)
    return result, out_dir
