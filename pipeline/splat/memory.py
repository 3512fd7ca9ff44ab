"""Feature heads: Gaussian memory attention (M3) and the distillation decoder (F-3DGS style).

Memory attention maps a rendered or per-Gaussian principal query ``q [..., l]`` into a model's
feature space through that model's fixed memory bank ``PSC [t, d]``::

    R = softmax(cos(q W, PSC) / tau) PSC        W [l, d]

``W`` is fixed random (as in the reference code) or learnable (``learn_projection``). The
distillation baseline instead decodes a latent of the same size with a small MLP (``hidden``
0: one linear 1x1 conv) ``[..., l] -> [..., d]``. Both heads have the same call signature, so the
training loop and :mod:`pipeline.splat.trained` treat them alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.core.errors import M3Error
from pipeline.core.tensorfile import load_state, save_state

CHUNK = 8192  # query rows per attention step (bounds the [rows, t] similarity matrix)


class MemoryAttention(nn.Module):
    """``R = softmax(cos(q W, PSC) / tau) PSC`` with ``bank [t, d]`` fixed and ``W [l, d]``."""

    bank: Tensor
    bank_unit: Tensor
    proj: Tensor

    def __init__(self, bank: Tensor, query_dim: int, tau: float = 0.05, learn_projection: bool = False, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(query_dim, bank.shape[1], generator=gen) / query_dim**0.5
        self.register_buffer("bank", bank.float().contiguous())
        self.register_buffer("bank_unit", F.normalize(bank.float(), dim=-1))
        if learn_projection:
            self.proj = nn.Parameter(w)
        else:
            self.register_buffer("proj", w)
        self.tau = float(tau)

    def forward(self, q: Tensor) -> Tensor:
        """``q [..., l]`` -> features ``[..., d]`` (attention over the bank, chunked)."""
        flat = q.reshape(-1, q.shape[-1])
        outs = []
        for s in range(0, max(len(flat), 1), CHUNK):
            k = F.normalize(flat[s : s + CHUNK] @ self.proj, dim=-1)
            attn = torch.softmax(k @ self.bank_unit.T / self.tau, dim=-1)
            outs.append(attn @ self.bank)
        return torch.cat(outs).reshape(*q.shape[:-1], self.bank.shape[1])


class Decoder(nn.Module):
    """Distillation decoder ``[..., l] -> [..., d]``: linear (``hidden`` 0) or a 2-layer MLP."""

    def __init__(self, query_dim: int, out_dim: int, hidden: int = 0):
        super().__init__()
        self.net: nn.Module
        if hidden > 0:
            self.net = nn.Sequential(nn.Linear(query_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
        else:
            self.net = nn.Linear(query_dim, out_dim)

    def forward(self, q: Tensor) -> Tensor:
        return self.net(q)


def build_heads(
    method: str,
    banks: dict[str, Tensor],
    query_dims: dict[str, int],
    tau: float = 0.05,
    learn_projection: bool = False,
    decoder_hidden: int = 0,
    seed: int = 0,
) -> nn.ModuleDict:
    """One head per model: memory attention over ``banks[m] [t, d]`` or a decoder to ``d``."""
    heads: dict[str, nn.Module] = {}
    for i, (model, bank) in enumerate(banks.items()):
        if method == "memory":
            heads[model] = MemoryAttention(bank, query_dims[model], tau, learn_projection, seed + i)
        elif method == "distill":
            heads[model] = Decoder(query_dims[model], bank.shape[1], decoder_hidden)
        else:
            raise ValueError(f"build_heads: unknown method '{method}'; use 'memory' or 'distill'")
    return nn.ModuleDict(heads)


def save_heads(path: Path, heads: nn.ModuleDict, spec: dict[str, Any]) -> None:
    """Write the heads' weights (W_m, banks or decoders) and the ``spec`` that rebuilds them
    (tensors + JSON, :mod:`pipeline.core.tensorfile`: loading never runs code)."""
    save_state(path, {"spec": spec, "state": dict(heads.state_dict())})


def load_heads(path: Path, device: str = "cpu") -> tuple[nn.ModuleDict, dict[str, Any]]:
    """Rebuild heads saved by :func:`save_heads`; returns ``(heads, spec)``."""
    path = Path(path)
    if not path.is_file():
        raise M3Error(f"{path}: no memory heads; run `m3 train` for this scene first")
    blob = load_state(path)
    try:
        spec, state = blob["spec"], blob["state"]
        banks = {
            m: state[f"{m}.bank"] if spec["method"] == "memory" else torch.zeros(1, d)
            for m, d in spec["feature_dims"].items()
        }
        heads = build_heads(
            spec["method"], banks, spec["query_dims"], spec["tau"], spec["learn_projection"], spec["decoder_hidden"]
        )
        heads.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise M3Error(f"{path}: not the memory heads of a trained scene ({exc}); retrain with `m3 train`") from None
    return heads.to(device), spec
