"""Per-Gaussian relevance from the bank equals today's direct path (decode every feature, then score)."""

from __future__ import annotations

import pytest
import torch

from pipeline.query.encode import QueryVector
from pipeline.query.relevance import TOLERANCE, GaussianRelevance, direct_relevance
from pipeline.splat.memory import Decoder, MemoryAttention


def _head(t: int, d: int, dims: int, tau: float, seed: int, scale: float = 3.0) -> MemoryAttention:
    gen = torch.Generator().manual_seed(seed)
    head = MemoryAttention(torch.randn(t, d, generator=gen), dims, tau, learn_projection=True, seed=seed)
    with torch.no_grad():  # a "learnt" projection: larger than the initial one, so attention is peaked
        head.proj.copy_(scale * torch.randn(dims, d, generator=gen))
    return head


def _queries(n: int, dims: int, seed: int) -> torch.Tensor:
    q = torch.randn(n, dims, generator=torch.Generator().manual_seed(seed))
    q[0] = 0.0  # a zero query: uniform attention on both paths
    return q


def _query(d: int, mode: str, seed: int = 2) -> QueryVector:
    gen = torch.Generator().manual_seed(seed)
    return QueryVector(torch.randn(d, generator=gen), torch.randn(4, d, generator=gen), mode=mode)


def _cache_mb(rows: int, t: int) -> float:
    """The cache budget that holds exactly ``rows`` Gaussians of a bank of ``t`` slots."""
    return (rows * (2 * t + 8 * min(16, t)) + 1) / 2**20


def _tol(qv: QueryVector, tolerance: float = TOLERANCE) -> float:
    """The relevance's error bound for cosines within ``tolerance`` (see the module docstring)."""
    return tolerance * (qv.scale / 2 if qv.mode == "canonical" else 1.0)


@pytest.mark.parametrize(
    ("t", "d", "tau"),
    [(300, 64, 0.05), (40, 96, 0.05), (200, 32, 0.01)],  # |f| through PSC (t > d), through G (t <= d), row-max softmax
)
@pytest.mark.parametrize("mode", ["cosine", "canonical"])
def test_bank_path_equals_direct_path(t: int, d: int, tau: float, mode: str) -> None:
    head = _head(t, d, 8, tau, seed=t)
    q = _queries(3000, 8, seed=1)
    qv = _query(d, mode)
    ref = direct_relevance(head, q, qv)
    assert float(ref.std()) > 0.01  # the relevance varies: the comparison means something
    # float32 dense attention, no cache: equal to rounding
    dense = GaussianRelevance(head, q, chunk=512, cache_mb=0)
    assert (dense.gram is not None) == (t <= d)
    torch.testing.assert_close(dense(qv), ref, atol=1e-5, rtol=0)
    # the cached exact path: within the tolerance, mostly from the cache (peaked attention)
    engine = GaussianRelevance(head, q, chunk=512)
    rel = engine(qv)
    assert rel.shape == (3000,)
    assert engine.cached == 3000 and engine.recomputed < 1500
    torch.testing.assert_close(rel, ref, atol=_tol(qv) + 1e-5, rtol=0)
    # a second query reuses the norms and the cache and is still within the tolerance
    qv2 = QueryVector(-qv.query, qv.negatives, mode=mode)
    torch.testing.assert_close(engine(qv2), direct_relevance(head, q, qv2), atol=_tol(qv2) + 1e-5, rtol=0)


@pytest.mark.parametrize(("tau", "scale"), [(0.02, 3.0), (0.05, 3.0), (1.0, 3.0), (50.0, 0.1)])
@pytest.mark.parametrize("tolerance", [1e-4, 1e-5, 1e-6])
def test_exact_path_stays_within_its_tolerance(tau: float, scale: float, tolerance: float) -> None:
    """Peaked to flat attention (a large tau, a small projection: near-uniform weights, small |f|):
    every cosine is within ``tolerance`` of float32 dense attention, recomputed where the cache's
    bound cannot promise it."""
    t, d = 400, 48
    head = _head(t, d, 8, tau, seed=7, scale=scale)
    q = _queries(2000, 8, seed=8)
    qv = _query(d, "cosine", seed=9)
    ref = GaussianRelevance(head, q, cache_mb=0)(qv)
    engine = GaussianRelevance(head, q, chunk=300, tolerance=tolerance)
    err = (engine(qv) - ref).abs().max()
    assert float(err) <= tolerance + 2e-6  # the float32 rounding of two summation orders
    if tau >= 1.0 and tolerance <= 1e-5:  # flat: the tail holds the mass, the bound fails, the logits decide
        assert engine.recomputed > 1000
    if tau <= 0.05 and tolerance >= 1e-4:  # peaked: the cache answers
        assert engine.recomputed < 200


