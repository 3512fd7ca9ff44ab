"""Per-Gaussian relevance of a query, computed from the memory bank (no d-dim feature per Gaussian).

A memory head maps a Gaussian's principal query ``q [l]`` to ``f = a PSC`` with attention
``a = softmax(cos(q W, PSC) / tau) [t]`` over the bank ``PSC [t, d]``. The relevance of a query
only needs ``cos(f, p)`` for its phrases ``p`` (the query, plus the canonical negatives), and

    f . p = a . s            s = PSC p [t]         (once per query)
    |f|^2 = a^T G a          G = PSC PSC^T [t, t]  (query-independent: once per memory)
    logits = (q / |q W|) (W PSC_unit^T) / tau      |q W|^2 = q (W W^T) q^T

Nothing but ``s`` depends on the query, so one pass per memory computes every Gaussian's ``|f|``
(O(N t min(t, d)), with ``G`` or through ``PSC``, whichever is smaller) and caches its attention:
the ``HEAD`` largest weights in float32 (indices ``[N, 16]``), the rest as a dense float16 tail
``[N, t]`` (2 bytes per slot: 2 GB at 1M Gaussians and t = 1000; ``cache_mb`` caps it, the
Gaussians beyond it are recomputed by every query). A query is then one ``[N, t] x [t, 2 + k]``
product and an O(N 16) gather, no exponential. The tail's rounding is bounded per Gaussian and
query: float16 rounds a weight ``w`` by at most ``2^-11 |w|`` (``2^-25`` below ``2^-14``), so
each cosine is off by at most ``(2^-11 / (1 - 2^-11) tail . u + 2^-25 sum(u)) / |f|`` with
``u = max |s|`` over the phrases, one more column of the same product. Gaussians whose bound
exceeds ``tolerance`` (flat attention: small ``|f|``, mass spread over the tail) are recomputed
exactly, in float32 from their logits: every cosine is within ``tolerance`` of the float32 dense
computation, a canonical relevance within ``scale / 2 * tolerance`` (the sigmoid's slope is at
most 1/4, of the difference of two cosines).

``attention_k`` keeps each Gaussian's ``k`` largest attention weights only (renormalised, the
sparse attention of e.g. top-k retrieval): its indices ``[N, k]``, weights and norms
``|f_k|^2 = w^T G[idx, idx] w`` are computed once, after which a query costs O(N k). It is an
approximation of the trained (dense) head; ``benchmarks/query.py`` measures its agreement.

Heads that are not memory attention (the distillation decoder) use the direct path: decode each
Gaussian's feature in chunks and score it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.query.encode import QueryVector
from pipeline.splat.memory import MemoryAttention

log = logging.getLogger(__name__)

CHUNK = 8192  # Gaussians per step: bounds the [rows, t] attention block (33 MB at t = 1000)
BLOCK = 1024  # cached Gaussians per step of an exact query: their float32 tail [rows, t] stays in cache
SPARSE_BLOCK = 65536  # Gaussians per step of a sparse query (bounds its [rows, 1 + k] temporaries)
EPS = 1e-12  # F.normalize's floor on a norm
TOLERANCE = 1e-4  # largest error of an exact query's cosines (see the module docstring)
CACHE_MB = 4096  # largest attention cache of the exact path (MiB)
HEAD = 16  # largest attention weights per Gaussian that the cache keeps in float32
F16_REL = 2.0**-11 / (1 - 2.0**-11)  # float16 rounding of a normal weight, relative to the rounded weight
F16_ABS = 2.0**-25  # float16 rounding of a subnormal weight (below 2^-14)


class GaussianRelevance:
    """Relevance ``[N]`` of queries for every Gaussian of one model (see the module docstring).

    ``head`` is the model's head (:class:`MemoryAttention` or a decoder), ``queries [N, l]`` the
    Gaussians' principal queries, ``attention_k`` the sparse attention size (None: exact, each
    cosine within ``tolerance``, through an attention cache of at most ``cache_mb`` MiB). Runs on
    the head's device; relevance comes back there.
    """

    def __init__(
        self,
        head: nn.Module,
        queries: Tensor,
        attention_k: int | None = None,
        chunk: int = CHUNK,
        tolerance: float = TOLERANCE,
        cache_mb: float = CACHE_MB,
    ):
        if attention_k is not None and attention_k < 1:
            raise ValueError(f"GaussianRelevance: attention_k must be >= 1 or None, got {attention_k}")
        if not tolerance > 0 or cache_mb < 0:
            raise ValueError(f"GaussianRelevance: needs tolerance > 0 and cache_mb >= 0, got {tolerance}, {cache_mb}")
        self.head, self.chunk, self.tolerance = head, int(chunk), float(tolerance)
        self.device = next(itertools.chain(head.parameters(), head.buffers())).device
        self.queries = queries.detach().float().to(self.device)
        self.bank_path = isinstance(head, MemoryAttention)
        self._norms: Tensor | None = None
        self._sparse: tuple[Tensor, Tensor, Tensor] | None = None
        self._cache: tuple[Tensor, Tensor, Tensor] | None = None
        self.recomputed = 0  # Gaussians the last exact query recomputed from their logits
        if not isinstance(head, MemoryAttention):
            return
        with torch.no_grad():
            bank, w = head.bank.detach().float(), head.proj.detach().float()
            self.bank = bank
            self.k = None if attention_k is None or attention_k >= len(bank) else int(attention_k)
            self.head_k = min(HEAD, len(bank))
            row_bytes = 2 * len(bank) + 8 * self.head_k
            self.cached = 0 if self.k is not None else min(len(self), int(cache_mb * 2**20) // row_bytes)
            proj = w @ head.bank_unit.detach().float().T / head.tau  # [l, t]
            # logits minus their bound 1/tau (|cos| <= 1) through one more row: exp never overflows
            # and underflows only below exp(-2/tau); for a small tau each row's max is taken instead
            self.row_max = 2.0 / head.tau > 80.0
            shift = torch.full((0 if self.row_max else 1, len(bank)), -1.0 / head.tau, device=self.device)
            self.logits = torch.cat([proj, shift])  # [l (+ 1), t]
            self.inv_norm = 1.0 / (((self.queries @ (w @ w.T)) * self.queries).sum(-1).clamp_min(0).sqrt()).clamp_min(
                EPS
            )  # 1 / |q W| [N]
            self.gram = bank @ bank.T if len(bank) <= bank.shape[1] else None  # [t, t] when cheaper than PSC

    def __len__(self) -> int:
        return len(self.queries)

    def _logits(self, rows: slice | Tensor) -> Tensor:
        """Attention logits ``[rows, t]`` of the Gaussians ``rows``, shifted (by 1/tau or the row max)."""
        q = self.queries[rows] * self.inv_norm[rows, None]
        if self.row_max:
            z = torch.mm(q, self.logits)
            return z.sub_(z.amax(-1, keepdim=True))
        return torch.mm(torch.cat([q, torch.ones(len(q), 1, device=self.device)], dim=1), self.logits)

    def _attention(self, rows: slice | Tensor) -> Tensor:
        """Unnormalised attention ``[rows, t]`` of the Gaussians ``rows``."""
        return self._logits(rows).exp_()

    def _sq_norm(self, a: Tensor) -> Tensor:
        """``|a PSC|^2 [rows]`` of normalised attention ``a [rows, t]``."""
        if self.gram is not None:
            return ((a @ self.gram) * a).sum(-1)
        return (a @ self.bank).square().sum(-1)

    def norms(self) -> Tensor:
        """``|f| [N]`` of every Gaussian's feature under dense attention (computed once; on the way,
        the exact path caches the attention of its first ``cached`` Gaussians)."""
        if self._norms is None:
            n, m, h = len(self), self.cached, self.head_k
            out = torch.empty(n, device=self.device)
            idx = torch.empty(m, h, dtype=torch.int32, device=self.device)
            wts = torch.empty(m, h, device=self.device)
            tail = torch.empty(m, len(self.bank), dtype=torch.float16, device=self.device)
            with torch.no_grad():
                for s in range(0, n, self.chunk):
                    e = self._attention(slice(s, s + self.chunk))
                    a = e.div_(e.sum(-1, keepdim=True))
                    out[s : s + len(a)] = self._sq_norm(a)
                    if s < m:
                        a = a[: m - s]
                        w, ids = torch.topk(a, h, dim=-1, sorted=False)
                        idx[s : s + len(a)], wts[s : s + len(a)] = ids, w
                        tail[s : s + len(a)] = a.scatter_(1, ids, 0.0)
            self._norms = out.clamp_min(0).sqrt().clamp_min(EPS)
            self._cache = (idx, wts, tail) if m else None
        return self._norms

    def sparse(self) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k attention: indices ``[N, k]`` (int32), renormalised weights ``[N, k]`` and ``|f_k| [N]``."""
        if self._sparse is None:
            n, k = len(self), self.k
            if k is None:
                raise ValueError("GaussianRelevance.sparse: built without attention_k (exact attention)")
            idx = torch.empty(n, k, dtype=torch.int32, device=self.device)
            wts = torch.empty(n, k, device=self.device)
            sq = torch.empty(n, device=self.device)
            gram = self.bank @ self.bank.T if self.gram is None else self.gram
            with torch.no_grad():
                for s in range(0, n, self.chunk):
                    top, ids = torch.topk(self._logits(slice(s, s + self.chunk)), k, dim=-1, sorted=False)
                    w = torch.softmax(top, dim=-1)
                    g = gram[ids[:, :, None], ids[:, None, :]]  # [rows, k, k]
                    sq[s : s + len(w)] = (w[:, :, None] * g * w[:, None, :]).sum((1, 2))
                    idx[s : s + len(w)], wts[s : s + len(w)] = ids, w
            self._sparse = (idx, wts, sq.clamp_min(0).sqrt().clamp_min(EPS))
        return self._sparse

    @torch.no_grad()
    def __call__(self, qv: QueryVector) -> Tensor:
        """Relevance ``[N]`` of ``qv`` (its mode: cosine or canonical) for every Gaussian."""
        if not self.bank_path:
            return self._direct(qv)
        qv.check_dim(self.bank.shape[1])
        s = self.bank @ qv.phrases().to(self.device).T  # [t, 1 + k]
        if self.k is None:
            return self._exact(qv, s)
        idx, w, norm = self.sparse()
        out = torch.empty(len(self), device=self.device)

        def block(a: int, b: int) -> None:
            dots = F.embedding_bag(idx[a:b], s, per_sample_weights=w[a:b], mode="sum")  # w . s[idx]
            out[a:b] = qv.from_cosines(dots / norm[a:b, None])

        _blocks(len(self), SPARSE_BLOCK, block, self.device)
        return out

    def _exact(self, qv: QueryVector, s: Tensor) -> Tensor:
        """Relevance ``[N]`` under dense attention from the phrases' ``s [t, 1 + k]``: the cached
        Gaussians from their cache, those beyond it or over the tolerance from their logits."""
        norm = self.norms()
        out = torch.empty(len(self), device=self.device)
        redo = torch.arange(self.cached, len(self), device=self.device)
        if self._cache is not None:
            idx, wts, tail = self._cache
            p, tol = s.shape[1], self.tolerance
            u = s.abs().amax(1)  # [t]: each slot's largest |s| over the phrases
            cols = torch.cat([s, u[:, None]], dim=1)  # [t, 2 + k]: the last column bounds the rounding
            slack = F16_ABS * float(u.sum())
            over = torch.empty(len(tail), dtype=torch.bool, device=self.device)

            def block(a: int, b: int) -> None:
                d = torch.mm(tail[a:b].float(), cols)  # [rows, 2 + k]
                d[:, :p] += F.embedding_bag(idx[a:b], s, per_sample_weights=wts[a:b], mode="sum")
                out[a:b] = qv.from_cosines(d[:, :p] / norm[a:b, None])
                over[a:b] = d[:, p] * F16_REL + slack > tol * norm[a:b]

            _blocks(len(tail), min(BLOCK, self.chunk), block, self.device)
            redo = torch.cat([torch.nonzero(over).squeeze(1), redo])
        s1 = torch.cat([s, torch.ones(len(s), 1, device=self.device)], dim=1)  # the last column sums the weights
        for a in range(0, len(redo), self.chunk):
            rows = redo[a : a + self.chunk]
            dots = self._attention(rows) @ s1  # [rows, 2 + k]
            out[rows] = qv.from_cosines(dots[:, :-1] / dots[:, -1:] / norm[rows, None])
        self.recomputed = len(redo)
        return out

    def _direct(self, qv: QueryVector) -> Tensor:
        """Decode each Gaussian's feature (chunked) and score it."""
        parts = [qv(self.head(self.queries[s : s + self.chunk])) for s in range(0, len(self), self.chunk)]
        return torch.cat(parts) if parts else torch.empty(0)


