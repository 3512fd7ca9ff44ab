"""``m3 export``: a query's answer as Gaussians: the relevant ones alone, and the scene coloured by relevance.

Both are parameter dicts in the layout of :mod:`pipeline.splat.gaussians` (``save_ply`` writes
them as standard 3DGS PLYs that common splat viewers open):

* :func:`subset`: the selected Gaussians with all their parameters (object extraction);
* :func:`recolored`: every Gaussian with view-independent colours (SH DC only, higher bands 0),
  e.g. :func:`~pipeline.query.colors.relevance_colors`: LangSplat's composite.

:func:`export` answers one query and writes ``object.ply``, ``relevance.ply`` and
``selection.json`` into an output folder (:func:`pipeline.core.io.output_dir`); :func:`extract`
is its computing part, on an already loaded :class:`~pipeline.query.session.QuerySession`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pipeline.core.config import to_dict
from pipeline.core.io import output_dir, output_listing, slug, write_json
from pipeline.core.scene import Scene
from pipeline.query.colors import base_colors, relevance_colors
from pipeline.query.config import ExportConfig
from pipeline.query.files import check_query
from pipeline.query.session import QuerySession
from pipeline.splat.gaussians import rgb_to_sh, save_ply


def subset(params: dict[str, Tensor], ids: np.ndarray) -> dict[str, Tensor]:
    """The Gaussians ``ids [m]`` of ``params`` (every entry, queries included)."""
    index = torch.as_tensor(np.asarray(ids, np.int64))
    return {k: v.detach().cpu()[index] for k, v in params.items()}


def recolored(params: dict[str, Tensor], colors: np.ndarray) -> dict[str, Tensor]:
    """``params`` with view-independent ``colors [N, 3]`` in [0, 1] (SH DC; higher bands zeroed)."""
    out = {k: v.detach().cpu().clone() for k, v in params.items()}
    out["sh0"] = rgb_to_sh(torch.as_tensor(np.asarray(colors), dtype=torch.float32))[:, None, :]
    out["shN"] = torch.zeros_like(out["shN"])
    return out


def extract(
    session: QuerySession, config: ExportConfig, text: str | None = None, vector: np.ndarray | None = None
) -> tuple[dict[str, Any], dict[str, Tensor], Tensor]:
    """Answer ``text`` or ``vector [d]`` with an already loaded ``session``: ``selection.json``'s
    content, the selected Gaussians' parameters (:func:`subset`: ``object.ply``) and every
    Gaussian's relevance ``[N]`` (on the CPU)."""
    rel = session.relevance(session.encode(text, vector))
    loc = session.localize(rel)
    result = {
        "query": text if text is not None else "<vector>",
        "model": session.model,
        "mode": config.mode,
        "method": session.memory.method,
        "gaussians": int(len(rel)),
        **loc.to_json(),
        "config": to_dict(config),
    }
    return result, subset(session.memory.params, loc.inliers), rel


def export(
    config: ExportConfig,
    scene: Scene,
    text: str | None = None,
    vector: np.ndarray | None = None,
    out_dir: Path | None = None,
) -> tuple[dict[str, Any], Path]:
    """Export the answer to ``text`` (or ``vector [d]``, :func:`extract`) to ``out_dir`` (default
    ``<scene>/export/<text>``); returns ``selection.json``'s content and the folder."""
    check_query(text, vector)
    out_dir = Path(out_dir or scene.root / "export" / slug(text or "vector"))
    output_listing(out_dir, "export")  # refused before any work: never replaces what m3 did not write
    session = QuerySession(scene, config, "export")
    result, obj, rel = extract(session, config, text, vector)
    params = session.memory.params
    with output_dir(out_dir, "export") as tmp:
        save_ply(tmp / "object.ply", obj)
        save_ply(tmp / "relevance.ply", recolored(params, relevance_colors(base_colors(params), rel.numpy())))
        write_json(tmp / "selection.json", result)
    return result, out_dir
