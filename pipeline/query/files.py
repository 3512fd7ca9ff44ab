"""What a query is given and where its answer goes, without torch: ``m3 query --server`` and the
option parsing of the query commands load no model library.

:func:`check_query` (exactly one of a text and a vector), :func:`load_vector` /
:func:`load_vectors` (query vectors from files, never unpickled), :func:`query_folder` (the
output folder of ``m3 query``, refused before any work when it holds what m3 did not write) and
:func:`save_answer` (its files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import M3Error
from pipeline.core.io import output_dir, output_listing, slug, write_json
from pipeline.core.scene import Scene


def check_query(text: str | None, vector: np.ndarray | None) -> None:
    """:class:`M3Error` unless exactly one of a non-empty ``text`` and a ``vector`` is given."""
    if (text is None) == (vector is None):
        raise M3Error("query: give either a text or a query vector, not both or neither")
    if text is not None and not text.strip():
        raise M3Error('query: the text is empty; say what to look for, e.g. m3 query <scene> "a yellow duck"')


def load_vector(path: Path) -> np.ndarray:
    """A query vector ``[d]`` from ``.npy`` (never unpickled) or a JSON list of numbers."""
    if not path.is_file():
        raise M3Error(f"{path}: query vector file not found; pass a .npy or .json file")
    try:
        raw = np.load(path, allow_pickle=False) if path.suffix == ".npy" else json.loads(path.read_text())
        vec = np.asarray(raw, dtype=np.float32).reshape(-1)
    except (ValueError, TypeError, OSError) as exc:  # object arrays, bad JSON, strings, mappings
        why = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise M3Error(f"{path}: not a query vector ({why}); give a .npy array or a JSON list of d numbers") from None
    if vec.size == 0 or not np.isfinite(vec).all() or not vec.any():
        raise M3Error(f"{path}: the query vector is empty, all zero or not finite; give d finite numbers")
    return vec


def load_vectors(path: Path) -> dict[str, np.ndarray]:
    """Query vectors by phrase from a JSON file ``{phrase: [d numbers]}``."""
    if not path.is_file():
        raise M3Error(f"{path}: query vectors file not found; fix the vectors path (relative to the scene folder)")
    try:
        data = json.loads(path.read_text())
        out = {str(k): np.asarray(v, dtype=np.float32).reshape(-1) for k, v in data.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise M3Error(f"{path}: expected a JSON object {{phrase: [numbers]}} ({exc}); fix the file") from None
    bad = [k for k, v in out.items() if v.size == 0 or not np.isfinite(v).all() or not v.any()]
    if bad:
        raise M3Error(f"{path}: the vector of {bad[0]!r} is empty, all zero or not finite; fix the file")
    return out


def query_folder(scene: Scene, text: str | None, vector: np.ndarray | None, out_dir: Path | None) -> Path:
    """The output folder of a ``text`` or ``vector`` query (default ``<scene>/query/<text>``), checked
    with the query before any work: never one holding what m3 did not write."""
    check_query(text, vector)
    out_dir = Path(out_dir or scene.root / "query" / slug(text or "vector"))
    output_listing(out_dir, "query")
    return out_dir


def save_answer(out_dir: Path, result: dict[str, Any], heatmaps: dict[str, bytes]) -> None:
    """Write ``localization.json`` (``result``) and the ``heatmaps`` (PNG bytes by view name) into
    ``out_dir`` (:func:`~pipeline.core.io.output_dir`: never replaces what m3 did not write)."""
    with output_dir(out_dir, "query") as tmp:
        for name, png in heatmaps.items():
            (tmp / f"{Path(name).stem}.png").write_bytes(png)
        write_json(tmp / "localization.json", result)
