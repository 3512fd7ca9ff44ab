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
import re
import shutil
import tempfile
import uuid
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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import (umask can only be read by setting it)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Create ``path`` atomically: ``write(tmp)`` fills a temp file in the same folder, which then
    replaces ``path`` in one rename; on an exception the temp file is removed and ``path`` is
    left as it was. The file gets the usual permissions (0666 less the umask), as ``open`` gives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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

    On an exception the temp folder is removed and ``final`` is left as it was. For a stage's own
    output folders only: a folder a user names goes through :func:`output_dir`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp's 0700 would make the output private
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


OUTPUT_MARKER = ".m3-output.json"
"""The file in a tool's output folder naming the command that wrote it and its files."""


def output_listing(final: Path, command: str) -> list[str]:
    """The files an earlier output of ``command`` wrote in ``final`` ([] for a new or empty folder);
    :class:`M3Error` for a file, or a folder holding anything else."""
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise M3Error(f"{final}: is a file, not a folder; give a folder (new or empty) for the output")
    try:
        if not final.exists() or not any(final.iterdir()):
            return []
    except OSError as exc:
        raise M3Error(f"{final}: cannot read the output folder ({exc.strerror or exc}); give another one") from None
    marker = final / OUTPUT_MARKER
    try:
        record = json.loads(marker.read_text()) if marker.is_file() else {}
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict) or record.get("command") != command:
        raise M3Error(
            f"{final}: not empty and not an earlier output of `m3 {command}`; nothing was written "
            "(m3 never deletes or overwrites files it did not write): give a new or empty folder"
        )
    return [str(f) for f in record.get("files") or []]


@contextlib.contextmanager
def output_dir(final: Path, command: str, replace: bool = True) -> Iterator[Path]:
    """Yield an empty folder to write ``command``'s outputs into; on success its files move into ``final``.

    ``final`` must be new, empty, or an earlier output of the same ``command`` (its
    :data:`OUTPUT_MARKER` lists the files it wrote): anything else is an :class:`M3Error` before
    anything is written, so an output option never deletes or overwrites what m3 did not write. With
    ``replace`` the earlier output's files that this one does not write again are removed (only
    those); without, they are kept (renders of other views). On an exception nothing in ``final``
    changes. Files only (no subfolders).
    """
    final = Path(final)
    earlier = output_listing(final, command)
    created = not final.exists()
    try:
        final.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final, prefix=".m3-tmp-"))
    except OSError as exc:
        raise M3Error(f"{final}: cannot write the output ({exc.strerror or exc}); give a writable folder") from None
    try:
        yield tmp
        _commit_output(tmp, final, command, earlier, replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and final.is_dir() and not any(final.iterdir()):
            final.rmdir()


def _commit_output(tmp: Path, final: Path, command: str, earlier: list[str], replace: bool) -> None:
    """Move the files written in ``tmp`` into ``final``, drop (``replace``) or keep the earlier ones, mark it."""
    names = sorted(p.name for p in tmp.iterdir())
    foreign = [n for n in names if (final / n).exists() and n not in earlier]
    if foreign:
        raise M3Error(f"{final / foreign[0]}: exists and was not written by `m3 {command}`; give another folder")
    try:
        for name in names:
            os.replace(tmp / name, final / name)
        stale = [n for n in earlier if n not in names and Path(n).name == n and n != OUTPUT_MARKER]
        for name in stale if replace else []:
            (final / name).unlink(missing_ok=True)
        kept = [] if replace else [n for n in stale if (final / n).is_file()]
        write_json(final / OUTPUT_MARKER, {"command": command, "files": sorted({*names, *kept})})
    except OSError as exc:
        raise M3Error(f"{final}: cannot write the output ({exc.strerror or exc}); give a writable folder") from None


def slug(text: str) -> str:
    """A folder name for a query text (``a yellow duck`` -> ``a-yellow-duck``); a text that the name
    cannot spell (other scripts, punctuation, over 60 characters) gets a hash of it appended, so
    that different texts never share a folder (``黄色的鸭子`` -> ``query-<8 hex>``)."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]
    if name and re.fullmatch(r"[A-Za-z0-9 _-]{1,60}", text.strip()):
        return name
    return f"{name or 'query'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def provenance(stage: str, config: Any, inputs_hash: str, code: str, **extra: Any) -> dict[str, Any]:
    """The provenance record of an artifact: the stage, the canonical config (a dataclass or a
    mapping) and its hash, the hash of the inputs and the hash of the code that made it
    (:func:`pipeline.core.code.code_hash`), plus ``extra`` keys."""
    config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) and not isinstance(config, type) else config
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
