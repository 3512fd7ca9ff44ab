"""Per-Gaussian relevance from the bank equals today's direct path (decode every feature, then score)."""

from __future__ import annotations

import pytest
import torch

from pipeline.query.encode import QueryVector
from pipeline.query.relevance import GaussianRelevance, direct_relevance
from pipeline.splat.memory import Decoder, MemoryAttention


def _head(t: int, d: int, dims: int, tau: float, seed: int) -> MemoryAttention:
    gen = torch.Generator().manual_seed(seed)
    head = MemoryAttention(torch.randn(t, d, generator=gen), dims, tau, learn_projection=True, seed=seed)
    with torch.no_grad():  # a "learnt" projection: larger than the initial one, so attention is peaked
        head.proj.copy_(3 * torch.randn(dims, d, generator=gen))
    return head


def _queries(n: int, dims: int, seed: int) -> torch.Tensor:
    q = torch.randn(n, dims, generator=torch.Generator().manual_seed(seed))
    q[0] = 0.0  # a zero query: uniform attention on both paths
    return q


@pytest.mark.parametrize(
    ("t", "d", "tau"),
    [(300, 64, 0.05), (40, 96, 0.05), (200, 32, 0.01)],  # |f| through PSC (t > d), through G (t <= d), row-max softmax
)
@pytest.mark.parametrize("mode", ["cosine", "canonical"])
def test_bank_path_equals_direct_path(t: int, d: int, tau: float, mode: str) -> None:
    head = _head(t, d, 8, tau, seed=t)
    q = _queries(3000, 8, seed=1)
    gen = torch.Generator().manual_seed(2)
    qv = QueryVector(torch.randn(d, generator=gen), torch.randn(4, d, generator=gen), mode=mode)
    ref = direct_relevance(head, q, qv)
    engine = GaussianRelevance(head, q, chunk=512)
    assert (engine.gram is not None) == (t <= d)
    rel = engine(qv)
    assert rel.shape == (3000,)
    torch.testing.assert_close(rel, ref, atol=1e-5, rtol=0)
    assert float(ref.std()) > 0.01  # the relevance varies: the comparison means something
    # a second query reuses the norms and still matches
    qv2 = QueryVector(-qv.query, qv.negatives, mode=mode)
    torch.testing.assert_close(engine(qv2), direct_relevance(head, q, qv2), atol=1e-5, rtol=0)


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
    dense = GaussianRelevance(head, q)(qv)
    assert not torch.allclose(rel, dense, atol=1e-3)  # an approximation, not the exact head
    assert torch.corrcoef(torch.stack([rel, dense]))[0, 1] > 0.9
    # k >= t is the exact head
    torch.testing.assert_close(GaussianRelevance(head, q, attention_k=t)(qv), dense, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="attention_k must be >= 1"):
        GaussianRelevance(head, q, attention_k=0)


def test_distill_heads_keep_the_direct_path() -> None:
    torch.manual_seed(0)
    dec = Decoder(8, 32, hidden=16)
    q = torch.randn(1000, 8)
    qv = QueryVector(torch.randn(32), torch.randn(4, 32), mode="canonical")
    engine = GaussianRelevance(dec, q, chunk=128)
    assert not engine.bank_path
    torch.testing.assert_close(engine(qv), direct_relevance(dec, q, qv), atol=1e-6, rtol=0)
