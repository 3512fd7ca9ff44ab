"""Command ``m3 query``: where is "a yellow duck"? Heatmaps on rendered views and a 3D box.

Reads ``params.yaml: query``. Not a DVC stage (it answers questions about a trained model). The
text is encoded with the text tower of the model whose features were stored; ``--vector`` queries
with a raw vector instead (``.npy`` or a JSON list). Writes, in ``data/<scene>/query/<slug>/``
unless ``--out`` is given (a new or empty folder, or an earlier output of ``m3 query``)::

    <view>.png          heatmap of the relevance over the RGB render, one per chosen view
    localization.json   query, model, mode, centroid [3], box_min/box_max [3] (world), counts

The work is :func:`pipeline.query.find.find`. With ``--server URL`` a running ``m3 serve`` answers
instead (its memory and text tower already loaded: no torch in this process) and the same files
are written; the request carries this command's selection settings (model, mode, threshold /
top_k / quantile, attention_k, min_opacity, trim, views, n_views, alpha), the rest (negatives,
scale, vectors, device) are the server's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pipeline.core.errors import M3Error
from pipeline.query.config import QueryConfig
from stages.command import PARAMS, SCENE, Options, command, resolve_scene

if TYPE_CHECKING:
    import numpy as np

    from pipeline.core.scene import Scene

SERVER_FIELDS = (
    "model",
    "mode",
    "threshold",
    "top_k",
    "quantile",
    "attention_k",
    "min_opacity",
    "trim",
    "n_views",
    "alpha",
)
"""The settings of ``params.yaml: query`` a ``--server`` request carries (and ``views`` when some are named)."""


def run(
    config: QueryConfig,
    scene: Scene,
    text: str | None = None,
    vector: np.ndarray | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Query ``scene``'s trained memory (:func:`~pipeline.query.find.find`) and print the answer."""
    from pipeline.query.find import find

    result, out_dir = find(config, scene, text, vector, out_dir)
    report(config, result, out_dir)
    return result


def run_on_server(
    config: QueryConfig,
    scene: Scene,
    url: str,
    token: str | None = None,
    text: str | None = None,
    vector: np.ndarray | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """:func:`run`, answered by the ``m3 serve`` at ``url`` (the same files, written here)."""
    from pipeline.query.files import query_folder, save_answer
    from stages.server.client import M3Client, M3ServerError

    out_dir = query_folder(scene, text, vector, out_dir)
    options: dict[str, Any] = {k: getattr(config, k) for k in SERVER_FIELDS}
    options["views"] = list(config.views) or None
    try:
        result = M3Client(url, token).query(scene.name, text, vector, heatmaps=True, **options)
    except M3ServerError as exc:
        raise M3Error(f"query --server {url}: {exc.detail}") from None
    except OSError as exc:
        raise M3Error(f"query --server {url}: no m3 serve answers there ({exc}); start one or drop --server") from None
    heatmaps = result.pop("heatmaps")
    save_answer(out_dir, result, heatmaps)
    report(config, result, out_dir)
    return result


def report(config: QueryConfig, result: dict[str, Any], out_dir: Path) -> None:
    """Print the answer's centroid and box, and where the heatmaps are."""
    c, lo, hi = (result[k] for k in ("centroid", "box_min", "box_max"))
    print(
        f"{result['query']!r} ({result['model']}, {config.mode}, {result['method']}): centroid "
        f"[{c[0]:.3f}, {c[1]:.3f}, {c[2]:.3f}], box [{lo[0]:.3f}, {lo[1]:.3f}, {lo[2]:.3f}] .. "
        f"[{hi[0]:.3f}, {hi[1]:.3f}, {hi[2]:.3f}] from {result['n_inliers']} Gaussians; heatmaps in {out_dir}"
    )


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
    server: str | None = typer.Option(
        None, envvar="M3_SERVER", help="URL of a running m3 serve to answer (e.g. http://127.0.0.1:8765)"
    ),
    token: str | None = typer.Option(None, envvar="M3_SERVE_TOKEN", help="bearer token of that server"),
    params: Path = PARAMS,
) -> None:
    """Find TEXT in the scene's 3D memory: heatmaps on rendered views and a 3D centroid + box.

    Prints the centroid and axis-aligned box (world coordinates) and writes them to
    localization.json next to the heatmap PNGs.
    """
    from pipeline.query.files import load_vector

    config, sc, vec = options.load("query", params), resolve_scene(scene), load_vector(vector) if vector else None
    if server:
        run_on_server(config, sc, server, token, text, vec, out)
    else:
        run(config, sc, text, vec, out)
