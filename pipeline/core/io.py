"""Atomic writes, hashing and provenance records.

Every artifact carries the canonical JSON of the config that made it, a hash of its inputs and a
hash of the code that made it (``provenance.json`` beside it, or zarr attrs).
:func:`same_provenance` turns a mismatch into an error or a recompute instead of silent reuse.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import M3Error


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) used for hashing configs."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return obj.as_posix()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def config_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (16 hex chars)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def hash_files(paths: Iterable[Path], root: Path | None = None) -> str:
    """sha256 over the relative names and bytes of ``paths`` (in sorted order), 16 hex chars."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        name = p.relative_to(root).as_posix() if root else p.name
        h.update(name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Create ``path`` atomically: ``write(tmp)`` fills a temp file in the same folder, which then
    replaces ``path`` in one rename; on an exception the temp file is removed and ``path`` is
    left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (sorted keys) atomically."""

    def dump(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
            f.write("\n")

    atomic_write(path, dump)


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise M3Error(f"{path}: not found; run the stage that produces it first") from None
    except json.JSONDecodeError as exc:
        raise M3Error(f"{path}: corrupt JSON ({exc}); delete it and rerun the stage") from exc


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; on success it replaces ``final`` in one rename.

    On an exception the temp folder is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def provenance(stage: str, config: Any, inputs_hash: str, code: str, **extra: Any) -> dict[str, Any]:
    """The provenance record of an artifact: the stage, the canonical config (a dataclass or a
    mapping) and its hash, the hash of the inputs and the hash of the code that made it
    (:func:`pipeline.core.code.code_hash`), plus ``extra`` keys."""
    config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    return {
        "stage": stage,
        "config": json.loads(canonical_json(config)),
        "config_hash": config_hash(config),
        "inputs_hash": inputs_hash,
        "code_hash": code,
        **extra,
    }


IDENTITY = ("stage", "config_hash", "inputs_hash", "code_hash")
"""The provenance keys that identify how an artifact was made."""


def same_provenance(found: dict[str, Any], expected: dict[str, Any]) -> bool:
    """True when ``found`` was made by the same stage, config, inputs and code as ``expected``."""
    return all(found.get(k) == expected.get(k) for k in IDENTITY)