def direct_relevance(head: nn.Module, queries: Tensor, qv: QueryVector) -> Tensor:
    """Today's reference path: every Gaussian's feature ``head(q) [N, d]``, then ``qv`` on it."""
    with torch.no_grad():
        return qv(head(queries.detach().float()))


def _blocks(n: int, step: int, block: Callable[[int, int], None], device: torch.device) -> None:
    """``block(a, b)`` over ``range(n)`` in steps of ``step`` rows. On the CPU each of torch's threads
    takes a contiguous share of the blocks and runs them on one intra-op thread: no barrier between
    the threads at every block's operations (each costs a time slice on a busy machine)."""
    workers = torch.get_num_threads() if device.type == "cpu" else 1
    share = -(-n // (workers * step)) * step  # whole blocks per worker
    starts = list(range(0, n, share)) if n else []

    def run(lo: int) -> None:
        hi = min(lo + share, n)
        for a in range(lo, hi, step):
            block(a, min(a + step, hi))

    def worker(lo: int) -> None:
        torch.set_num_threads(1)  # this thread's own setting (OpenMP and MKL keep one per thread)
        try:
            with torch.no_grad():  # grad mode is per thread
                run(lo)
        finally:
            torch.set_num_threads(workers)

    if len(starts) <= 1:
        for lo in starts:
            run(lo)
        return
    with ThreadPoolExecutor(len(starts)) as pool:
        list(pool.map(worker, starts))
