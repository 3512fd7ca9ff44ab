"""Cover primitives of the bank reduction: unit rows, the FAISS index, covering entries of a chunk,
greedy set cover inside a chunk, smallest enclosing caps and merges of groups of rows whose rows
one cap holds (see :mod:`pipeline.bank.reduction`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.errors import M3Error


def unit_rows(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fp32 unit rows ``[k, d]`` and a mask ``[k]`` of the non-zero rows they come from."""
    x = raw.astype(np.float32)
    norms = np.linalg.norm(x, axis=1)
    nonzero = norms > 0
    x = x[nonzero]
    x /= norms[nonzero, None]
    return x, nonzero


def _faiss() -> Any:
    """The faiss module, or :class:`M3Error` saying which extra installs it."""
    from importlib.metadata import PackageNotFoundError, version

    builds = []
    for dist in ("faiss-cpu", "faiss-gpu"):
        try:
            builds.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    if len(builds) > 1:
        raise M3Error(
            f"faiss: both {' and '.join(builds)} are installed and overwrite each other's `faiss` package; "
            "keep one: pip uninstall -y faiss-cpu faiss-gpu, then pip install -e '.[cpu]' (or '.[gpu]' on CUDA)"
        )
    try:
        import faiss
    except ImportError as exc:
        raise M3Error(
            f"faiss: not importable ({exc}); install one build: pip install -c constraints.txt -e '.[cpu]' "
            "(or '.[gpu]' on a CUDA machine)"
        ) from exc
    return faiss


def make_index(d: int, device: str) -> tuple[Any, str]:
    """A FAISS inner-product index (GPU when asked/available) and the device it lives on."""
    faiss = _faiss()
    index = faiss.IndexFlatIP(d)
    gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if device == "cuda" and not gpu:
        raise M3Error(
            "bank.device: cuda asked for but faiss has no usable GPU; on a CUDA machine install the GPU build "
            "(pip uninstall -y faiss-cpu; pip install -c constraints.txt -e '.[gpu]') or set device: auto"
        )
    if gpu and device != "cpu":
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, 0, index)
        index.m3_resources = res  # keep the GPU resources alive with the index
        return index, "cuda"
    return index, "cpu"


