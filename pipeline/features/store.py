"""Dense per-view feature maps of one model in a zarr 3 group (``data/<scene>/features/<model>.zarr``).

Layout of the group::

    features   [V, h, w, d] float16, one chunk per view, Blosc-zstd compressed + crc32c checksum
    valid      [V, h, w] bool, one chunk per view (only for models with a validity mask), likewise
    done       [V] bool, one chunk per view: view i is written completely
    attrs      names (view names in order), has_mask, + the writer's attrs (model, checkpoint,
               input size, stride, grid, image size, provenance {config, config_hash, inputs_hash},
               records: the names of the model's per-view records)
    <name>.json  for each record name: every view's records, ``[{"view": name, ...}, ...]``
               (e.g. ``captions.json`` of ``llama3``: view, region, box, caption)

Features cover the whole image on a regular grid: cell (i, j) covers pixels
``[i*H/h, (i+1)*H/h) x [j*W/w, (j+1)*W/w)``.

Writers build the store at :func:`partial_path` (``.<model>.zarr.partial``), resume it only when
its provenance, names and shape match (:func:`resume_or_create`), and :meth:`FeatureStore.finalize`
renames it to the final path once every view is done, so the final path only ever holds a
complete store. Readers stream one view at a time (:meth:`FeatureStore.read`, :meth:`iter_views`);
every chunk carries a crc32c checksum checked when it is read and every view's chunk is written
(even an all-zero one), so a flipped byte or a missing chunk is an error naming the store, the
view and the fix, never different or zero features (:meth:`FeatureStore.verify` checks them all).
While a store is built, each view's records wait in ``records/<i>.json`` (written before the
view's done flag, so a resumed run keeps them); :meth:`FeatureStore.finalize` gathers them into
the ``<name>.json`` files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from pipeline.core.errors import M3Error
from pipeline.core.io import canonical_json, read_json, same_provenance, write_json

if TYPE_CHECKING:
    from zarr.core.array_spec import ArrayConfigParams

log = logging.getLogger(__name__)

_COMPRESSORS = (BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"), Crc32cCodec())
# an all-zero view still has a chunk: a missing one is an error
_EVERY_CHUNK: ArrayConfigParams = {"write_empty_chunks": True}


def partial_path(path: Path) -> Path:
    """Where a store is built before it is complete: ``<dir>/.<name>.partial``."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def store_bytes(path: Path) -> int:
    """Bytes on disk of the store folder."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of a store's group (a group there is a corrupt store: ValueError)."""
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise ValueError(f"'{name}' is a group, not an array")
    return node


