"""Command ``m3 query``: where is "a yellow duck"? Heatmaps on rendered views and a 3D box.

Reads ``params.yaml: query``. Not a DVC stage (it answers questions about a trained model). The
text is encoded with the text tower of the model whose features were stored; ``--vector`` queries
with a raw vector instead (``.npy`` or a JSON list). Writes, in ``data/<scene>/query/<slug>/``
unless ``--out`` is given (a new or empty folder, or an earlier output of ``m3 query``)::

    <view>.png          heatmap of the relevance over the RGB render, one per chosen view
    localization.json   query, model, mode, centroid [3], box_min/box_max [3] (world), counts

The work is :func:`pipeline.query.find.find`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import typer

from pipeline.core.scene import Scene
from pipeline.query.config import QueryConfig
from pipeline.query.encode import load_vector
from pipeline.query.find import find
from stages.command import PARAMS, SCENE, Options, command, resolve_scene


def run(
    config: QueryConfig,
    scene: Scene,
    text: str | None = None,
    vector: np.ndarray | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Query ``scene``'s trained memory (:func:`~pipeline.query.find.find`) and print the answer."""
    result, out_dir = find(config, scene, text, vector, out_dir)
    c, lo, hi = (result[k] for k in ("centroid", "box_min", "box_max"))
    print(
        f"{result['query']!r} ({result['model']}, {config.mode}, {result['method']}): centroid "
        f"[{c[0]:.3f}, {c[1]:.3f}, {c[2]:.3f}], box [{lo[0]:.3f}, {lo[1]:.3f}, {lo[2]:.3f}] .. "
        f"[{hi[0]:.3f}, {hi[1]:.3f}, {hi[2]:.3f}] from {result['n_inliers']} Gaussians; heatmaps in {out_dir}"
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
    run(options.load("query", params), resolve_scene(scene), text, load_vector(vector) if vector else None, out)
