"""One progress-bar policy for every stage: bars at a terminal, none otherwise or when turned off.

Every long loop of the library wraps itself in :func:`progress` (tqdm on stderr). ``m3
--no-progress`` (or :func:`set_progress`) turns every bar off, ``--progress`` on; by default a
bar shows only when stderr is a terminal, so logs of ``dvc repro`` runs and CI stay clean.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

_ENABLED: bool | None = None  # None: when stderr is a terminal


def set_progress(enabled: bool | None) -> None:
    """Show bars (True), never (False), or when stderr is a terminal (None, the default)."""
    global _ENABLED
    _ENABLED = enabled


def progress_enabled() -> bool:
    """Whether :func:`progress` shows bars now."""
    return sys.stderr.isatty() if _ENABLED is None else _ENABLED


def progress(iterable: Iterable[Any] | None = None, show: bool | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar (``kwargs``: desc, total, unit, initial, ...) under the policy above (``show``
    overrides it for this bar)."""
    from tqdm import tqdm  # (not for `m3 <command> --help`, which sets the policy)

    return tqdm(iterable, disable=not (progress_enabled() if show is None else show), **kwargs)