def mutual_pairs(
    src: np.ndarray, idx: np.ndarray, sim: np.ndarray, u: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The neighbour pairs ``src[m] -> idx[m]`` (cosine ``sim[m]``, grouped by ``src``) of ``u``
    rows that are also found the other way round.

    A range search computes the cosine of ``a`` with ``b`` and of ``b`` with ``a`` in different
    summation orders, so a pair at the threshold can be found one way only; the greedy cover's
    neighbour counts are exact only for a symmetric relation (else it may never terminate).
    """
    keys = src * u + idx
    mutual = np.isin(idx * u + src, keys)
    return src[mutual], idx[mutual], sim[mutual]


def greedy_cover(y: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy set cover of unit rows ``y [u, d]`` at cosine ``thr`` (all rows must end up covered).

    Repeatedly takes the row that covers the most still-uncovered rows (ties: the lowest row
    number), makes it an entry and marks its neighbours (cosine ``>= thr``) covered. Returns the
    entries' positions ``[e]`` (in the order taken), per row the cosine ``[u]`` to the entry that
    covered it and that entry's number ``[u]`` (an index into the entries). The neighbours come
    from a FAISS range search of the rows against themselves (CPU), so memory is the number of
    neighbour pairs (12 bytes each; at most ``u^2``).
    """
    faiss = _faiss()

    u = len(y)
    index = faiss.IndexFlatIP(y.shape[1])
    index.add(np.ascontiguousarray(y))
    lims, sim, idx = index.range_search(np.ascontiguousarray(y), thr)
    src, idx, sim = mutual_pairs(np.repeat(np.arange(u), np.diff(lims.astype(np.int64))), idx, sim, u)
    self_pair = np.zeros(u, dtype=bool)
    self_pair[src[idx == src]] = True
    if not self_pair.all():  # an entry covers itself (cosine 1 up to rounding)
        extra = np.flatnonzero(~self_pair)
        src = np.concatenate([src, extra])
        order = np.argsort(src, kind="stable")
        src = src[order]
        idx = np.concatenate([idx, extra])[order]
        sim = np.concatenate([sim, np.ones(len(extra), dtype=np.float32)])[order]
    lims = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=u))])
    degree = np.diff(lims).astype(np.int64)  # uncovered rows each row would cover
    covered = np.zeros(u, dtype=bool)
    assigned = np.full(u, -np.inf, dtype=np.float32)
    owner = np.zeros(u, dtype=np.int64)
    entries: list[int] = []
    left = u
    while left:
        r = int(np.argmax(degree))
        nbrs = idx[lims[r] : lims[r + 1]]
        fresh = ~covered[nbrs]
        new = nbrs[fresh]
        owner[new] = len(entries)
        entries.append(r)
        covered[new] = True
        left -= len(new)
        assigned[new] = sim[lims[r] : lims[r + 1]][fresh]
        assigned[r] = 1.0
        counts = lims[new + 1] - lims[new]
        pairs = np.repeat(lims[new] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        degree -= np.bincount(idx[pairs], minlength=u)
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


def enclosing_cap(
    y: np.ndarray, thr: float | None = None, lam: np.ndarray | None = None, iters: int = 300
) -> tuple[np.ndarray, float, float]:
    """Smallest spherical cap around the unit rows ``y [m, d]``, as weights ``lam [m]`` on the rows.

    The centre that maximises the smallest cosine to the rows is the direction of the point of
    their convex hull nearest the origin, ``z = y^T lam`` (``lam`` on the simplex), and that
    cosine is ``|z|``. Pairwise Frank-Wolfe on ``min |y^T lam|^2`` (start: ``lam``, else the
    row nearest the rows' mean direction) moves weight from the support row nearest the centre
    to the row farthest from it, with an exact line search; only the rows it touches get their
    cosines to all rows computed (no ``[m, m]`` matrix). Returns ``(lam [m] float64, lower,
    upper)``: the centre ``z/|z|`` reaches every row with cosine ``>= lower`` and no centre reaches
    them all above ``upper``. Stops when ``lower >= thr`` (the rows fit in a cap of cosine
    ``thr``), ``upper < thr`` (they do not), the bounds meet within 1e-6, or after ``iters`` steps.
    """
    cols: dict[int, np.ndarray] = {}
    if lam is None:  # the row nearest the mean direction
        first = int(np.argmax(np.einsum("id,d->i", y, np.einsum("id->d", y.astype(np.float64)))))
        lam = np.zeros(len(y))
        lam[first] = 1.0
    else:
        lam = lam.astype(np.float64)  # a copy
    z = np.einsum("i,id->d", lam, y)
    g = np.einsum("id,d->i", y, z)  # cosines of the rows to z, times |z|

    def col(i: int) -> np.ndarray:
        if i not in cols:
            cols[i] = np.einsum("id,d->i", y, y[i].astype(np.float64))
        return cols[i]

    for _ in range(iters + 1):
        upper = float(np.sqrt(max(np.einsum("d,d->", z, z), 0.0)))
        s = int(np.argmin(g))
        lower = float(g[s]) / upper if upper > 0 else -1.0
        if (thr is not None and (lower >= thr or upper < thr)) or upper - lower <= 1e-6:
            break
        support = np.flatnonzero(lam > 0)
        v = int(support[np.argmax(g[support])])
        cs, cv = col(s), col(v)
        slope, curve = float(g[s] - g[v]), float(cs[s] + cv[v] - 2 * cs[v])
        if v == s or slope >= 0 or curve <= 0:
            break
        step = min(-slope / curve, float(lam[v]))
        lam[s] += step
        lam[v] = 0.0 if step == lam[v] else lam[v] - step
        z += step * (y[s] - y[v])
        g += step * (cs - cv)
    return lam, lower, upper


def cap_centre(raw: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Raw-scale centre ``[d]`` (float64) of rows ``raw [m, d]`` with cap weights ``lam [m]``.

    The mean of the rows weighted by ``lam_i / |raw_i|``: its direction is ``sum lam_i
    raw_i / |raw_i|`` (the cap's centre), its scale that of the rows (identical rows give the row).
    """
    r = raw.astype(np.float64)
    w = lam / np.linalg.norm(r, axis=1)
    return np.einsum("i,id->d", w, r) / w.sum()


def merge_caps(
    groups: list[np.ndarray], counts: np.ndarray, thr: float, keep: int, tries: int = 8
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Smallest enclosing caps of groups of rows, merging groups whose rows one cap holds.

    ``groups[i] [m_i, d]`` are rows (raw, non-zero) standing for group ``i``, which has
    ``counts[i]`` rows in all. Every group gets its cap (:func:`enclosing_cap`). Then, smallest
    group first (ties: the lower number), a group merges into the first of the ``tries`` live
    groups with the nearest centres whose rows and its own fit in one cap of cosine ``>= thr``
    (tested first on the two caps' support rows, a necessary condition). A merged group keeps
    its support rows and the others farthest from its centre, at most ``keep`` rows (more when
    the support is larger). Returns ``(rows, lam, into)``: per group its rows ``[m_i', d]`` and
    cap weights ``[m_i']`` (empty once merged away) and ``into [g]``, the group it ended in.
    """
    near = 2 * thr * thr - 1  # two rows farther apart than this fit in no cap of cosine thr
    rows = list(groups)
    lam, support, cen = [], [], np.zeros((len(rows), rows[0].shape[1]))
    for i, r in enumerate(rows):  # unit rows are made again when needed: memory stays ~ the groups
        unit = unit_rows(r)[0]
        lam.append(enclosing_cap(unit)[0])
        support.append(unit[lam[i] > 0])
        cen[i] = np.einsum("i,id->d", lam[i], unit)
    cen /= np.linalg.norm(cen, axis=1, keepdims=True)
    into = np.arange(len(rows))
    for k in np.argsort(counts, kind="stable").tolist():
        sims = np.einsum("gd,d->g", cen, cen[k])
        sims[into != np.arange(len(rows))] = -np.inf
        sims[k] = -np.inf
        for j in np.argsort(-sims, kind="stable")[:tries].tolist():
            if sims[j] < near:
                break
            if enclosing_cap(np.concatenate([support[k], support[j]]), thr)[2] < thr:
                continue
            both = np.concatenate([rows[k], rows[j]])
            y = unit_rows(both)[0]
            w, lower, _ = enclosing_cap(y, thr, np.concatenate([lam[k], lam[j]]) / 2)
            if lower < thr:
                continue
            z = np.einsum("i,id->d", w, y)
            order = np.lexsort((np.einsum("id,d->i", y, z), w == 0))[: max(keep, int((w > 0).sum()))]
            order.sort()
            rows[j], lam[j], support[j] = both[order], w[order], y[order][w[order] > 0]
            cen[j] = z / np.linalg.norm(z)
            rows[k], lam[k], support[k] = rows[k][:0], lam[k][:0], support[k][:0]
            into[k] = j
            break
    while (into[into] != into).any():
        into = into[into]
    return rows, lam, into