def test_flat_attention_is_recomputed_not_approximated() -> None:
    """Uniform attention over a bank with a nearly-zero mean: |f| is tiny, float16's rounding of
    the weights would be large against it, so every Gaussian is recomputed exactly."""
    t, d = 500, 64
    gen = torch.Generator().manual_seed(11)
    bank = torch.randn(t, d, generator=gen)
    bank -= bank.mean(0) - 1e-3 * torch.randn(d, generator=gen)  # mean |f| ~ 1e-3 against |s| ~ 1
    head = MemoryAttention(bank, 8, tau=1e3, learn_projection=True, seed=1)
    q = _queries(1000, 8, seed=12)
    qv = _query(d, "cosine", seed=13)
    ref = direct_relevance(head, q, qv)
    engine = GaussianRelevance(head, q)
    torch.testing.assert_close(engine(qv), ref, atol=TOLERANCE, rtol=0)
    assert engine.recomputed == 1000
    assert float(ref.abs().max()) > 0.1  # cosines of the tiny means are not small


@pytest.mark.parametrize("cached", [0, 700, 1537, 3000])
def test_cache_budget_and_chunk_boundaries(cached: int) -> None:
    """Gaussians beyond the cache budget are recomputed; blocks and chunks straddle the budget."""
    t, d = 150, 40
    head = _head(t, d, 8, 0.05, seed=21)
    q = _queries(3000, 8, seed=22)
    qv = _query(d, "canonical", seed=23)
    ref = direct_relevance(head, q, qv)
    engine = GaussianRelevance(head, q, chunk=512, cache_mb=_cache_mb(cached, t))
    rel = engine(qv)
    assert engine.cached == cached
    assert engine.recomputed >= 3000 - cached
    torch.testing.assert_close(rel, ref, atol=_tol(qv) + 1e-5, rtol=0)
    torch.testing.assert_close(engine.norms(), GaussianRelevance(head, q, chunk=700, cache_mb=0).norms())


def test_empty_memory() -> None:
    head = _head(50, 16, 8, 0.05, seed=31)
    q = torch.empty(0, 8)
    qv = _query(16, "canonical", seed=32)
    for k in (None, 4):
        engine = GaussianRelevance(head, q, attention_k=k)
        assert engine(qv).shape == (0,)
        assert engine.norms().shape == (0,)


def test_sparse_attention_is_the_renormalised_top_k() -> None:
    t, d, k = 120, 48, 5
    head = _head(t, d, 8, 0.05, seed=3)
    q = _queries(700, 8, seed=4)
    qv = QueryVector(torch.randn(d, generator=torch.Generator().manual_seed(5)))
    rel = GaussianRelevance(head, q, attention_k=k, chunk=256)(qv)
    # reference: the head's logits, only the k largest, softmax over those, features from the bank
    with torch.no_grad():
        logits = torch.nn.functional.normalize(q @ head.proj, dim=-1) @ head.bank_unit.T / head.tau
        top, idx = torch.topk(logits, k, dim=-1)
        feats = (torch.softmax(top, dim=-1)[..., None] * head.bank[idx]).sum(1)
    torch.testing.assert_close(rel, qv(feats), atol=1e-5, rtol=0)
    dense = GaussianRelevance(head, q, cache_mb=0)(qv)
    assert not torch.allclose(rel, dense, atol=1e-3)  # an approximation, not the exact head
    assert torch.corrcoef(torch.stack([rel, dense]))[0, 1] > 0.9
    # k >= t is the exact head
    torch.testing.assert_close(GaussianRelevance(head, q, attention_k=t, cache_mb=0)(qv), dense, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="attention_k must be >= 1"):
        GaussianRelevance(head, q, attention_k=0)
    with pytest.raises(ValueError, match="tolerance > 0"):
        GaussianRelevance(head, q, tolerance=0.0)


def test_distill_heads_keep_the_direct_path() -> None:
    torch.manual_seed(0)
    dec = Decoder(8, 32, hidden=16)
    q = torch.randn(1000, 8)
    qv = QueryVector(torch.randn(32), torch.randn(4, 32), mode="canonical")
    engine = GaussianRelevance(dec, q, chunk=128)
    assert not engine.bank_path
    torch.testing.assert_close(engine(qv), direct_relevance(dec, q, qv), atol=1e-6, rtol=0)
