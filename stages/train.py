"""Stage ``train``: 3D Gaussians with per-model principal queries and memory attention.

Reads ``params.yaml: train`` (and the top-level ``models`` list). Inputs: the COLMAP model
(``colmap/``), each model's feature store (``features/<model>.zarr``, streamed one view at a time)
and bank (``bank/<model>.zarr``, checked to be built from those features). Outputs in
``data/<scene>/model/``: ``point_cloud.ply``, ``memory.safetensors``, ``config.json`` (provenance
incl. bank hashes), ``checkpoint.safetensors`` (a rerun with the same config and inputs resumes
from it; not a DVC output), ``stats.json`` and ``curves.csv`` (DVC plots). Every
``test_every``-th view is never trained on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from pipeline.core.runtime import peak_gpu_mb
from pipeline.core.scene import Scene
from pipeline.features.models import listed_models
from pipeline.splat.config import TrainConfig
from pipeline.splat.train import train
from pipeline.splat.trained import write_model
from stages.command import PARAMS, SCENE, Options, command, resolve_scene

log = logging.getLogger(__name__)


def run(config: TrainConfig, scene: Scene, models: list[str], progress: bool = True) -> dict[str, Any]:
    """Train (or resume) ``scene``; writes ``model/``; returns the stats."""
    tr = train(scene, config, models, progress=progress)
    last = tr.curves[-min(len(tr.curves), 5) :]
    losses = (
        {k[5:]: round(sum(r[k] for r in last) / len(last), 6) for k in last[0] if k.startswith("loss_")} if last else {}
    )
    stats = {
        "steps": tr.step,
        "seconds": round(tr.elapsed, 2),
        "cpu_seconds": round(tr.cpu_elapsed, 2),  # CPU time of all threads: the cost on a loaded machine
        "gaussians": int(len(tr.params["means"])),
        "final_losses": losses,
        "peak_ram_mb": round(tr.peak_ram_mb, 1),
        "train_views": len(tr.inp.train),
        "test_views": len(tr.inp.test),
    }
    gpu = peak_gpu_mb(tr.device)
    if gpu is not None:
        stats["peak_gpu_mb"] = round(gpu, 1)
    write_model(scene.model_dir, tr, stats)
    log.info(
        "%s: %d steps in %.0f s, %d Gaussians, losses %s, peak RAM %.0f MB", scene.name, tr.step, tr.elapsed,
        stats["gaussians"], losses, stats["peak_ram_mb"],
    )  # fmt: skip
    return stats


@command(TrainConfig)
def cli(
    options: Options[TrainConfig],
    scene: str = SCENE,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show the progress bar"),
    params: Path = PARAMS,
) -> None:
    """Train the scene's Gaussians, principal queries and memory (data/<scene>/model/); resumes."""
    run(options.load("train", params), resolve_scene(scene), listed_models(params), progress)
