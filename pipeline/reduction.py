"""Similarity reduction of dense features into a PSC memory bank (``bank [t, d]``).

The published Algorithm 1 compares every chunk of rows against *all* ``N`` rows (``O(N^2 d)``,
everything in memory) and can leave rows without a bank entry within the threshold. Here the
rows stream past once, in a fixed order, in chunks of ``chunk_rows``:

1. L2-normalise the chunk (fp32) and search it against the bank built so far with a FAISS
   inner-product index (``IndexFlatIP``; a GPU index when faiss has GPU support and a GPU is
   present). A row whose best cosine is ``>= theta`` is covered.
2. The rows still uncovered go through a greedy pass inside the chunk, on one matrix product of
   the uncovered subset with itself: the uncovered row with the most uncovered neighbours
   (cosine ``>= theta``) becomes a new bank entry and its neighbours are covered; repeat until the
   chunk is covered (ties go to the earlier row, so the result is deterministic). New entries join
   the index for the next chunks. Taking the best-connected row rather than the next row in
   order keeps the bank small: on clustered data it needs ~35% fewer entries than row order and
   is within a few percent of a greedy set cover over *all* rows at once.

So **every** valid row ends up with a bank entry of cosine ``>= theta`` (coverage 100%), the
cost is ``O(N t d)``, and memory holds one chunk plus the bank. The bank keeps the raw
(unnormalised) rows in the configured dtype; rows are cast to it *before* the reduction, so the
guarantee holds for the stored vectors. The result depends only on the rows, their order and the
config (and on the device: GPU sums may round differently from CPU ones).

Float rounding: a row counts as covered when its fp32 cosine is ``>= theta + tolerance``, so that
recomputing the cosines in another precision or summation order still gives ``>= theta``.
``theta >= 1`` means deduplication only: rows are compared by their exact bytes (a cosine of
1.0 cannot be trusted in floating point), so only exact duplicates are removed.
"""
from __future__ import annotations

import hashlib
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np

from . import M3Error

log = logging.getLogger("m3.reduction")

Block = tuple[np.ndarray, "np.ndarray | None"]


@dataclass
class BankConfig:
    """``params.yaml: bank.<model>``; ``threshold`` is the cosine a bank entry must reach."""

    threshold: float
    chunk_rows: int = 4096  # rows streamed per chunk (search batch and greedy pass size)
    dtype: Literal["float16", "float32"] = "float16"  # stored bank dtype (features are fp16)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # FAISS index on the GPU when available
    tolerance: float = 1.0e-5  # cosine margin against float rounding (see module docstring)
    verify: bool = True  # second pass: exact best cosine of every row against the final bank

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise M3Error(f"bank.threshold: {self.threshold} is not a cosine in [-1, 1]; fix it")
        if self.chunk_rows < 1:
            raise M3Error(f"bank.chunk_rows: {self.chunk_rows} must be >= 1; fix it")


@dataclass
class BankResult:
    """``bank [t, d]`` raw rows (config dtype), ``entry_rows [t]`` their input row numbers, stats."""

    bank: np.ndarray
    entry_rows: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def peak_ram_mb() -> float:
    """Peak resident memory of this process so far (MiB, ``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rechunk(blocks: Iterable[Block], chunk_rows: int) -> Iterator[tuple[np.ndarray, int]]:
    """Valid rows of ``blocks`` (``rows [k, d]``, ``valid [k]`` or None) in chunks of ``chunk_rows``.

    Yields ``(rows [c, d], n_masked)``: every chunk but the last has exactly ``chunk_rows`` rows;
    ``n_masked`` counts the invalid rows dropped since the previous chunk.
    """
    pending: list[np.ndarray] = []
    have = masked = 0
    for rows, valid in blocks:
        if valid is not None:
            valid = np.asarray(valid, dtype=bool).reshape(-1)
            masked += int(valid.size - valid.sum())
            rows = rows[valid]
        if len(rows):
            pending.append(rows)
            have += len(rows)
        while have >= chunk_rows:
            cat = pending[0] if len(pending) == 1 else np.concatenate(pending)
            yield cat[:chunk_rows], masked
            masked = 0
            rest = cat[chunk_rows:]
            pending, have = ([rest] if len(rest) else []), len(rest)
    if have or masked:
        yield (np.concatenate(pending) if pending else np.empty((0, 0), np.float32)), masked


def _normalise(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fp32 unit rows ``[k, d]`` and a mask ``[k]`` of the non-zero rows they come from."""
    x = raw.astype(np.float32)
    norms = np.linalg.norm(x, axis=1)
    nonzero = norms > 0
    x = x[nonzero]
    x /= norms[nonzero, None]
    return x, nonzero


