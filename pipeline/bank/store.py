"""Stored memory banks: a bank ``[t, d]`` as one zarr array with its provenance, its content hash,
and the check that refuses a bank built from other features than the ones it is used with.

Every chunk carries a crc32c checksum, and :func:`load_bank` compares the bank it read with the
content hash its provenance recorded: a flipped byte or a missing chunk is an error naming the
bank and the fix, never a different bank (or NaN losses in training)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import M3Error


def bank_hash(bank: np.ndarray) -> str:
    """sha256 of the bank's dtype, shape and bytes (16 hex chars)."""
    h = hashlib.sha256(f"{bank.dtype.str}{bank.shape}".encode())
    h.update(np.ascontiguousarray(bank).tobytes())
    return h.hexdigest()[:16]


def save_bank(path: Path, bank: np.ndarray, attrs: dict[str, Any], chunk_rows: int = 4096) -> None:
    """Write ``bank [t, d]`` as one zarr array with ``attrs``, atomically (temp folder + rename)."""
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    from pipeline.core.io import atomic_dir

    with atomic_dir(Path(path)) as tmp:
        arr = zarr.create_array(
            store=zarr.storage.LocalStore(tmp),
            shape=bank.shape,
            chunks=(max(1, min(chunk_rows, len(bank))), bank.shape[1]),
            dtype=bank.dtype,
            compressors=(ZstdCodec(), Crc32cCodec()),
            config={"write_empty_chunks": True},
        )
        arr[:] = bank
        arr.attrs.update(attrs)


def load_bank(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A stored bank: ``(bank np.float32 [t, d], attrs)``; attrs hold its ``provenance``."""
    import zarr

    path = Path(path)
    try:
        arr = zarr.open_array(zarr.storage.LocalStore(path, read_only=True), mode="r")
    except FileNotFoundError:
        raise M3Error(f"{path}: no memory bank; run `m3 bank` for this scene and model first") from None
    attrs: dict[str, Any] = arr.attrs.asdict()
    if "provenance" not in attrs:
        raise M3Error(f"{path}: bank without provenance (incomplete or foreign); delete it and rerun `m3 bank`")
    fix = f"restore it with `dvc checkout {path}` or rerun `m3 bank` (`dvc repro -f`)"
    try:
        raw = np.asarray(arr[:])
    except (RuntimeError, ValueError, OSError) as exc:  # checksum mismatch, damaged compression
        raise M3Error(f"{path}: the bank is corrupt ({str(exc).splitlines()[0][:120]}); {fix}") from None
    recorded = (attrs.get("provenance") or {}).get("bank_hash")
    if recorded and bank_hash(raw) != recorded:  # a missing chunk reads as zeros: caught here
        raise M3Error(f"{path}: the bank's content does not match its recorded hash (missing or damaged chunk); {fix}")
    return raw.astype(np.float32), attrs


FEATURES_IDENTITY = ("config_hash", "inputs_hash", "code_hash")
"""The keys of the features' provenance that a bank records and is checked against."""


def check_bank_matches(bank_attrs: dict[str, Any], features_attrs: dict[str, Any], what: str = "bank") -> None:
    """Refuse a bank built from other features than ``features_attrs`` describe (raises :class:`M3Error`).

    Compares the features' config, inputs and code hashes recorded in the bank's provenance with
    the provenance of the features it is about to be used with.
    """
    recorded = (bank_attrs.get("provenance") or {}).get("features") or {}
    current = features_attrs.get("provenance") or {}
    keys = FEATURES_IDENTITY
    if not recorded or any(recorded.get(k) != current.get(k) for k in keys):
        found = ", ".join(f"{k}={recorded.get(k)}" for k in keys)
        now = ", ".join(f"{k}={current.get(k)}" for k in keys)
        model = (bank_attrs.get("provenance") or {}).get("config", {}).get("model", "<model>")
        raise M3Error(
            f"{what}: built from other features ({found}) than the current ones ({now}); "
            f"rebuild it with `m3 bank <scene> --model {model}` (or dvc repro)"
        )
