"""The ``train`` stage's work on one scene: train (or resume) and write the model with its stats."""

from __future__ import annotations

from typing import Any

from pipeline.core.runtime import peak_gpu_mb
from pipeline.core.scene import Scene
from pipeline.splat.config import TrainConfig
from pipeline.splat.train import Trainer, train
from pipeline.splat.trained import write_model


def run_stats(tr: Trainer) -> dict[str, Any]:
    """What ``model/stats.json`` (DVC metrics) holds about a finished run: steps, seconds, CPU
    seconds (all threads: the cost on a loaded machine), Gaussians, the losses of the last 5 curve
    rows, peak RAM (and GPU memory), view counts."""
    last = tr.curves[-min(len(tr.curves), 5) :]
    losses = (
        {k[5:]: round(sum(r[k] for r in last) / len(last), 6) for k in last[0] if k.startswith("loss_")} if last else {}
    )
    stats = {
        "steps": tr.step,
        "seconds": round(tr.elapsed, 2),
        "cpu_seconds": round(tr.cpu_elapsed, 2),
        "gaussians": int(len(tr.params["means"])),
        "final_losses": losses,
        "peak_ram_mb": round(tr.peak_ram_mb, 1),
        "train_views": len(tr.inp.train),
        "test_views": len(tr.inp.test),
    }
    gpu = peak_gpu_mb(tr.device)
    if gpu is not None:
        stats["peak_gpu_mb"] = round(gpu, 1)
    return stats


def train_scene(config: TrainConfig, scene: Scene, models: list[str], progress: bool | None = None) -> dict[str, Any]:
    """Train (or resume) ``scene``'s memory of ``models``; writes ``model/``; returns the stats."""
    tr = train(scene, config, models, progress=progress)
    stats = run_stats(tr)
    write_model(scene.model_dir, tr, stats)
    return stats
