"""Similarity reduction of dense features into a PSC memory bank (``bank [t, d]``).

The published Algorithm 1 compares every chunk of rows against *all* ``N`` rows (``O(N^2 d)``,
everything in memory), takes input rows as entries and can leave rows without a bank entry
within the threshold. Here the rows stream past in a fixed order, in chunks of ``chunk_rows``,
in ``refine + 1`` passes (theta < 1). Every pass is a *cover pass* over an ordered bank:

1. L2-normalise the chunk (fp32) and range-search it against the bank so far with a FAISS
   inner-product index (``IndexFlatIP``; a GPU index when faiss has GPU support and a GPU is
   present). A row is covered by the *first* entry (in bank order) with cosine ``>= theta``.
2. The rows still uncovered go through a greedy pass inside the chunk, on a FAISS range search
   of the uncovered subset against itself: the uncovered row with the most uncovered
   neighbours becomes a new entry (appended to the bank) and covers them; repeat until the
   chunk is covered (ties go to the earlier row, so the result is deterministic).
3. Every entry counts the rows it covered and keeps some of them as evidence (below).

Pass 1 starts from an empty bank, so it is the one-pass algorithm (entries are input rows).
During a pass every entry keeps, as *evidence*, the ``merge_rows`` rows it covered with the
lowest cosine to it (raw; the rows farthest from it, which bound its group). After each pass
but the last, the entries that covered a row are re-centred and merged
(:func:`~pipeline.bank.cover.merge_caps`):

* every group's centre becomes the centre of the *smallest spherical cap* around its evidence
  (the minimax centre, maximising the lowest cosine; :func:`~pipeline.bank.cover.enclosing_cap`,
  Frank-Wolfe on the point of the rows' convex hull nearest the origin), not the mean, which
  leans toward the dense part of the group and leaves its far rows to other entries;
* smallest group first, a group merges into one of its 8 nearest groups (by centre cosine)
  when one cap of cosine ``>= theta`` holds the evidence of both (their support rows are tested
  first); the merged group keeps the ``merge_rows`` rows farthest from its new centre. Groups
  are rarely full caps (on the benchmark data the median group fits a cap of cosine ~0.88), so
  neighbouring groups often fit one entry.

A centre is stored at raw scale: the mean of its evidence rows weighted so that its direction
is the cap's centre (:func:`~pipeline.bank.cover.cap_centre`). The centres are ordered by how many
rows they represent, most first, and seed the next pass; rows go to the first covering entry,
so a centre whose rows the earlier ones cover gets none and is dropped. The evidence is a
bounded sample: a merged cap may miss rows of the groups it was not shown; those rows go to
another entry or to new input-row entries in the next pass, whose greedy step covers them.
The **last** pass does not re-centre: it keeps exactly the entries that covered some row in
that pass (centres, plus input rows added for rows no centre reached). So **every** valid row
has a stored entry of cosine ``>= theta`` (coverage 100%, by construction of the last pass; the
stage's ``verify`` pass re-checks it exactly). On the benchmark data the default five
refinement passes shrink the bank by 42-57% against the single pass (``benchmarks/README.md``).

The bank is still a set of principal scene components: raw-scale vectors in the model's
feature space (input rows or weighted means of input rows, never normalised), one per group of
similar features, which training renders through attention as in the paper; only the choice
of entries differs from Algorithm 1 (full coverage; centres instead of arbitrary members).

Cost ``O(passes N t d)`` plus, between passes, a few ``[merge_rows, d]`` products per entry and
merge tried; memory holds one chunk, the bank and at most ``merge_rows`` evidence rows per entry
(config dtype). Refinement needs the rows again: :func:`build_bank` takes a function returning
a fresh iterable (or a sequence); a one-shot iterator gets the single-pass bank. Rows and centres are cast to the
configured dtype *before* they are compared, so the guarantee holds for the stored vectors.
The result depends only on the rows, their order and the config (and on the device: GPU
cosines may round differently from CPU ones, which can change which rows are evidence).

Float rounding: a row counts as covered when its fp32 cosine is ``>= theta + tolerance``, so that
recomputing the cosines in another precision or summation order still gives ``>= theta``.
``theta >= 1`` means deduplication only: one pass, rows are compared by their exact bytes (a
cosine of 1.0 cannot be trusted in floating point), so only exact duplicates are removed and
every entry is an input row.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pipeline.bank.config import BankConfig
from pipeline.bank.cover import cap_centre, covering, greedy_cover, make_index, merge_caps, unit_rows
from pipeline.core.runtime import peak_ram_mb

log = logging.getLogger(__name__)

Block = tuple[np.ndarray, "np.ndarray | None"]


@dataclass
class BankResult:
    """``bank [t, d]`` raw vectors (config dtype), ``entry_rows [t]`` their input row numbers (-1: a centre), stats."""

    bank: np.ndarray
    entry_rows: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


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


class _Pass:
    """One streamed cover pass: FAISS index over unit entries, the raw entries and their evidence.

    Starts from ``seeds [s, d]`` (config dtype; centres of the previous pass) and adds input rows
    as new entries where a chunk is not covered. Per entry it counts the rows it covered (a row
    goes to the first entry in bank order with cosine ``>= thr``, or to the greedy entry that
    covered it) and keeps, as evidence for :meth:`centres`, the ``merge_rows`` of them with the
    lowest cosine to it (raw, config dtype; ties: the earlier row).
    """

    def __init__(self, cfg: BankConfig, seeds: np.ndarray | None = None) -> None:
        self.cfg = cfg
        self.thr = cfg.threshold + cfg.tolerance
        self.index: Any = None
        self.device = "cpu"
        self.raw: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.count = np.zeros(0, dtype=np.int64)
        self.evidence: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # entry -> (rows [m, d], cosines [m])
        self.floor = np.zeros(0, dtype=np.float32)  # a row with a lower cosine enters the evidence
        self.t = 0
        if seeds is not None and len(seeds):
            self._add(seeds, np.full(len(seeds), -1, dtype=np.int64))

    def _add(self, raw: np.ndarray, rows: np.ndarray) -> None:
        if self.index is None:
            self.index, self.device = make_index(raw.shape[1], self.cfg.device)
        self.index.add(np.ascontiguousarray(unit_rows(raw)[0]))
        self.raw.append(raw.copy())
        self.rows.append(rows)
        self.count = np.concatenate([self.count, np.zeros(len(raw), dtype=np.int64)])
        self.floor = np.concatenate([self.floor, np.full(len(raw), np.inf, dtype=np.float32)])
        self.t += len(raw)

    def add_chunk(self, raw: np.ndarray, offset: int) -> np.ndarray:
        """Cover one chunk ``raw [k, d]`` (rows ``offset..offset+k``); returns assigned cosines ``[k']``."""
        x, nonzero = unit_rows(raw)
        raw, pos = raw[nonzero], np.flatnonzero(nonzero) + offset
        if self.index is None:
            self.index, self.device = make_index(raw.shape[1], self.cfg.device)
        best = np.full(len(x), -np.inf, dtype=np.float32)
        nearest = np.zeros(len(x), dtype=np.int64)
        if self.index.ntotal:
            lims, sim, idx = covering(self.index, x, self.thr, None if self.device == "cpu" else 2048)
            hit = np.flatnonzero(np.diff(lims) > 0)
            if hit.size:
                nearest[hit] = np.minimum.reduceat(idx, lims[hit])  # the first entry covering it
                query = np.repeat(np.arange(len(x)), np.diff(lims))
                chosen = idx == nearest[query]
                best[query[chosen]] = sim[chosen]
        unc = np.flatnonzero(best < self.thr)
        if unc.size:
            new, assigned, owner = greedy_cover(x[unc], self.thr)
            best[unc] = assigned
            nearest[unc] = self.t + owner
            self._add(raw[unc[new]], pos[unc[new]])
        self.count += np.bincount(nearest, minlength=self.t)
        self._keep_evidence(raw, best, nearest)
        return best

    def _keep_evidence(self, raw: np.ndarray, best: np.ndarray, nearest: np.ndarray) -> None:
        """Merge the chunk's rows ``raw [k, d]`` (cosines ``best [k]`` to entries ``nearest [k]``) into the evidence."""
        cand = np.flatnonzero(best < self.floor[nearest])
        cand = cand[np.argsort(nearest[cand], kind="stable")]
        ids, starts = np.unique(nearest[cand], return_index=True)
        for e, rows in zip(ids.tolist(), np.split(cand, starts[1:])):
            ev_rows, ev_cos = raw[rows], best[rows]
            if e in self.evidence:
                ev_rows = np.concatenate([self.evidence[e][0], ev_rows])
                ev_cos = np.concatenate([self.evidence[e][1], ev_cos])
            if len(ev_cos) > self.cfg.merge_rows:
                low = np.sort(np.argsort(ev_cos, kind="stable")[: self.cfg.merge_rows])
                ev_rows, ev_cos = ev_rows[low], ev_cos[low]
                self.floor[e] = ev_cos.max()
            self.evidence[e] = (ev_rows, ev_cos)

    def centres(self) -> np.ndarray:
        """Every used entry re-centred on the smallest cap around its evidence ``[t', d]`` (config dtype).

        Entries whose evidence one cap holds are merged first (:func:`merge_caps`); a centre is
        the weighted mean of its evidence rows (:func:`cap_centre`). The centres are ordered by
        the number of rows they represent, most first (ties: the earlier entry).
        """
        used = np.flatnonzero(self.count > 0)
        if not used.size:
            return np.empty((0, 0), dtype=self.cfg.dtype)
        rows, lam, into = merge_caps(
            [self.evidence[int(e)][0] for e in used], self.count[used], self.thr, self.cfg.merge_rows
        )
        count = np.bincount(into, weights=self.count[used], minlength=len(used))
        order = np.argsort(-count, kind="stable")
        order = order[count[order] > 0]
        return np.stack([cap_centre(rows[g], lam[g]) for g in order]).astype(self.cfg.dtype)

    def result(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """The used entries ``[t', d]`` (entries no row chose are dropped) and their input rows."""
        if not self.raw:
            return np.empty((0, d), dtype=self.cfg.dtype), np.empty(0, dtype=np.int64)
        used = self.count > 0
        return np.concatenate(self.raw)[used], np.concatenate(self.rows)[used]


class _Dedup:
    """theta >= 1: keep the first occurrence of every distinct row (by its bytes)."""

    def __init__(self, cfg: BankConfig) -> None:
        self.cfg = cfg
        self.device = "cpu"
        self.raw: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.seen: set[bytes] = set()

    def add_chunk(self, raw: np.ndarray, offset: int) -> np.ndarray:
        raw = np.ascontiguousarray(raw)
        nonzero = np.any(raw != 0, axis=1)
        raw, pos = raw[nonzero], np.flatnonzero(nonzero) + offset
        void = raw.view(np.dtype((np.void, raw.dtype.itemsize * raw.shape[1]))).ravel()
        _, first = np.unique(void, return_index=True)
        new = []
        for i in np.sort(first):
            key = hashlib.blake2b(void[i].tobytes(), digest_size=16).digest()
            if key not in self.seen:
                self.seen.add(key)
                new.append(i)
        if new:
            self.raw.append(raw[new].copy())
            self.rows.append(pos[new])
        return np.ones(len(raw), dtype=np.float32)

    def result(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.raw:
            return np.empty((0, d), dtype=self.cfg.dtype), np.empty(0, dtype=np.int64)
        return np.concatenate(self.raw), np.concatenate(self.rows)


def n_passes(cfg: BankConfig) -> int:
    """Streamed passes :func:`build_bank` makes over the rows (1 for theta >= 1)."""
    return 1 if cfg.threshold >= 1.0 else cfg.refine + 1


def build_bank(
    blocks: Iterable[Block] | Callable[[], Iterable[Block]],
    cfg: BankConfig,
    progress: Callable[[int], None] | None = None,
) -> BankResult:
    """Reduce streamed rows to a bank ``[t, d]`` in which every valid row has a cosine ``>= theta``.

    ``blocks`` yields ``(rows [k, d], valid [k] bool or None)`` in a fixed order (e.g. one view
    at a time), or is a function returning a fresh such iterable per pass; rows are cast to
    ``cfg.dtype`` first, invalid (masked) rows and all-zero rows are skipped. The refinement
    passes need the rows again: a one-shot iterator (a generator) gets the single-pass bank.
    ``progress(n)`` is called with the number of input rows consumed per chunk (every pass).
    Stats: N, t, compression, coverage (by construction), min/mean assigned cosine of the last
    pass (a lower bound of the best cosine; :func:`coverage_stats` gives the exact one),
    passes, seconds, peak RAM.
    """
    start = time.perf_counter()
    if callable(blocks):
        source = blocks
    elif iter(blocks) is blocks:  # one-shot iterator: one pass only
        if n_passes(cfg) > 1:
            log.info("bank: rows from a one-shot iterator; single pass (pass a function for refinement)")
        source, cfg = (lambda: blocks), replace(cfg, refine=0)
    else:
        source = lambda: blocks  # noqa: E731 - a re-iterable sequence
    passes = n_passes(cfg)
    seeds: np.ndarray | None = None
    for p in range(passes):
        red: _Pass | _Dedup = _Dedup(cfg) if cfg.threshold >= 1.0 else _Pass(cfg, seeds)
        n = masked = zero = 0
        cos_min, cos_sum, d = np.inf, 0.0, 0
        for rows, n_masked in rechunk(source(), cfg.chunk_rows):
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
        if p < passes - 1:
            assert isinstance(red, _Pass)  # several passes only for theta < 1
            seeds = red.centres()
            log.debug("bank pass %d: %d centres", p + 1, len(seeds))
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
        "passes": passes,
        "centre_entries": int((entry_rows < 0).sum()),
        "device": red.device,
        "seconds": time.perf_counter() - start,
        "peak_ram_mb": peak_ram_mb(),
    }
    log.info(
        "bank: %d rows -> %d entries (x%.1f) in %.1f s", counted, len(bank), stats["compression"], stats["seconds"]
    )
    return BankResult(bank, entry_rows, stats)


def coverage_stats(
    bank: np.ndarray, blocks: Iterable[Block], cfg: BankConfig, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Exact best cosine of every valid row of ``blocks`` against ``bank [t, d]`` (one streamed pass).

    Returns ``coverage`` (fraction of rows with best cosine ``>= theta``; for theta >= 1, rows
    equal to an entry), ``min_best_cosine``, ``mean_best_cosine``, ``uncovered`` and ``verify_seconds``.
    """
    start = time.perf_counter()
    unit, nonzero = unit_rows(np.asarray(bank))
    index, _ = make_index(bank.shape[1], cfg.device)
    index.add(unit)
    exact = {r.tobytes() for r in np.asarray(bank, dtype=cfg.dtype)} if cfg.threshold >= 1.0 else None
    n = uncovered = 0
    cos_min, cos_sum = np.inf, 0.0
    for rows, n_masked in rechunk(blocks, cfg.chunk_rows):
        if len(rows):
            raw = np.ascontiguousarray(rows.astype(cfg.dtype, copy=False))
            x, keep = unit_rows(raw)
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
