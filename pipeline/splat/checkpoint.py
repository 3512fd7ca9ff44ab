"""Resumable training state: ``checkpoint.safetensors`` of a :class:`~pipeline.splat.train.Trainer`.

Saved every ``checkpoint_every`` steps and at least every ``checkpoint_minutes`` (atomically) with
the run's provenance; a rerun made by the same config, inputs, code, device and image size resumes
from it, anything else starts over. The file holds tensors and JSON only
(:mod:`pipeline.core.tensorfile`): a checkpoint from a shared folder or remote never runs code when
read. Tensors are loaded on the CPU first, then moved to the trainer's device: random-generator
states (the sampling generator, torch's CPU RNG that DefaultStrategy's splits draw from, and on CUDA
every GPU's RNG) must stay CPU byte tensors.

The checkpoint is not a DVC output of ``train`` (an output DVC must keep between runs, ``persist``,
would disable the stage's run-cache, so trained memories could not be shared): it lies beside the
outputs in ``model/`` and DVC leaves it alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.core.errors import M3Error
from pipeline.core.io import same_provenance
from pipeline.core.tensorfile import load_state, save_state

if TYPE_CHECKING:  # train imports this module
    from pipeline.splat.train import Trainer

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.safetensors"


def save_checkpoint(tr: Trainer, path: Path) -> None:
    """Write trainer ``tr``'s state to ``path`` (atomically)."""
    save_state(path, tr.state_dict())


def load_checkpoint(tr: Trainer, path: Path) -> bool:
    """Restore trainer ``tr`` from ``path`` when the checkpoint was made by the same run; returns
    whether it resumed (an unreadable or foreign checkpoint means training from scratch)."""
    if not path.is_file():
        return False
    try:
        blob = load_state(path)
    except M3Error as exc:  # a truncated or foreign file: start over
        log.warning("%s; training from scratch", exc)
        return False
    if not isinstance(blob, dict) or not same_provenance(blob.get("provenance") or {}, tr.inp.provenance):
        log.info("%s: made by another config, inputs, code, device or image size; training from scratch", path)
        return False
    try:
        tr.load_state_dict(blob)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # a tampered or half-written state
        raise M3Error(
            f"{path}: a damaged checkpoint of this run ({type(exc).__name__}: {exc}); delete it to train from scratch"
        ) from None
    log.info("resuming %s from step %d", tr.scene.name, tr.step)
    return True


def rng_state(device: str) -> dict[str, Any]:
    """torch's CPU RNG state and, on CUDA, every GPU's (CPU byte tensors)."""
    cuda = torch.cuda.get_rng_state_all() if torch.device(device).type == "cuda" else None
    return {"torch_rng": torch.get_rng_state(), "cuda_rng": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda_rng"]))
