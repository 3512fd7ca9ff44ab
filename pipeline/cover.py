"""Cover primitives of the bank reduction: unit rows, the FAISS index, covering entries of a chunk,
greedy set cover inside a chunk and merges of small groups (see :mod:`pipeline.reduction`)."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import M3Error


def unit_rows(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fp32 unit rows ``[k, d]`` and a mask ``[k]`` of the non-zero rows they come from."""
    x = raw.astype(np.float32)
    norms = np.linalg.norm(x, axis=1)
    nonzero = norms > 0
    x = x[nonzero]
    x /= norms[nonzero, None]
    return x, nonzero


def make_index(d: int, device: str) -> tuple[Any, str]:
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


def greedy_cover(y: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy set cover of unit rows ``y [u, d]`` at cosine ``thr`` (all rows must end up covered).

    Repeatedly takes the row that covers the most still-uncovered rows (ties: the lowest row
    number), makes it an entry and marks its neighbours (cosine ``>= thr``) covered. Returns the
    entries' positions ``[e]`` (in the order taken), per row the cosine ``[u]`` to the entry that
    covered it and that entry's number ``[u]`` (an index into the entries). Memory: the
    ``[u, u]`` cosine matrix and its thresholded copy.
    """
    u = len(y)
    gram = y @ y.T  # [u, u]
    adj = gram >= thr
    np.fill_diagonal(adj, True)  # an entry covers itself (cosine 1 up to rounding)
    degree = adj.sum(axis=1, dtype=np.int64)  # uncovered rows each row would cover
    covered = np.zeros(u, dtype=bool)
    assigned = np.full(u, -np.inf, dtype=np.float32)
    owner = np.zeros(u, dtype=np.int64)
    entries: list[int] = []
    left = u
    while left:
        r = int(np.argmax(degree))
        new = adj[r] & ~covered
        owner[new] = len(entries)
        entries.append(r)
        covered |= new
        left -= int(new.sum())
        assigned[new] = gram[r, new]
        assigned[r] = 1.0
        degree -= adj[new].sum(axis=0, dtype=np.int64)
    return np.asarray(entries, dtype=np.int64), assigned, owner


def covering(index: Any, x: np.ndarray, thr: float, k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries of ``index`` with inner product ``>= thr`` for every row of ``x [q, d]``.

    Returns ``(lims [q+1], sim [m], idx [m])``: row ``i``'s entries are ``idx[lims[i]:lims[i+1]]``.
    ``k=None``: a FAISS range search (CPU indexes); else the ``k`` nearest entries, thresholded
    (GPU indexes have no range search; a row with more than ``k`` covering entries sees the
    nearest ``k``, which still cover it).
    """
    if k is None:
        lims, sim, idx = index.range_search(x, thr)
        return lims.astype(np.int64), sim, idx
    sim, idx = index.search(x, min(k, index.ntotal))
    keep = (sim >= thr) & (idx >= 0)
    lims = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
    return lims, sim[keep], idx[keep]


def merge_small(members: list[np.ndarray], sums: np.ndarray, thr: float, dtype: str) -> list[tuple[int, int]]:
    """Merges of small groups of rows whose joint centre still covers them all.

    ``members[i] [n_i, d]`` are the unit rows of group ``i``, ``sums [g, d]`` their raw sums. Pairs
    are tried by decreasing cosine of their centres (ties: lower numbers first); a pair merges
    when the raw mean of both groups (cast to ``dtype``) has cosine ``>= thr`` with every row of
    both. Repeats over the merged groups until no pair merges. Returns ``(kept, merged_into_it)``
    pairs in the order done. Memory: the ``[g, g]`` centre cosines.
    """
    groups = {i: (m, sums[i].copy()) for i, m in enumerate(members)}
    done: list[tuple[int, int]] = []
    merged = True
    while merged and len(groups) > 1:
        merged = False
        ids = sorted(groups)
        cen, _ = unit_rows(np.stack([groups[i][1] for i in ids]).astype(dtype))
        sim = cen @ cen.T
        a, b = np.triu_indices(len(ids), 1)
        near = sim[a, b] >= 2 * thr * thr - 1  # farther apart, no point is within thr of both
        a, b, c = a[near], b[near], sim[a, b][near]
        taken: set[int] = set()
        for k in np.lexsort((b, a, -c)):
            i, j = ids[a[k]], ids[b[k]]
            if i in taken or j in taken:
                continue
            rows = np.concatenate([groups[i][0], groups[j][0]])
            total = groups[i][1] + groups[j][1]
            centre = unit_rows((total / len(rows))[None].astype(dtype))[0]
            if len(centre) and float((rows @ centre[0]).min()) >= thr:
                groups[i] = (rows, total)
                del groups[j]
                taken.update((i, j))
                done.append((i, j))
                merged = True
    return done
