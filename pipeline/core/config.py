"""Typed stage configs read from ``params.yaml``.

Each stage owns one section and one frozen dataclass (``pipeline/<subpackage>/config.py``) whose
fields carry their help as field docstrings (:func:`field_help`): the one place an option is
written; the CLI options are generated from them. :func:`load_config` reads a section, applies
command-line overrides and checks every key and type, so a typo is an error naming the key, the
closest valid name and the file, never a silently ignored setting. Numeric fields carry their
range in their type (``Count``, ``Fraction``, ... : ``Annotated`` with a :class:`Range`), checked
with the type, and the params file is read as YAML 1.2 reads numbers, so ``4e-4`` is a float and a
quoted ``"4e-4"`` a string (an error for a number). An unknown top-level section is an error too.
The feature adapters' sections (``features.<model>``) work the same way: each adapter declares its
config dataclass (``config_class``, :mod:`pipeline.features.config`) and
:func:`pipeline.features.models.resolve_conf` builds it with :func:`from_dict`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

from pipeline.core.errors import M3Error

T = TypeVar("T")
PARAMS_FILE = Path("params.yaml")
SECTIONS = (
    "scenes", "models", "demo", "frames", "poses", "features", "bank", "train", "evaluate", "cluster",
    "query", "export", "view", "serve", "ask",
)  # fmt: skip
"""The top-level sections of the params file (``stages/params.py`` documents each)."""
SCENE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A scene name: letters, digits, ``-``, ``_``, ``.`` (it becomes a folder and a DVC stage name)."""


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric field (``Annotated[int, Range(1)]``); NaN and infinities are never in range."""

    lo: float | None = None
    hi: float | None = None
    above: bool = False
    """``lo`` itself is excluded (a positive float: ``Range(0, above=True)``)."""
    below: bool = False
    """``hi`` itself is excluded."""

    def check(self, value: float, where: str) -> None:
        ok = math.isfinite(value)
        ok = ok and (self.lo is None or (value > self.lo if self.above else value >= self.lo))
        ok = ok and (self.hi is None or (value < self.hi if self.below else value <= self.hi))
        if not ok:
            raise M3Error(f"{where}: {value!r} is out of range; use {self.describe()}")

    def describe(self) -> str:
        lo = None if self.lo is None else f"{'>' if self.above else '>='} {self.lo:g}"
        hi = None if self.hi is None else f"{'<' if self.below else '<='} {self.hi:g}"
        return " and ".join(b for b in (lo, hi) if b) or "a finite number"


Count = Annotated[int, Range(1)]
"""A positive whole number (steps, views, pixels, ...)."""
Natural = Annotated[int, Range(0)]
"""A whole number >= 0."""
Fraction = Annotated[float, Range(0, 1)]
"""A probability or share in [0, 1]."""
Positive = Annotated[float, Range(0, above=True)]
"""A float > 0 (learning rates, scales, temperatures)."""
NonNegative = Annotated[float, Range(0)]
"""A float >= 0."""
Opacity = Annotated[float, Range(0, 1, above=True, below=True)]
"""An opacity strictly between 0 and 1 (its logit is stored)."""
Cosine = Annotated[float, Range(-1, 1)]
"""A cosine in [-1, 1]."""
Port = Annotated[int, Range(0, 65535)]
"""A TCP port (0: any free one)."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _check_range(value: Any, tp: Any, where: str) -> None:
    """Apply the :class:`Range` of ``tp`` (also inside ``X | None`` and ``dict[str, X]``) to ``value``."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        for bound in typing.get_args(tp)[1:]:
            if isinstance(bound, Range) and isinstance(value, (int, float)) and not isinstance(value, bool):
                bound.check(value, where)
    elif origin in (typing.Union, types.UnionType) and value is not None:
        for arg in typing.get_args(tp):
            if arg is not type(None):
                _check_range(value, arg, where)
    elif origin is dict and isinstance(value, dict):
        for k, v in value.items():
            _check_range(v, typing.get_args(tp)[1], f"{where}.{k}")


class Checked:
    """Base of the stage configs: every field's :class:`Range` is checked when one is built, in code
    as from the params file (which checks first, naming the file and section)."""

    def __post_init__(self) -> None:
        cls: type = type(self)  # (to mypy a type[Checked] is not Hashable, which functools.cache asks)
        hints = _hints(cls)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            _check_range(getattr(self, f.name), hints[f.name], f"{type(self).__name__}.{f.name}")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading numbers as YAML 1.2 (and DVC) do: ``6e-4`` is a float, not a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Read the whole params file (``{}`` if it is empty); unknown top-level sections, a ``scenes``
    list of other than valid scene names and a ``models`` list of other than names are errors."""
    path = Path(path)
    if not path.is_file():
        raise M3Error(f"{path}: params file not found; run from the project root or pass --params")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader) or {}  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise M3Error(f"{path}: not valid YAML ({' '.join(str(exc).split())}); fix the syntax") from None
    if not isinstance(data, dict):
        raise M3Error(f"{path}: expected a mapping of sections at the top level")
    for key in data:
        if key not in SECTIONS:
            raise _unknown_key(str(key), list(SECTIONS), f"{path}: top-level section")
    for key in ("scenes", "models"):
        items = data.get(key)
        if items is not None and (not isinstance(items, list) or not all(isinstance(i, str) for i in items)):
            raise M3Error(f"{path}: {key} must be a list of names, got {items!r}")
    for name in data.get("scenes") or []:
        check_scene_name(name, f"{path}: scenes")
    return data


