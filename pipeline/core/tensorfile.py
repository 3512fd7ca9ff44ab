"""Files of tensors + JSON that loading can never turn into code (safetensors, no pickle).

A trained memory and a training checkpoint travel between machines (a DVC remote, a colleague's
scene folder), so reading them must not run anything: :func:`save_state` writes a nested state
(dicts, lists, numbers, strings, ``None`` and tensors, e.g. an optimiser's ``state_dict()``) as a
safetensors file whose tensors are the state's tensors and whose metadata holds the rest as JSON
(each tensor replaced by a reference to its entry). :func:`load_state` rebuilds the same structure;
a file that is not such a file (truncated, foreign, a pickle) is an :class:`M3Error` naming it.

Dicts with keys other than strings (an optimiser state's parameter indices) and tuples are
encoded so that they come back as they were.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipeline.core.errors import M3Error
from pipeline.core.io import atomic_write

FORMAT = "m3-state/1"
_TENSOR, _DICT, _TUPLE = "__tensor__", "__dict__", "__tuple__"


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if torch.is_tensor(obj):
        key = path or "tensor"
        tensors[key] = obj.detach().cpu().contiguous().clone()  # safetensors refuses shared storage
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not ({_TENSOR, _DICT, _TUPLE} & set(obj)):
            return {k: _encode(v, tensors, f"{path}.{k}" if path else k) for k, v in obj.items()}
        items = [[k, _encode(v, tensors, f"{path}.{k}" if path else str(k))] for k, v in obj.items()]
        for k, _ in items:
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"save_state: key {k!r} at {path or '<root>'} is not a JSON scalar")
        return {_DICT: items}
    if isinstance(obj, (list, tuple)):
        out = [_encode(v, tensors, f"{path}.{i}" if path else str(i)) for i, v in enumerate(obj)]
        return {_TUPLE: out} if isinstance(obj, tuple) else out
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    raise TypeError(f"save_state: {type(obj).__name__} at {path or '<root>'} is not a tensor or JSON value")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {_TENSOR}:
        return tensors[obj[_TENSOR]]
    if set(obj) == {_DICT}:
        return {k: _decode(v, tensors) for k, v in obj[_DICT]}
    if set(obj) == {_TUPLE}:
        return tuple(_decode(v, tensors) for v in obj[_TUPLE])
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_state(path: Path, state: Any) -> None:
    """Write ``state`` (nested dicts/lists/tuples of tensors and JSON values) to ``path`` atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_encode(state, tensors, ""))
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT, "state": skeleton}))


def load_state(path: Path, device: str = "cpu") -> Any:
    """The state :func:`save_state` wrote to ``path``, tensors on ``device``; never runs code.

    Raises :class:`M3Error` naming the file when it is missing, not a safetensors file, or not one
    of these (a foreign or tampered file).
    """
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    if not path.is_file():
        raise M3Error(f"{path}: not found; run the stage that writes it")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return _decode(json.loads(meta["state"]), tensors)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise M3Error(
            f"{path}: not an m3 tensor file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "restore it (`dvc checkout`) or rerun the stage that writes it"
        ) from None
