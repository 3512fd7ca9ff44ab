"""Per-Gaussian relevance of a query, computed from the memory bank (no d-dim feature per Gaussian).

A memory head maps a Gaussian's principal query ``q [l]`` to ``f = a PSC`` with attention
``a = softmax(cos(q W, PSC) / tau) [t]`` over the bank ``PSC [t, d]``. The relevance of a query
only needs ``cos(f, p)`` for its phrases ``p`` (the query, plus the canonical negatives), and

    f . p = a . s            s = PSC p [t]         (once per query)
    |f|^2 = a^T G a          G = PSC PSC^T [t, t]  (query-independent: once per memory)
    logits = (q / |q W|) (W PSC_unit^T) / tau      |q W|^2 = q (W W^T) q^T

so per Gaussian a query costs one ``[l] x [l, t]`` product, ``t`` exponentials and one
``[t] x [t, 1 + k]`` product: O(N t l) instead of the O(N t d) of building every feature (twice:
``q W`` against the bank and ``a PSC``). The norms ``|f|`` are computed once per memory (O(N t
min(t, d)), with ``G`` or through ``PSC``, whichever is smaller) and reused by every query.

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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.query.encode import QueryVector
from pipeline.splat.memory import MemoryAttention

log = logging.getLogger(__name__)

CHUNK = 8192  # Gaussians per step: bounds the [rows, t] attention block (33 MB at t = 1000)
EPS = 1e-12  # F.normalize's floor on a norm


class GaussianRelevance:
    """Relevance ``[N]`` of queries for every Gaussian of one model (see the module docstring).

    ``head`` is the model's head (:class:`MemoryAttention` or a decoder), ``queries [N, l]`` the
    Gaussians' principal queries, ``attention_k`` the sparse attention size (None: exact). Runs
    on the head's device; relevance comes back there.
    """

    def __init__(self, head: nn.Module, queries: Tensor, attention_k: int | None = None, chunk: int = CHUNK):
        if attention_k is not None and attention_k < 1:
            raise ValueError(f"GaussianRelevance: attention_k must be >= 1 or None, got {attention_k}")
        self.head, self.chunk = head, int(chunk)
        self.device = next(itertools.chain(head.parameters(), head.buffers())).device
        self.queries = queries.detach().float().to(self.device)
        self.bank_path = isinstance(head, MemoryAttention)
        self._norms: Tensor | None = None
        self._sparse: tuple[Tensor, Tensor, Tensor] | None = None
        if not isinstance(head, MemoryAttention):
            return
        with torch.no_grad():
            bank, w = head.bank.detach().float(), head.proj.detach().float()
            self.bank = bank
            self.k = None if attention_k is None or attention_k >= len(bank) else int(attention_k)
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

    def _logits(self, s: int) -> Tensor:
        """Attention logits ``[rows, t]`` of Gaussians ``s .. s + chunk``, shifted (by 1/tau or the row max)."""
        q = self.queries[s : s + self.chunk] * self.inv_norm[s : s + self.chunk, None]
        if self.row_max:
            z = torch.mm(q, self.logits)
            return z.sub_(z.amax(-1, keepdim=True))
        return torch.mm(torch.cat([q, torch.ones(len(q), 1, device=self.device)], dim=1), self.logits)

    def _attention(self, s: int) -> Tensor:
        """Unnormalised attention ``[rows, t]`` of Gaussians ``s .. s + chunk``."""
        return self._logits(s).exp_()

    def _sq_norm(self, a: Tensor) -> Tensor:
        """``|a PSC|^2 [rows]`` of normalised attention ``a [rows, t]``."""
        if self.gram is not None:
            return ((a @ self.gram) * a).sum(-1)
        return (a @ self.bank).square().sum(-1)

    def norms(self) -> Tensor:
        """``|f| [N]`` of every Gaussian's feature under dense attention (computed once)."""
        if self._norms is None:
            out = torch.empty(len(self), device=self.device)
            with torch.no_grad():
                for s in range(0, len(self), self.chunk):
                    e = self._attention(s)
                    out[s : s + len(e)] = self._sq_norm(e / e.sum(-1, keepdim=True))
            self._norms = out.clamp_min(0).sqrt().clamp_min(EPS)
        return self._norms

    def sparse(self) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k attention: indices ``[N, k]``, renormalised weights ``[N, k]`` and ``|f_k| [N]``."""
        if self._sparse is None:
            n, k = len(self), self.k
            if k is None:
                raise ValueError("GaussianRelevance.sparse: built without attention_k (exact attention)")
            idx = torch.empty(n, k, dtype=torch.int64, device=self.device)
            wts = torch.empty(n, k, device=self.device)
            sq = torch.empty(n, device=self.device)
            gram = self.bank @ self.bank.T if self.gram is None else self.gram
            with torch.no_grad():
                for s in range(0, n, self.chunk):
                    top, ids = torch.topk(self._logits(s), k, dim=-1, sorted=False)
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
        if self.k is not None:
            idx, w, norm = self.sparse()
            dots = F.embedding_bag(idx, s, per_sample_weights=w, mode="sum")  # [N, 1 + k] = w . s[idx]
            return qv.from_cosines(dots / norm[:, None])
        norm = self.norms()
        s1 = torch.cat([s, torch.ones(len(s), 1, device=self.device)], dim=1)  # the last column sums the weights
        out = torch.empty(len(self), device=self.device)
        for a in range(0, len(self), self.chunk):
            dots = self._attention(a) @ s1  # [rows, 2 + k]
            cos = dots[:, :-1] / dots[:, -1:] / norm[a : a + len(dots), None]
            out[a : a + len(dots)] = qv.from_cosines(cos)
        return out

    def _direct(self, qv: QueryVector) -> Tensor:
        """Decode each Gaussian's feature (chunked) and score it."""
        parts = [qv(self.head(self.queries[s : s + self.chunk])) for s in range(0, len(self), self.chunk)]
        return torch.cat(parts) if parts else torch.empty(0)


def direct_relevance(head: nn.Module, queries: Tensor, qv: QueryVector) -> Tensor:
    """Today's reference path: every Gaussian's feature ``head(q) [N, d]``, then ``qv`` on it."""
    with torch.no_grad():
        return qv(head(queries.detach().float()))
