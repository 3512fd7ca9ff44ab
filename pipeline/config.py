"""Typed stage configs read from ``params.yaml``.

Each stage owns one top-level section and one dataclass. Loading checks every key, so a typo
is an error naming the key, the closest valid name and the file, never a silently ignored
setting. Per-model sections (``features.<model>``, ``bank.<model>``) are plain dicts merged over
an adapter's ``default_conf`` with :func:`merge_conf`, which applies the same checks.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from . import M3Error

T = TypeVar("T")
PARAMS_FILE = Path("params.yaml")
_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # exponent floats PyYAML leaves as str


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Read the whole params file (``{}`` if it is empty)."""
    path = Path(path)
    if not path.is_file():
        raise M3Error(f"{path}: params file not found; run from the project root or pass --params")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise M3Error(f"{path}: not valid YAML ({exc}); fix the syntax") from exc
    if not isinstance(data, dict):
        raise M3Error(f"{path}: expected a mapping of sections at the top level")
    return data


def _unknown_key(key: str, valid: list[str], where: str) -> M3Error:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return M3Error(
        f"{where}: unknown key '{key}'; {hint}fix the key (valid keys: {', '.join(sorted(valid))})"
    )


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (dataclasses recurse)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise M3Error(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except M3Error as exc:
                errors.append(str(exc))
        raise M3Error(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise M3Error(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise M3Error(f"{where}: expected a list, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise M3Error(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 (PyYAML) reads 6e-4 (no dot) as a string
    if tp in (int, float, str, bool) and not (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    ):
        raise M3Error(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad types raise :class:`M3Error`."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(str(key), list(fields), where)
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def load_section(cls: type[T], section: str, path: Path = PARAMS_FILE) -> T:
    """The dataclass config of one stage from its ``params.yaml`` section (defaults if absent)."""
    params = load_params(path)
    return from_dict(cls, params.get(section) or {}, f"{Path(path).name}: {section}")


def merge_conf(default: dict[str, Any], user: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """hloc-style conf merge: ``user`` overrides ``default``; keys absent from ``default`` raise."""
    merged = dict(default)
    for key, value in (user or {}).items():
        if key not in default:
            raise _unknown_key(str(key), list(default), where)
        if isinstance(default[key], dict) and isinstance(value, dict):
            merged[key] = merge_conf(default[key], value, f"{where}.{key}")
        else:
            merged[key] = value
    return merged


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as a plain dict (for provenance and logging)."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
