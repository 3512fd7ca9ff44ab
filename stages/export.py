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
The work is :func:`pipeline.query.export.export`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pipeline.query.config import ExportConfig
from stages.command import PARAMS, SCENE, Options, command, resolve_scene

if TYPE_CHECKING:
    import numpy as np

    from pipeline.core.scene import Scene

log = logging.getLogger(__name__)


def run(
    config: ExportConfig,
    scene: Scene,
    text: str | None = None,
    vector: np.ndarray | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Export the answer to ``text`` (or ``vector``, :func:`~pipeline.query.export.export`); returns
    ``selection.json``'s content."""
    from pipeline.query.export import export

    result, out_dir = export(config, scene, text, vector, out_dir)
    log.info(
        "%r (%s): %d of %d Gaussians -> %s (object.ply, relevance.ply)",
        result["query"], result["model"], result["n_inliers"], result["gaussians"], out_dir,
    )  # fmt: skip
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
    from pipeline.query.files import load_vector

    run(options.load("export", params), resolve_scene(scene), query, load_vector(vector) if vector else None, out)
