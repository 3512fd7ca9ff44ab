"""Command ``m3 query``: where is "a yellow duck"? Heatmaps on rendered views and a 3D box.

Reads ``params.yaml: query``. Not a DVC stage (it answers questions about a trained model).
The text is encoded with the text tower of the model whose features were stored (same
checkpoint: the adapter conf is read from the feature store's attrs); ``--vector`` queries with a
raw vector instead (``.npy`` or a JSON list), e.g. for models without text. Outputs, in
``data/<scene>/query/<slug>/`` unless ``--out`` is given::

    <view>.png          heatmap of the relevance over the RGB render, one per chosen view
    localization.json   query, model, mode, centroid [3], box_min/box_max [3] (world), counts
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import typer
from PIL import Image

from pipeline import M3Error, logger
from pipeline.config import PARAMS_FILE, from_dict, load_section, to_dict
from pipeline.featurestore import FeatureStore
from pipeline.io import atomic_dir, write_json
from pipeline.query import (
    CANONICAL_NEGATIVES,
    build_query,
    gaussian_relevance,
    heatmap_overlay,
    localize,
    normalize_relevance,
    pick_model,
    relevance_maps,
)
from pipeline.scene import Scene, load_views
from pipeline.train import resolve_device
from pipeline.trained import TrainedMemory
from stages.common import PARAMS_HELP, SCENE_HELP, override, reports_errors

log = logger.getChild("query")


@dataclass
class QueryConfig:
    """``params.yaml: query``."""

    model: Optional[str] = None  # model to query (default: the first with a text encoder)
    mode: Literal["canonical", "cosine"] = "canonical"
    negatives: list[str] = field(default_factory=lambda: list(CANONICAL_NEGATIVES))
    scale: float = 10.0  # softmax scale of the canonical mode (1 / temperature)
    top_k: Optional[int] = None  # Gaussians kept for the 3D box (None: use quantile)
    quantile: float = 0.99  # keep Gaussians with relevance at or above this quantile
    min_opacity: float = 0.1  # ignore Gaussians more transparent than this
    trim: float = 3.0  # drop kept Gaussians farther than median + trim * MAD from their median
    n_views: int = 4  # heatmaps on this many views spread over the scene (when none are named)
    views: list[str] = field(default_factory=list)  # or these views (image names)
    alpha: float = 0.6  # heatmap opacity at full relevance
    device: str = "auto"  # auto | cpu | cuda


def slug(text: str) -> str:
    """A folder name for a query text (``a yellow duck`` -> ``a-yellow-duck``)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "query"


def read_vector(path: Path) -> np.ndarray:
    """A query vector ``[d]`` from ``.npy`` or a JSON list."""
    if not path.is_file():
        raise M3Error(f"{path}: query vector file not found; pass a .npy or .json file")
    vec = np.load(path) if path.suffix == ".npy" else np.asarray(json.loads(path.read_text()), dtype=np.float32)
    return np.asarray(vec, dtype=np.float32).reshape(-1)


def _choose_views(views: list[Any], config: QueryConfig) -> list[Any]:
    if config.views:
        by_name = {v.name: v for v in views}
        missing = [n for n in config.views if n not in by_name]
        if missing:
            raise M3Error(f"query: view '{missing[0]}' is not a registered view; use image names from colmap/images")
        return [by_name[n] for n in config.views]
    n = max(1, min(config.n_views, len(views)))
    return [views[int(i)] for i in np.linspace(0, len(views) - 1, n).round()]


def run(
    config: QueryConfig, scene: Scene, text: str | None = None, vector: np.ndarray | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Query ``scene``'s trained memory; writes heatmaps + ``localization.json``; returns the JSON."""
    device = resolve_device(config.device)
    memory = TrainedMemory.load(scene, device=device)
    model = pick_model(memory.models, config.model)
    attrs = FeatureStore.open(scene.features_path(model)).attrs
    qv = build_query(model, attrs, text, vector, config.mode, config.negatives, config.scale, device)
    maps = relevance_maps(memory, _choose_views(load_views(scene), config), model, qv)
    g_rel = gaussian_relevance(memory, model, qv)
    loc = localize(
        memory.means, g_rel, getattr(memory, "opacities", None), config.top_k, config.quantile,
        config.min_opacity, config.trim,
    )
    # one colour scale over all views so that they are comparable
    lo = min(float(r.min()) for _, _, r in maps)
    hi = max(float(r.max()) for _, _, r in maps)
    result = {
        "query": text if text is not None else "<vector>",
        "model": model,
        "mode": config.mode,
        "method": memory.method,
        **loc.to_json(),
        "views": {v.name: {"max_relevance": float(r.max()), "mean_relevance": float(r.mean())} for v, _, r in maps},
        "config": to_dict(config),
    }
    out_dir = out_dir or scene.root / "query" / slug(text or "vector")
    with atomic_dir(out_dir) as tmp:
        for view, rgb, rel in maps:
            img = heatmap_overlay(rgb, normalize_relevance(rel, lo, hi), config.alpha)
            Image.fromarray(img).save(tmp / f"{Path(view.name).stem}.png")
        write_json(tmp / "localization.json", result)
    c, bmin, bmax = loc.centroid, loc.box_min, loc.box_max
    print(f"{result['query']!r} ({model}, {config.mode}, {memory.method}): centroid "
          f"[{c[0]:.3f}, {c[1]:.3f}, {c[2]:.3f}], box [{bmin[0]:.3f}, {bmin[1]:.3f}, {bmin[2]:.3f}] .. "
          f"[{bmax[0]:.3f}, {bmax[1]:.3f}, {bmax[2]:.3f}] from {loc.inliers.size} Gaussians; heatmaps in {out_dir}")
    return result


@reports_errors
def cli(
    scene: str = typer.Argument(..., help=SCENE_HELP),
    text: Optional[str] = typer.Argument(None, help="what to look for, e.g. \"a yellow duck\" (omit with --vector)"),
    vector: Optional[Path] = typer.Option(None, help="query with a raw vector instead of text (.npy or JSON list, the model's dims)"),
    model: Optional[str] = typer.Option(None, help="model whose features to query (default: the first with a text encoder)"),
    mode: Optional[str] = typer.Option(None, help="canonical (LERF softmax against 'object', 'things', 'stuff', 'texture') | cosine"),
    top_k: Optional[int] = typer.Option(None, help="keep the k most relevant Gaussians for the 3D box (default: --quantile)"),
    quantile: Optional[float] = typer.Option(None, help="keep Gaussians whose relevance is at or above this quantile"),
    views: Optional[str] = typer.Option(None, help="comma-separated view (image) names for heatmaps"),
    n_views: Optional[int] = typer.Option(None, help="heatmaps on this many views spread over the scene"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: data/<scene>/query/<text>)"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda"),
    params: Path = typer.Option(PARAMS_FILE, help=PARAMS_HELP),
) -> None:
    """Find TEXT in the scene's 3D memory: heatmaps on rendered views and a 3D centroid + box.

    Prints the centroid and axis-aligned box (world coordinates) and writes them to
    localization.json next to the heatmap PNGs.
    """
    cfg = override(
        load_section(QueryConfig, "query", params), model=model, mode=mode, top_k=top_k, quantile=quantile,
        views=[v.strip() for v in views.split(",") if v.strip()] if views else None, n_views=n_views, device=device,
    )
    cfg = from_dict(QueryConfig, to_dict(cfg), "m3 query options")
    run(cfg, Scene.resolve(scene), text, read_vector(vector) if vector else None, out)
