"""Command ``m3 export``: a query's answer as standard 3DGS PLYs (object extraction + relevance colours).

Reads ``params.yaml: export`` (the query settings: model, mode, vectors, attention_k, top_k /
threshold / quantile, min_opacity, trim). Not a DVC stage. Writes, in
``data/<scene>/export/<query>/`` unless ``--out`` is given (a new or empty folder, or an earlier
output of ``m3 export``)::

    object.ply       the selected Gaussians (after trimming), every parameter kept: the object alone
    relevance.ply    the whole scene, colours replaced by the relevance (turbo on the upper half
                     of its range, the rest dimmed), view-independent
    selection.json   query, model, mode, centroid / box (world), counts, relevance threshold

Both PLYs are the standard 3DGS layout (plus the ``q_<model>_<k>`` queries), as ``point_cloud.ply``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import typer

from pipeline.core.config import to_dict
from pipeline.core.io import output_dir, output_listing, write_json
from pipeline.core.scene import Scene
from pipeline.evaluate.config import ExportConfig
from pipeline.evaluate.export import base_colors, recolored, relevance_colors, subset
from pipeline.evaluate.query import check_query
from pipeline.evaluate.session import QuerySession
from pipeline.splat.gaussians import save_ply
from stages.command import PARAMS, SCENE, Options, command, resolve_scene
from stages.query import read_vector, slug

log = logging.getLogger(__name__)


def run(
    config: ExportConfig,
    scene: Scene,
    text: str | None = None,
    vector: np.ndarray | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Export the answer to ``text`` (or ``vector``); returns ``selection.json``'s content."""
    check_query(text, vector)
    out_dir = out_dir or scene.root / "export" / slug(text or "vector")
    output_listing(out_dir, "export")  # refused before any work: never replaces what m3 did not write
    session = QuerySession(scene, config, "export")
    qv = session.encode(text, vector)
    rel = session.relevance(qv)
    loc = session.localize(rel)
    params = session.memory.params
    colors = relevance_colors(base_colors(params), rel.numpy())
    result = {
        "query": text if text is not None else "<vector>",
        "model": session.model,
        "mode": config.mode,
        "method": session.memory.method,
        "gaussians": int(len(rel)),
        **loc.to_json(),
        "config": to_dict(config),
    }
    with output_dir(out_dir, "export") as tmp:
        save_ply(tmp / "object.ply", subset(params, loc.inliers))
        save_ply(tmp / "relevance.ply", recolored(params, colors))
        write_json(tmp / "selection.json", result)
    log.info(
        "%r (%s): %d of %d Gaussians -> %s (object.ply, relevance.ply)",
        result["query"],
        session.model,
        loc.inliers.size,
        len(rel),
        out_dir,
    )
    return result


@command(ExportConfig)
def cli(
    options: Options[ExportConfig],
    scene: str = SCENE,
    query: str | None = typer.Option(None, "--query", help='what to extract, e.g. "a yellow duck"'),
    vector: Path | None = typer.Option(
        None, help="query with a raw vector instead of text (.npy or JSON list, the model's dims)"
    ),
    out: Path | None = typer.Option(
        None, help="output folder: new, empty or an earlier m3 export output (default: data/<scene>/export/<query>)"
    ),
    params: Path = PARAMS,
) -> None:
    """Export the Gaussians answering QUERY: object.ply (them alone) and relevance.ply (the scene
    coloured by relevance), both standard 3DGS PLYs, plus selection.json."""
    run(options.load("export", params), resolve_scene(scene), query, read_vector(vector) if vector else None, out)
