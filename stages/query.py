"""Command ``m3 query``: where is "a yellow duck"? Heatmaps on rendered views and a 3D box.

Reads ``params.yaml: query``. Not a DVC stage (it answers questions about a trained model).
The text is encoded with the text tower of the model whose features were stored (same
checkpoint: the adapter conf is read from the feature store's attrs); ``--vector`` queries with a
raw vector instead (``.npy`` or a JSON list), e.g. for models without text. Outputs, in
``data/<scene>/query/<slug>/`` unless ``--out`` is given (a new or empty folder, or an earlier
output of ``m3 query``: nothing else is ever replaced, :func:`pipeline.core.io.output_dir`)::

    <view>.png          heatmap of the relevance over the RGB render, one per chosen view
    localization.json   query, model, mode, centroid [3], box_min/box_max [3] (world), counts
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import typer
from PIL import Image

from pipeline.core.config import to_dict
from pipeline.core.errors import M3Error
from pipeline.core.io import output_dir, output_listing, write_json
from pipeline.core.scene import Scene, load_views
from pipeline.evaluate.config import QueryConfig
from pipeline.evaluate.query import check_query, heatmap_overlay, normalize_relevance, relevance_maps
from pipeline.evaluate.session import QuerySession
from stages.command import PARAMS, SCENE, Options, command, resolve_scene

log = logging.getLogger(__name__)


def slug(text: str) -> str:
    """A folder name for a query text (``a yellow duck`` -> ``a-yellow-duck``); a text that the name
    cannot spell (other scripts, punctuation, over 60 characters) gets a hash of it appended, so
    that different texts never share a folder (``黄色的鸭子`` -> ``query-<8 hex>``)."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]
    if name and re.fullmatch(r"[A-Za-z0-9 _-]{1,60}", text.strip()):
        return name
    return f"{name or 'query'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def read_vector(path: Path) -> np.ndarray:
    """A query vector ``[d]`` from ``.npy`` (never unpickled) or a JSON list of numbers."""
    if not path.is_file():
        raise M3Error(f"{path}: query vector file not found; pass a .npy or .json file")
    try:
        raw = np.load(path, allow_pickle=False) if path.suffix == ".npy" else json.loads(path.read_text())
        vec = np.asarray(raw, dtype=np.float32).reshape(-1)
    except (ValueError, TypeError, OSError) as exc:  # object arrays, bad JSON, strings, mappings
        why = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise M3Error(f"{path}: not a query vector ({why}); give a .npy array or a JSON list of d numbers") from None
    if vec.size == 0 or not np.isfinite(vec).all() or not vec.any():
        raise M3Error(f"{path}: the query vector is empty, all zero or not finite; give d finite numbers")
    return vec


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
    config: QueryConfig,
    scene: Scene,
    text: str | None = None,
    vector: np.ndarray | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Query ``scene``'s trained memory; writes heatmaps + ``localization.json``; returns the JSON."""
    check_query(text, vector)
    out_dir = out_dir or scene.root / "query" / slug(text or "vector")
    output_listing(out_dir, "query")  # refused before any work: never replaces what m3 did not write
    session = QuerySession(scene, config)
    memory, model = session.memory, session.model
    qv = session.encode(text, vector)
    maps = relevance_maps(memory, _choose_views(load_views(scene), config), model, qv)
    loc = session.localize(session.relevance(qv))
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
    with output_dir(out_dir, "query") as tmp:
        for view, rgb, rel in maps:
            img = heatmap_overlay(rgb, normalize_relevance(rel, lo, hi), config.alpha)
            Image.fromarray(img).save(tmp / f"{Path(view.name).stem}.png")
        write_json(tmp / "localization.json", result)
    c, bmin, bmax = loc.centroid, loc.box_min, loc.box_max
    print(
        f"{result['query']!r} ({model}, {config.mode}, {memory.method}): centroid "
        f"[{c[0]:.3f}, {c[1]:.3f}, {c[2]:.3f}], box [{bmin[0]:.3f}, {bmin[1]:.3f}, {bmin[2]:.3f}] .. "
        f"[{bmax[0]:.3f}, {bmax[1]:.3f}, {bmax[2]:.3f}] from {loc.inliers.size} Gaussians; heatmaps in {out_dir}"
    )
    return result


@command(QueryConfig)
def cli(
    options: Options[QueryConfig],
    scene: str = SCENE,
    text: str | None = typer.Argument(None, help='what to look for, e.g. "a yellow duck" (omit with --vector)'),
    vector: Path | None = typer.Option(
        None, help="query with a raw vector instead of text (.npy or JSON list, the model's dims)"
    ),
    out: Path | None = typer.Option(
        None, help="output folder: new, empty or an earlier m3 query output (default: data/<scene>/query/<text>)"
    ),
    params: Path = PARAMS,
) -> None:
    """Find TEXT in the scene's 3D memory: heatmaps on rendered views and a 3D centroid + box.

    Prints the centroid and axis-aligned box (world coordinates) and writes them to
    localization.json next to the heatmap PNGs.
    """
    run(options.load("query", params), resolve_scene(scene), text, read_vector(vector) if vector else None, out)