def check_scene_name(name: str, where: str) -> str:
    """``name`` if it is a valid scene name (:data:`SCENE_NAME`), else :class:`M3Error`."""
    if not SCENE_NAME.fullmatch(name) or name in (".", ".."):
        raise M3Error(
            f"{where}: scene name {name!r} is not allowed (it becomes a folder and a DVC stage name); "
            "use letters, digits, '-', '_' and '.', starting with a letter or digit"
        )
    return name


def _unknown_key(key: str, valid: list[str], where: str) -> M3Error:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return M3Error(f"{where}: unknown key '{key}'; {hint}fix the key (valid keys: {', '.join(sorted(valid))})")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (dataclasses recurse, ``Annotated`` ranges apply)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        value = _coerce(value, base, where)
        for bound in meta:
            if isinstance(bound, Range):
                bound.check(value, where)
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
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
        _, arg = typing.get_args(tp) or (str, Any)
        return {k: _coerce(v, arg, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        quoted = " (a quoted number is a string: remove the quotes)" if tp in (int, float) and _numeric(value) else ""
        raise M3Error(f"{where}: expected {tp.__name__}, got {value!r}{quoted}")
    return value


def _numeric(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, str)


def from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad types raise :class:`M3Error`."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(str(key), list(fields), where)
        factory = fields[key].default_factory
        nested = section_class(hints[key]) is not None and isinstance(value, dict)
        if nested and factory is not dataclasses.MISSING:
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


def section_class(tp: Any) -> type | None:
    """The dataclass of a nested section's field type ``C`` or ``C | None`` (``Annotated`` aside), else None."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def section_of(params: dict[str, Any], section: str, where: str) -> dict[str, Any]:
    """The (dotted) ``section`` of ``params``, e.g. ``bank.clip``; ``{}`` when absent."""
    node: Any = params
    for key in section.split("."):
        node = (node or {}).get(key) if isinstance(node, dict) else None
    if node is not None and not isinstance(node, dict):
        raise M3Error(f"{where}: expected a mapping of settings, got {node!r}")
    return dict(node or {})


def load_config(
    cls: type[T],
    section: str,
    path: Path = PARAMS_FILE,
    overrides: dict[str, Any] | None = None,
    option_prefix: str = "",
) -> T:
    """``cls`` from the (dotted) ``section`` of the params file, with ``overrides`` (e.g. command-line
    options ``--<option_prefix><key>``; ``None`` values are ignored) applied on top; every key and
    type is checked."""
    where = f"{Path(path).name}: {section}"
    data = section_of(load_params(path), section, where)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        data = _merged(data, given)
        where = f"{where} (with options {', '.join(_option_names(given, option_prefix))})"
    return from_dict(cls, data, where)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` applied; nested mappings merge key by key."""
    out = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if nested else value
    return out


def _option_names(given: dict[str, Any], prefix: str = "") -> list[str]:
    """The flags of the ``given`` options: ``--<section>.<field-name>`` (a section keeps its ``_``)."""
    names = []
    for key, value in given.items():
        if isinstance(value, dict):
            names += _option_names(value, f"{prefix}{key}.")
        else:
            names.append(f"--{prefix}{key.replace('_', '-')}")
    return names


@functools.cache
def _class_bodies(filename: str) -> dict[str, list[ast.stmt]]:
    """Name -> body of each top-level class of the source file ``filename``, parsed once (the CLI
    reads the field docstrings of dozens of classes per ``--help``)."""
    tree = ast.parse(Path(filename).read_text(), filename)
    return {node.name: node.body for node in tree.body if isinstance(node, ast.ClassDef)}


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass ``cls`` (nerfstudio style), by field name.

    Inherited fields come from the base classes (top-level classes of a source file); a field
    without a docstring gets ``""``.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            body = _class_bodies(inspect.getsourcefile(klass) or "").get(klass.__qualname__, [])
        except (OSError, TypeError):
            continue
        for node, nxt in zip(body, body[1:] + [None]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                doc = nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) else ""
                docs[node.target.id] = inspect.cleandoc(doc) if isinstance(doc, str) else ""
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as a plain dict (for provenance and logging)."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type) else dict(cfg)
