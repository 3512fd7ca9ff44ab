"""Typed stage configs read from ``params.yaml``.

Each stage owns one section and one frozen dataclass (``pipeline/<subpackage>/config.py``) whose
fields carry their help as field docstrings (:func:`field_help`): the one place an option is
written; the CLI options are generated from them. :func:`load_config` reads a section, applies
command-line overrides and checks every key and type, so a typo is an error naming the key, the
closest valid name and the file, never a silently ignored setting. The feature adapters' sections
(``features.<model>``) are hloc-style dicts merged over an adapter's ``default_conf`` with
:func:`merge_conf`, which applies the same key checks.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.core.errors import M3Error

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
    return M3Error(f"{where}: unknown key '{key}'; {hint}fix the key (valid keys: {', '.join(sorted(valid))})")


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
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
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
        factory = fields[key].default_factory
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict) and factory is not dataclasses.MISSING:
            value = _merged(dataclasses.asdict(factory()), value)  # a partial section keeps the other defaults
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in kwargs
    ]
    if required:
        raise M3Error(f"{where}: required key '{required[0]}' missing; add it (e.g. `{required[0]}: ...`)")
    return cls(**kwargs)


def section_of(params: dict[str, Any], section: str, where: str) -> dict[str, Any]:
    """The (dotted) ``section`` of ``params``, e.g. ``bank.clip``; ``{}`` when absent."""
    node: Any = params
    for key in section.split("."):
        node = (node or {}).get(key) if isinstance(node, dict) else None
    if node is not None and not isinstance(node, dict):
        raise M3Error(f"{where}: expected a mapping of settings, got {node!r}")
    return dict(node or {})


def load_config(cls: type[T], section: str, path: Path = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> T:
    """``cls`` from the (dotted) ``section`` of the params file, with ``overrides`` (e.g. command-line
    options; ``None`` values are ignored) applied on top; every key and type is checked."""
    where = f"{Path(path).name}: {section}"
    data = section_of(load_params(path), section, where)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        data = _merged(data, given)
        where = f"{where} (with options {', '.join(_option_names(given))})"
    return from_dict(cls, data, where)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` applied; nested mappings merge key by key."""
    out = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if nested else value
    return out


def _option_names(given: dict[str, Any], prefix: str = "") -> list[str]:
    names = []
    for key, value in given.items():
        flag = prefix + key.replace("_", "-")
        names += _option_names(value, flag + ".") if isinstance(value, dict) else ["--" + flag]
    return names


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass ``cls`` (nerfstudio style), by field name.

    Inherited fields come from the base classes; a field without a docstring gets ``""``.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            tree = ast.parse(inspect.getsource(klass).strip())
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:] + [None]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                doc = nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) else ""
                docs[node.target.id] = inspect.cleandoc(doc) if isinstance(doc, str) else ""
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


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