class FeatureStore:
    """One model's feature maps of a scene; see the module docstring for the layout."""

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = Path(path)
        self._group = group
        self._features = _array(group, "features").with_config(_EVERY_CHUNK)
        self._valid = _array(group, "valid").with_config(_EVERY_CHUNK) if "valid" in group else None
        self._done = _array(group, "done")
        self.attrs: dict[str, Any] = dict(group.attrs)
        self.names: list[str] = list(self.attrs["names"])

    @classmethod
    def create(
        cls, path: Path, names: list[str], h: int, w: int, d: int, attrs: dict[str, Any], has_mask: bool
    ) -> FeatureStore:
        """A new, empty store at ``path`` (replacing anything there) for views ``names``."""
        path = Path(path)
        if path.exists():
            shutil.rmtree(path)
        n = len(names)
        if n == 0:
            raise M3Error(f"{path}: no views to store; the scene has no registered views")
        record = json.loads(canonical_json({**attrs, "names": list(names), "has_mask": bool(has_mask)}))
        group = zarr.open_group(zarr.storage.LocalStore(path), mode="w", zarr_format=3, attributes=record)
        group.create_array(
            "features",
            shape=(n, h, w, d),
            chunks=(1, h, w, d),
            dtype="float16",
            compressors=_COMPRESSORS,
            fill_value=0.0,
            dimension_names=("view", "y", "x", "channel"),
        )
        if has_mask:
            group.create_array(
                "valid",
                shape=(n, h, w),
                chunks=(1, h, w),
                dtype="bool",
                compressors=_COMPRESSORS,
                fill_value=False,
                dimension_names=("view", "y", "x"),
            )
        group.create_array("done", shape=(n,), chunks=(1,), dtype="bool", fill_value=False, dimension_names=("view",))
        return cls(path, group)

    @classmethod
    def open(cls, path: Path, mode: Literal["r", "r+"] = "r") -> FeatureStore:
        """Open an existing store: ``mode`` ``r`` (read) or ``r+`` (resume writing a partial store)."""
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise M3Error(f"{path}: no feature store; run `m3 features <scene> --model {path.stem}` first")
        try:
            group = zarr.open_group(zarr.storage.LocalStore(path, read_only=mode == "r"), mode=mode, zarr_format=3)
            return cls(path, group)
        except (KeyError, ValueError, OSError) as exc:
            raise M3Error(f"{path}: corrupt feature store ({exc}); delete it and rerun the features stage") from exc

    @property
    def n_views(self) -> int:
        return len(self.names)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(h, w, d)`` of every view's map."""
        _, h, w, d = self._features.shape
        return int(h), int(w), int(d)

    @property
    def has_mask(self) -> bool:
        return self._valid is not None

    @property
    def record_names(self) -> list[str]:
        """Names of the model's per-view records (``<name>.json`` in the store)."""
        return list(self.attrs.get("records") or [])

    def done(self, i: int) -> bool:
        """True when view ``i`` was written completely."""
        return bool(self._done[i])

    def done_mask(self) -> np.ndarray:
        """``[V] bool``: which views are written."""
        return np.asarray(self._done[:], dtype=bool)

    @property
    def complete(self) -> bool:
        return bool(self.done_mask().all())

    def write(
        self,
        i: int,
        features: np.ndarray,
        valid: np.ndarray | None = None,
        records: dict[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        """Store view ``i``: ``features [h, w, d]`` (cast to float16), ``valid [h, w] bool`` and its
        ``records`` (JSON-serialisable lists under the names in :attr:`record_names`).

        The done flag is set last, so an interrupted write is redone on resume.
        """
        unknown = sorted(set(records or {}) - set(self.record_names))
        if unknown:
            raise ValueError(f"view {i}: records {unknown} not declared by the store ({self.record_names})")
        h, w, d = self.shape
        features = np.asarray(features)
        if features.shape != (h, w, d):
            raise ValueError(f"view {i}: features {features.shape} != store shape {(h, w, d)}")
        self._features[i] = features.astype(np.float16)
        if self._valid is not None:
            valid = np.ones((h, w), bool) if valid is None else np.asarray(valid, dtype=bool)
            if valid.shape != (h, w):
                raise ValueError(f"view {i}: valid {valid.shape} != grid {(h, w)}")
            self._valid[i] = valid
        if self.record_names:
            write_json(self._record_file(i), records or {})
        self._done[i] = True

    def _record_file(self, i: int) -> Path:
        return self.path / "records" / f"{i:05d}.json"

    def records(self, name: str) -> list[dict[str, Any]]:
        """Every view's records called ``name``: ``[{"view": view name, ...}, ...]`` in view order."""
        if name not in self.record_names:
            raise M3Error(f"{self.path}: no '{name}' records (this model stores: {self.record_names or 'none'})")
        path = self.path / f"{name}.json"
        if not path.is_file():
            raise M3Error(f"{path}: missing; rerun the features stage for this model")
        return list(read_json(path))

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """View ``i``: ``(features np.float16 [h, w, d], valid np.bool_ [h, w])`` (all True without mask)."""
        if not 0 <= i < self.n_views:
            raise IndexError(f"view {i} out of range (store has {self.n_views} views)")
        arrays = [self._features] + ([self._valid] if self._valid is not None else [])
        missing = [a.name for a in arrays if not self._chunk_file(a, i).is_file()]
        if missing:
            raise self._damaged(i, f"its {missing[0].strip('/')} chunk is missing")
        try:
            features = np.asarray(self._features[i])
            valid = None if self._valid is None else np.asarray(self._valid[i], dtype=bool)
        except (RuntimeError, ValueError, OSError) as exc:  # checksum mismatch, damaged compression
            raise self._damaged(i, f"its chunk is corrupt ({str(exc).splitlines()[0][:120]})") from None
        return features, np.ones(features.shape[:2], dtype=bool) if valid is None else valid

    def _chunk_file(self, array: zarr.Array, i: int) -> Path:
        """The file of view ``i``'s chunk of ``array`` (one chunk per view, a local store)."""
        key = array.metadata.encode_chunk_key((i,) + (0,) * (array.ndim - 1))
        return self.path / array.name.strip("/") / key

    def _damaged(self, i: int, why: str) -> M3Error:
        return M3Error(
            f"{self.path}: view {i} ({self.names[i]}): {why}; restore the store with "
            f"`dvc checkout {self.path}` or rerun the features stage (`dvc repro -f` or delete the store)"
        )

    def verify(self) -> None:
        """Read every view (checking every chunk's checksum); :class:`M3Error` for the first damaged one."""
        for i in range(self.n_views):
            self.read(i)

    def iter_views(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(i, features [h, w, d] float16, valid [h, w] bool)`` for every view, one at a time."""
        for i in range(self.n_views):
            features, valid = self.read(i)
            yield i, features, valid

    def finalize(self, final: Path) -> FeatureStore:
        """Rename this complete (partial) store to ``final`` (replacing an old one) and reopen it there."""
        missing = np.flatnonzero(~self.done_mask())
        if missing.size:
            raise M3Error(f"{self.path}: {missing.size} views not written yet; rerun the features stage")
        for name in self.record_names:  # gathered before the rename: the per-view files stay until then
            rows = [
                {"view": view, **row}
                for i, view in enumerate(self.names)
                for row in read_json(self._record_file(i)).get(name, [])
            ]
            write_json(self.path / f"{name}.json", rows)
        final = Path(final)
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(self.path, final)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(final / "records", ignore_errors=True)
        return FeatureStore.open(final)


def _same_run(
    store: FeatureStore, names: list[str], shape: tuple[int, int, int], attrs: dict[str, Any], has_mask: bool
) -> bool:
    return (
        store.names == list(names)
        and store.shape == tuple(shape)
        and store.has_mask == has_mask
        and same_provenance(store.attrs.get("provenance") or {}, attrs.get("provenance") or {})
    )


def resume_or_create(
    final: Path, names: list[str], h: int, w: int, d: int, attrs: dict[str, Any], has_mask: bool
) -> FeatureStore:
    """The partial store of ``final``: resumed if it was made by the same run (provenance, views,
    shape), else created fresh; views of a mismatched partial store are never reused."""
    part = partial_path(final)
    if (part / "zarr.json").is_file():
        try:
            store = FeatureStore.open(part, mode="r+")
            if _same_run(store, names, (h, w, d), attrs, has_mask):
                log.info("%s: resuming, %d of %d views done", part, int(store.done_mask().sum()), len(names))
                return store
            log.info("%s: made by another config or inputs; starting over", part)
        except M3Error as exc:
            log.info("%s: unreadable (%s); starting over", part, exc)
    return FeatureStore.create(part, names, h, w, d, attrs, has_mask)


def matches(final: Path, attrs: dict[str, Any], names: list[str]) -> bool:
    """True when a complete store at ``final`` was made by the same provenance and views and every
    chunk reads back with its checksum (a damaged store is logged and recomputed, never kept)."""
    if not (Path(final) / "zarr.json").is_file():
        return False
    try:
        store = FeatureStore.open(final)
        if not (store.complete and _same_run(store, names, store.shape, attrs, store.has_mask)):
            return False
        store.verify()
    except M3Error as exc:
        log.warning("%s; recomputing it", exc)
        return False
    return True
