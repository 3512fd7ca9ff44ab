"""Stage ``train``: 3D Gaussians with per-model principal queries and memory attention.

Reads ``params.yaml: train`` (and the top-level ``models`` list). Inputs: the COLMAP model
(``colmap/``), each model's feature store (``features/<model>.zarr``, streamed one view at a time)
and bank (``bank/<model>.zarr``, checked to be built from those features). Outputs in
``data/<scene>/model/``: ``point_cloud.ply``, ``memory.safetensors``, ``config.json`` (provenance
incl. bank hashes), ``checkpoint.safetensors`` (a rerun with the same config and inputs resumes
from it; not a DVC output), ``stats.json`` and ``curves.csv`` (DVC plots). Every
``test_every``-th view is never trained on. The work is :func:`pipeline.splat.stage.train_scene`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.splat.config import TrainConfig
from stages.command import PARAMS, SCENE, Options, command, resolve_scene

if TYPE_CHECKING:
    from pipeline.core.scene import Scene

log = logging.getLogger(__name__)


def run(config: TrainConfig, scene: Scene, models: list[str], progress: bool | None = None) -> dict[str, Any]:
    """Train (or resume) ``scene`` (:func:`~pipeline.splat.stage.train_scene`); returns the stats."""
    from pipeline.splat.stage import train_scene

    stats = train_scene(config, scene, models, progress)
    log.info(
        "%s: %d steps in %.0f s, %d Gaussians, losses %s, peak RAM %.0f MB", scene.name, stats["steps"],
        stats["seconds"], stats["gaussians"], stats["final_losses"], stats["peak_ram_mb"],
    )  # fmt: skip
    return stats


@command(TrainConfig)
def cli(
    options: Options[TrainConfig],
    scene: str = SCENE,
    params: Path = PARAMS,
) -> None:
    """Train the scene's Gaussians, principal queries and memory (data/<scene>/model/); resumes."""
    from pipeline.features.models import listed_models

    run(options.load("train", params), resolve_scene(scene), listed_models(params))
