"""How a stage becomes an ``m3`` command: options generated from its config dataclass.

Every option is written once, as a field of the stage's frozen config dataclass with its help as
a field docstring (``pipeline/<subpackage>/config.py``). :func:`command` turns a function into a
typer command with one ``--option`` per scalar or list field of that dataclass (same name, the
field docstring as help; an option not given keeps the params.yaml value; fields of nested
sections are ``--<section>.<field>``), plus the function's own arguments.
The function receives :class:`Options`, whose :meth:`Options.load` reads the params section,
applies the given options and checks every key and type, in one place for all commands. A
command reading several sections takes a composite dataclass (``m3 features``: the cluster
section's fields plus one nested section per feature adapter) and loads each part on its own
(:meth:`Options.fields_of`, :meth:`Options.section`).

User errors (:class:`M3Error`) become one line on stderr and exit status 2.

A scene argument is a scene name (a folder under ``data/``; letters, digits, ``-``, ``_``, ``.``),
a path to a scene folder, or the address of the DVC stage running the command: ``dvc.yaml``'s
commands pass ``"$DVC_STAGE"`` (``frames@demo``, ``features@demo-clip``), so that no scene or
model name from ``params.yaml`` is ever parsed by a shell (:func:`scene_target`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import re
import signal
import sys
import threading
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import typer

from pipeline.core.config import PARAMS_FILE, check_scene_name, field_help, load_config, section_class
from pipeline.core.errors import M3Error

if TYPE_CHECKING:
    from pipeline.core.scene import Scene

T = TypeVar("T")
S = TypeVar("S")
F = TypeVar("F", bound=Callable[..., Any])

SCENE_HELP = "scene name (folder under data/), a path to a scene folder, or a DVC stage address (frames@demo)"
PARAMS = typer.Option(PARAMS_FILE, help="params file to read this stage's section from")
SCENE = typer.Argument(..., help=SCENE_HELP)


_STAGE_ADDRESS = re.compile(r"(?:[^@]*:)?(?P<stage>[a-z_]+)@(?P<item>.*)")
"""``[<dvc.yaml path>:]<stage>@<item>``: DVC's address of a foreach/matrix stage (``$DVC_STAGE``)."""


def scene_target(value: str) -> tuple[Scene, str | None]:
    """The scene (and, for a ``features``/``bank`` stage address, the model) that a scene argument names.

    Under DVC (``value`` is ``$DVC_STAGE``): ``features@demo-clip`` -> ``(data/demo, "clip")`` (model
    names hold no ``-``), ``train@demo`` -> ``(data/demo, None)``. Otherwise ``demo`` -> ``(data/demo,
    None)``, ``path/to/scene`` -> that folder. A scene *name* that is not valid
    (:data:`pipeline.core.config.SCENE_NAME`) is an :class:`M3Error`.
    """
    from pipeline.core.scene import Scene  # (numpy: not for `m3 <command> --help`)

    model = None
    address = _STAGE_ADDRESS.fullmatch(value) if value == os.environ.get("DVC_STAGE") else None
    if address:
        value = address["item"]
        if address["stage"] in ("features", "bank"):
            value, _, model = value.rpartition("-")
        check_scene_name(value, "scene")
    elif len(Path(value).parts) == 1 and not Path(value).is_absolute():
        check_scene_name(value, "scene")
    return Scene.resolve(value), model


def resolve_scene(value: str) -> Scene:
    """The scene a scene argument names (:func:`scene_target`)."""
    return scene_target(value)[0]


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


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised in the main thread so that ``finally`` blocks and atomic writes clean up."""


def stop_on_sigterm() -> None:
    """SIGTERM stops a command as Ctrl-C does (:class:`Terminated`), not with a native stack trace."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def reports_errors(fn: F) -> F:
    """Turn :class:`M3Error` into one line on stderr and exit status 2 (no traceback); SIGTERM
    into one line and status 143 (what was written completely is kept: a rerun resumes)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except M3Error as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(2) from None
        except Terminated:
            print("stopped by SIGTERM; completed outputs and checkpoints are kept (a rerun resumes)", file=sys.stderr)
            raise typer.Exit(143) from None

    return wrapper  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class Options(Generic[T]):
    """The config options given on the command line (nested sections as dicts; absent: params.yaml decides)."""

    cls: type[T]
    given: dict[str, Any]
    prefix: str = ""
    """What the options' flags start with after ``--`` (``clip.`` for the section :meth:`section` gives)."""

    def load(self, section: str, params: Path = PARAMS_FILE) -> T:
        """The config of ``section`` (dotted, e.g. ``bank.clip``) in ``params``, with the given options applied."""
        return load_config(self.cls, section, params, self.given, self.prefix)

    def section(self, key: str, cls: type[S]) -> Options[S]:
        """The options given for nested section ``key`` (``--<key>.<field>``) of a composite command
        config, as options of ``cls`` (the section's own params section can then be loaded)."""
        return Options(cls, self.given.get(key) or {}, f"{self.prefix}{key}.")

    def fields_of(self, cls: type[S]) -> Options[S]:
        """The options given for the fields of ``cls``, a base class of a composite command config."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return Options(cls, {k: v for k, v in self.given.items() if k in names}, self.prefix)


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
        section = section_class(hints[f.name])
        if section is not None:
            params += config_parameters(section, f"{prefix}{f.name}.")
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
