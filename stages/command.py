"""How a stage becomes an ``m3`` command: options generated from its config dataclass.

Every option is written once, as a field of the stage's frozen config dataclass with its help as
a field docstring (``pipeline/<subpackage>/config.py``). :func:`command` turns a function into a
typer command with one ``--option`` per scalar or list field of that dataclass (same name, the
field docstring as help; an option not given keeps the params.yaml value; fields of nested
sections are ``--<section>.<field>``), plus the function's own arguments.
The function receives :class:`Options`, whose :meth:`Options.load` reads the params section,
applies the given options and checks every key and type, in one place for all commands.

User errors (:class:`M3Error`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import typer

from pipeline.core.config import PARAMS_FILE, field_help, load_config
from pipeline.core.errors import M3Error

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

SCENE_HELP = "scene name (folder under data/) or a path to a scene folder"
PARAMS = typer.Option(PARAMS_FILE, help="params file to read this stage's section from")
SCENE = typer.Argument(..., help=SCENE_HELP)


def setup_logging(verbose: bool = False) -> None:
    """Rich console logging for the ``pipeline`` and ``stages`` loggers (idempotent)."""
    from rich.logging import RichHandler

    for name in ("pipeline", "stages"):
        log = logging.getLogger(name)
        if not any(isinstance(h, RichHandler) for h in log.handlers):
            handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
            handler.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(handler)
        log.setLevel(logging.DEBUG if verbose else logging.INFO)
        log.propagate = False


def reports_errors(fn: F) -> F:
    """Turn :class:`M3Error` into one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except M3Error as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class Options(Generic[T]):
    """The config options given on the command line (nested sections as dicts; absent: params.yaml decides)."""

    cls: type[T]
    given: dict[str, Any]

    def load(self, section: str, params: Path = PARAMS_FILE) -> T:
        """The config of ``section`` (dotted, e.g. ``bank.clip``) in ``params``, with the given options applied."""
        return load_config(self.cls, section, params, self.given)


def _option_type(tp: Any) -> Any | None:
    """The CLI annotation of a field type (made optional), or None for fields kept to params.yaml."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _option_type(args[0]) if len(args) == 1 else None
    if tp in (int, float, str, bool) or origin is typing.Literal:
        return tp | None
    if origin is list and typing.get_args(tp)[0] in (int, float, str):
        return tp | None
    return None  # mappings and nested sections: params.yaml only


def config_parameters(cls: type, prefix: str = "") -> list[inspect.Parameter]:
    """One keyword-only option per field of dataclass ``cls`` that the command line can hold;
    fields of a nested section become ``--<section>.<field>`` (parameter ``<section>__<field>``)."""
    hints = typing.get_type_hints(cls, include_extras=False)
    docs = field_help(cls)
    params = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            params += config_parameters(hints[f.name], f"{prefix}{f.name}.")
            continue
        tp = _option_type(hints[f.name])
        if tp is None:
            continue
        flag = prefix + f.name.replace("_", "-")
        decls = [f"--{flag}/--{f.metadata.get('off', 'no-' + flag)}"] if hints[f.name] is bool else [f"--{flag}"]
        text = " ".join(docs[f.name].split())
        option = typer.Option(None, *decls, help=text or None, show_default=False)
        name = (prefix + f.name).replace(".", "__")
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=tp))
    return params


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"cpu__iterations": 5, "seed": 1}`` -> ``{"cpu": {"iterations": 5}, "seed": 1}`` (None dropped)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None or (isinstance(value, list) and not value):
            continue
        *path, last = key.split("__")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def command(cls: type[T]) -> Callable[[F], F]:
    """Decorator: ``fn(options: Options[cls], ...)`` -> a typer command with ``fn``'s own
    parameters plus one option per field of ``cls`` (see the module docstring)."""

    def deco(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for name, p in sig.parameters.items() if name != "options"]
        fields = config_parameters(cls)
        clash = {p.name for p in own} & {p.name for p in fields}
        if clash:
            raise TypeError(f"{fn.__qualname__}: parameters {sorted(clash)} shadow fields of {cls.__name__}")
        names = {p.name for p in fields}

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            given = _nest({k: kwargs.pop(k) for k in names})
            return fn(options=Options(cls, given), **kwargs)

        params = own + fields
        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return reports_errors(wrapper)  # type: ignore[return-value]

    return deco