def _make_index(d: int, device: str) -> tuple[Any, str]:
    """A FAISS inner-product index (GPU when asked/available) and the device it lives on."""
    import faiss

    index = faiss.IndexFlatIP(d)
    gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if device == "cuda" and not gpu:
        raise M3Error(
            "bank.device: cuda asked for but faiss has no usable GPU; install faiss-gpu "
            "(pip install -e '.[gpu]') on a CUDA machine or set device: auto"
        )
    if gpu and device != "cpu":
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, 0, index)
        index.m3_resources = res  # keep the GPU resources alive with the index
        return index, "cuda"
    return index, "cpu"


def greedy_cover(y: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy set cover of unit rows ``y [u, d]`` at cosine ``thr`` (all rows must end up covered).

    Repeatedly takes the row that covers the most still-uncovered rows (ties: the lowest row
    number), makes it an entry and marks its neighbours (cosine ``>= thr``) covered. Returns the
    entries' positions ``[e]`` (in the order taken) and per row the cosine ``[u]`` to the entry that
    covered it. Memory: the ``[u, u]`` cosine matrix and its thresholded copy.
    """
    u = len(y)
    gram = y @ y.T  # [u, u]
    adj = gram >= thr
    np.fill_diagonal(adj, True)  # an entry covers itself (cosine 1 up to rounding)
    degree = adj.sum(axis=1, dtype=np.int64)  # uncovered rows each row would cover
    covered = np.zeros(u, dtype=bool)
    assigned = np.full(u, -np.inf, dtype=np.float32)
    entries: list[int] = []
    left = u
    while left:
        r = int(np.argmax(degree))
        new = adj[r] & ~covered
        entries.append(r)
        covered |= new
        left -= int(new.sum())
        assigned[new] = gram[r, new]
        assigned[r] = 1.0
        degree -= adj[new].sum(axis=0, dtype=np.int64)
    return np.asarray(entries, dtype=np.int64), assigned


class _Reducer:
    """Streaming state: the FAISS index over unit bank rows and the raw bank rows."""

    def __init__(self, cfg: BankConfig) -> None:
        self.cfg = cfg
        self.exact = cfg.threshold >= 1.0
        self.thr = cfg.threshold + cfg.tolerance
        self.index: Any = None
        self.device = "cpu"
        self.raw: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.seen: dict[bytes, int] = {}  # exact mode: row digest -> entry number
        self.t = 0

    def add_chunk(self, raw: np.ndarray, offset: int) -> np.ndarray:
        """Reduce one chunk ``raw [k, d]`` (rows ``offset..offset+k``); returns assigned cosines ``[k']``."""
        if self.exact:
            return self._add_exact(raw, offset)
        x, nonzero = _normalise(raw)
        raw, pos = raw[nonzero], np.flatnonzero(nonzero) + offset
        if self.index is None:
            self.index, self.device = _make_index(raw.shape[1], self.cfg.device)
        best = np.full(len(x), -np.inf, dtype=np.float32)
        if self.index.ntotal:
            best = self.index.search(x, 1)[0][:, 0].copy()
        unc = np.flatnonzero(best < self.thr)
        if unc.size:
            new, assigned = greedy_cover(x[unc], self.thr)
            best[unc] = np.maximum(best[unc], assigned)
            self.index.add(np.ascontiguousarray(x[unc[new]]))
            self._keep(raw[unc[new]], pos[unc[new]])
        return best

    def _add_exact(self, raw: np.ndarray, offset: int) -> np.ndarray:
        """theta >= 1: keep the first occurrence of every distinct row (by its bytes)."""
        raw = np.ascontiguousarray(raw)
        nonzero = np.any(raw != 0, axis=1)
        raw, pos = raw[nonzero], np.flatnonzero(nonzero) + offset
        void = raw.view(np.dtype((np.void, raw.dtype.itemsize * raw.shape[1]))).ravel()
        _, first = np.unique(void, return_index=True)
        new = []
        for i in np.sort(first):
            key = hashlib.blake2b(void[i].tobytes(), digest_size=16).digest()
            if key not in self.seen:
                self.seen[key] = self.t + len(new)
                new.append(i)
        if new:
            self._keep(raw[new], pos[new])
        return np.ones(len(raw), dtype=np.float32)

    def _keep(self, raw: np.ndarray, rows: np.ndarray) -> None:
        self.raw.append(raw.copy())
        self.rows.append(rows)
        self.t += len(raw)

    def result(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.raw:
            return np.empty((0, d), dtype=self.cfg.dtype), np.empty(0, dtype=np.int64)
        return np.concatenate(self.raw), np.concatenate(self.rows)


def build_bank(
    blocks: Iterable[Block],
    cfg: BankConfig,
    progress: Callable[[int], None] | None = None,
) -> BankResult:
    """Reduce streamed rows to a bank ``[t, d]`` in which every valid row has a cosine ``>= theta``.

    ``blocks`` yields ``(rows [k, d], valid [k] bool or None)`` in a fixed order (e.g. one view
    at a time); rows are cast to ``cfg.dtype`` first, invalid (masked) rows and all-zero rows are
    skipped. ``progress(n)`` is called with the number of input rows consumed per chunk.
    Stats: N, t, compression, coverage (by construction), min/mean assigned cosine (a lower bound of
    the best cosine; :func:`coverage_stats` gives the exact one), seconds, peak RAM.
    """
    start = time.perf_counter()
    red = _Reducer(cfg)
    n = masked = zero = 0
    cos_min, cos_sum, d = np.inf, 0.0, 0
    for rows, n_masked in rechunk(blocks, cfg.chunk_rows):
        masked += n_masked
        if len(rows):
            d = rows.shape[1]
            best = red.add_chunk(rows.astype(cfg.dtype, copy=False), n)
            zero += len(rows) - len(best)
            n += len(rows)
            if len(best):
                cos_min, cos_sum = min(cos_min, float(best.min())), cos_sum + float(best.sum(dtype=np.float64))
        if progress is not None:
            progress(len(rows) + n_masked)
    bank, entry_rows = red.result(d)
    counted = n - zero
    stats = {
        "N": counted,
        "masked_rows": masked,
        "zero_rows": zero,
        "t": int(len(bank)),
        "d": d,
        "compression": counted / len(bank) if len(bank) else 0.0,
        "threshold": cfg.threshold,
        "coverage": 1.0 if counted else 0.0,
        "best_cosine": "assigned (lower bound)",
        "min_best_cosine": cos_min if counted else None,
        "mean_best_cosine": cos_sum / counted if counted else None,
        "device": red.device,
        "seconds": time.perf_counter() - start,
        "peak_ram_mb": peak_ram_mb(),
    }
    log.info("bank: %d rows -> %d entries (x%.1f) in %.1f s", counted, len(bank), stats["compression"], stats["seconds"])
    return BankResult(bank, entry_rows, stats)


def coverage_stats(
    bank: np.ndarray, blocks: Iterable[Block], cfg: BankConfig, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Exact best cosine of every valid row of ``blocks`` against ``bank [t, d]`` (one streamed pass).

    Returns ``coverage`` (fraction of rows with best cosine ``>= theta``; for theta >= 1, rows
    equal to an entry), ``min_best_cosine``, ``mean_best_cosine``, ``uncovered`` and ``seconds``.
    """
    start = time.perf_counter()
    unit, nonzero = _normalise(np.asarray(bank))
    index, _ = _make_index(bank.shape[1], cfg.device)
    index.add(unit)
    exact = {r.tobytes() for r in np.asarray(bank, dtype=cfg.dtype)} if cfg.threshold >= 1.0 else None
    n = uncovered = 0
    cos_min, cos_sum = np.inf, 0.0
    for rows, n_masked in rechunk(blocks, cfg.chunk_rows):
        if len(rows):
            raw = np.ascontiguousarray(rows.astype(cfg.dtype, copy=False))
            x, keep = _normalise(raw)
            best = index.search(x, 1)[0][:, 0] if len(x) else np.empty(0, np.float32)
            if exact is not None:
                hit = np.array([r.tobytes() in exact for r in raw[keep]], dtype=bool)
            else:
                hit = best >= cfg.threshold
            n += len(x)
            uncovered += int((~hit).sum())
            if len(x):
                cos_min, cos_sum = min(cos_min, float(best.min())), cos_sum + float(best.sum(dtype=np.float64))
        if progress is not None:
            progress(len(rows) + n_masked)
    return {
        "coverage": (n - uncovered) / n if n else 0.0,
        "uncovered": uncovered,
        "best_cosine": "exact",
        "min_best_cosine": cos_min if n else None,
        "mean_best_cosine": cos_sum / n if n else None,
        "verify_seconds": time.perf_counter() - start,
    }


def bank_hash(bank: np.ndarray) -> str:
    """sha256 of the bank's dtype, shape and bytes (16 hex chars)."""
    h = hashlib.sha256(f"{bank.dtype.str}{bank.shape}".encode())
    h.update(np.ascontiguousarray(bank).tobytes())
    return h.hexdigest()[:16]


def save_bank(path: Path, bank: np.ndarray, attrs: dict[str, Any], chunk_rows: int = 4096) -> None:
    """Write ``bank [t, d]`` as one zarr array with ``attrs``, atomically (temp folder + rename)."""
    import zarr

    from .io import atomic_dir

    with atomic_dir(Path(path)) as tmp:
        arr = zarr.create_array(
            store=zarr.storage.LocalStore(tmp),
            shape=bank.shape,
            chunks=(max(1, min(chunk_rows, len(bank))), bank.shape[1]),
            dtype=bank.dtype,
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
    attrs = arr.attrs.asdict()
    if "provenance" not in attrs:
        raise M3Error(f"{path}: bank without provenance (incomplete or foreign); delete it and rerun `m3 bank`")
    return np.asarray(arr[:], dtype=np.float32), attrs


def check_bank_matches(bank_attrs: dict[str, Any], features_attrs: dict[str, Any], what: str = "bank") -> None:
    """Refuse a bank built from other features than ``features_attrs`` describe (raises :class:`M3Error`).

    Compares the features' ``config_hash`` and ``inputs_hash`` recorded in the bank's provenance
    with the provenance of the features it is about to be used with.
    """
    recorded = (bank_attrs.get("provenance") or {}).get("features") or {}
    current = features_attrs.get("provenance") or {}
    keys = ("config_hash", "inputs_hash")
    if not recorded or any(recorded.get(k) != current.get(k) for k in keys):
        found = ", ".join(f"{k}={recorded.get(k)}" for k in keys)
        now = ", ".join(f"{k}={current.get(k)}" for k in keys)
        model = (bank_attrs.get("provenance") or {}).get("config", {}).get("model", "<model>")
        raise M3Error(
            f"{what}: built from other features ({found}) than the current ones ({now}); "
            f"rebuild it with `m3 bank <scene> --model {model}` (or dvc repro)"
        )
