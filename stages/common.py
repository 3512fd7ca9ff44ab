"""Glue shared by the stage adapters: logging, error reporting, config overrides."""
from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from typing import Any, Callable, TypeVar

import typer

from pipeline import M3Error, logger

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def setup_logging(verbose: bool = False) -> None:
    """Rich console logging for the ``m3`` package logger (idempotent)."""
    from rich.logging import RichHandler

    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


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


def override(cfg: T, **values: Any) -> T:
    """``cfg`` with the CLI options that were given (not ``None``) replaced."""
    given = {k: v for k, v in values.items() if v is not None}
    return dataclasses.replace(cfg, **given) if given else cfg  # type: ignore[type-var]


PARAMS_HELP = "params file to read this stage's section from"
SCENE_HELP = "scene name (folder under data/) or a path to a scene folder"
