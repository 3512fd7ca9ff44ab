"""Resumable training state: ``checkpoint.pt`` of a :class:`~pipeline.splat.train.Trainer`.

Saved every ``checkpoint_every`` steps (atomically) with the run's provenance; a rerun made by the
same config, inputs, code, device and image size resumes from it, anything else starts over.
Tensors are saved on the CPU and loaded there first (``map_location="cpu"``), then moved to the
trainer's device: random-generator states (the sampling generator, torch's CPU RNG that
DefaultStrategy's splits draw from, and on CUDA every GPU's RNG) must stay CPU byte tensors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pipeline.core.io import atomic_write, same_provenance

log = logging.getLogger(__name__)


def save_checkpoint(tr: Any, path: Path) -> None:
    """Write trainer ``tr``'s state to ``path`` (atomically)."""
    blob = {
        "provenance": tr.inp.provenance,
        "step": tr.step,
        "elapsed": tr.elapsed,
        "cpu_elapsed": tr.cpu_elapsed,
        "curves": tr.curves,
        "params": {k: v.detach().cpu() for k, v in tr.params.items()},
        "optimizers": {k: o.state_dict() for k, o in tr.optimizers.items()},
        "heads": tr.heads.state_dict(),
        "head_opt": tr.head_opt.state_dict() if tr.head_opt else None,
        "strategy": {k: v.cpu() if torch.is_tensor(v) else v for k, v in tr.state.items()},
        "generator": tr.gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.device(tr.device).type == "cuda" else None,
    }
    atomic_write(path, lambda tmp: torch.save(blob, tmp))


def load_checkpoint(tr: Any, path: Path) -> bool:
    """Restore trainer ``tr`` from ``path`` when the checkpoint was made by the same run; returns
    whether it resumed (an unreadable or foreign checkpoint means training from scratch)."""
    if not path.is_file():
        return False
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: start over
        log.warning("%s: unreadable checkpoint (%s); training from scratch", path, exc)
        return False
    if not same_provenance(blob.get("provenance") or {}, tr.inp.provenance):
        log.info("%s: made by another config, inputs, code, device or image size; training from scratch", path)
        return False
    dev = tr.device
    tr.params = torch.nn.ParameterDict({k: torch.nn.Parameter(v.to(dev)) for k, v in blob["params"].items()})
    tr.optimizers = tr.make_optimizers()
    for k, o in tr.optimizers.items():
        o.load_state_dict(blob["optimizers"][k])  # moves the moments to the parameters' device
    tr.heads.load_state_dict(blob["heads"])
    if tr.head_opt is not None and blob["head_opt"] is not None:
        tr.head_opt.load_state_dict(blob["head_opt"])
    tr.state = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in blob["strategy"].items()}
    tr.step, tr.elapsed, tr.curves = blob["step"], blob["elapsed"], blob["curves"]
    tr.cpu_elapsed = blob.get("cpu_elapsed", 0.0)
    tr.gen.set_state(blob["generator"])
    torch.set_rng_state(blob["torch_rng"])
    if blob.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    log.info("resuming %s from step %d", tr.scene.name, tr.step)
    return True
