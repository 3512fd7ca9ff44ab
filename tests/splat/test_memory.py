"""Memory attention and the distillation decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.splat.memory import Decoder, MemoryAttention, build_heads, load_heads, save_heads


def test_attention_returns_convex_mix_of_bank_and_picks_aligned_slot() -> None:
    torch.manual_seed(0)
    bank = F.normalize(torch.randn(10, 24), dim=-1)
    att = MemoryAttention(bank, query_dim=8, tau=0.05)
    q = torch.randn(5, 7, 8)
    out = att(q)
    assert out.shape == (5, 7, 24)
    k = F.normalize(q.reshape(-1, 8) @ att.proj, dim=-1)
    w = torch.softmax(k @ bank.T / 0.05, dim=-1)
    assert torch.allclose(out.reshape(-1, 24), w @ bank, atol=1e-5)
    # a query whose projection equals slot 3 attends (almost) only to it at a low temperature
    sharp = MemoryAttention(bank, query_dim=24, tau=0.01)
    q3 = torch.linalg.lstsq(sharp.proj.T, bank[3:4].T).solution.T
    assert F.cosine_similarity(sharp(q3), bank[3:4]).item() > 0.99
    assert not any(p.requires_grad for p in att.parameters())


def test_learnable_projection_gets_gradients() -> None:
    bank = torch.randn(6, 12)
    att = MemoryAttention(bank, 4, learn_projection=True)
    att(torch.randn(3, 4)).sum().backward()
    assert att.proj.grad is not None and att.proj.grad.abs().sum() > 0
    assert att.bank.grad is None  # the bank stays fixed


def test_heads_save_load_round_trip(tmp_path) -> None:
    banks = {"clip": torch.randn(9, 12), "dinov2": torch.randn(5, 20)}
    dims = {"clip": 4, "dinov2": 6}
    for method, hidden in (("memory", 0), ("distill", 0), ("distill", 8)):
        heads = build_heads(method, banks, dims, 0.05, False, hidden, seed=3)
        spec = {
            "method": method,
            "query_dims": dims,
            "feature_dims": {"clip": 12, "dinov2": 20},
            "tau": 0.05,
            "learn_projection": False,
            "decoder_hidden": hidden,
        }
        save_heads(tmp_path / "m.pt", heads, spec)
        back, got = load_heads(tmp_path / "m.pt")
        assert got == spec
        for m, d in dims.items():
            q = torch.randn(7, d)
            assert torch.allclose(back[m](q), heads[m](q)), (method, m)
        assert isinstance(back["clip"], Decoder if method == "distill" else MemoryAttention)
