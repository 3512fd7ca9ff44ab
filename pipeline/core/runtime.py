"""Where code runs: the device a config section asks for, and the process's peak (GPU) memory."""

from __future__ import annotations

import resource

import torch

from pipeline.core.errors import M3Error

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str, section: str) -> str:
    """``cuda`` or ``cpu`` for a section's ``device`` (``auto``: CUDA when a GPU is visible;
    ``cuda:<n>`` names one GPU); :class:`M3Error` naming ``<section>.device`` otherwise."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise M3Error(f"{section}.device: {device!r} is not one of auto, cpu, cuda (or cuda:<n>); fix it")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise M3Error(f"{section}.device: {device} requested but no GPU is visible; set it to auto or cpu")
    return device


def peak_ram_mb() -> float:
    """Peak resident memory of this process so far (MiB, ``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_gpu_mb(device: str) -> float | None:
    """Peak CUDA memory allocated by torch on ``device`` so far (MiB), None off CUDA."""
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
