"""PSC bank reduction (pipeline.bank.reduction): coverage, determinism, dedup, masks, stats, storage."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.bank.config import BankConfig
from pipeline.bank.cover import cap_centre, covering, enclosing_cap, greedy_cover, merge_caps, mutual_pairs
from pipeline.bank.reduction import build_bank, coverage_stats, rechunk
from pipeline.bank.store import check_bank_matches, load_bank, save_bank
from pipeline.core.errors import M3Error
from tests.helpers.data import best_cos64


def clustered(n: int = 3000, d: int = 64, k: int = 12, noise: float = 0.45, seed: int = 0) -> np.ndarray:
    """``[n, d]`` rows around ``k`` centres with a spread of within-cluster cosines around 0.8."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scale = rng.uniform(0.3, 1.5, size=(n, 1)) * noise  # some rows close to their centre, some far
    rows = centres[rng.integers(0, k, n)] + scale * rng.standard_normal((n, d)) / np.sqrt(d)
    return (rows * rng.uniform(0.5, 3.0, size=(n, 1))).astype(np.float32)  # raw rows: any norm


def blocks(x: np.ndarray, size: int, valid: np.ndarray | None = None):
    return [(x[i : i + size], None if valid is None else valid[i : i + size]) for i in range(0, len(x), size)]


@pytest.mark.parametrize("theta", [0.6, 0.8, 0.9])
def test_every_row_covered_on_clustered_data(theta: float) -> None:
    x = clustered()
    cfg = BankConfig(threshold=theta, dtype="float32", chunk_rows=512)
    res = build_bank(blocks(x, 300), cfg)
    best = best_cos64(res.bank, x)
    assert best.min() >= theta
    assert 1 < len(res.bank) < len(x) / 2  # it does reduce, and needs more than one entry
    assert res.stats["coverage"] == 1.0 and res.stats["min_best_cosine"] >= theta
    # entries are raw input rows (at the recorded positions) or raw-scale centres (-1)
    rows = res.entry_rows >= 0
    np.testing.assert_array_equal(res.bank[rows], x[res.entry_rows[rows]])
    assert res.stats["centre_entries"] == (~rows).sum() > 0 and res.stats["passes"] == 6
    norms = np.linalg.norm(res.bank, axis=1)
    assert norms.mean() > 1.3  # raw scale (the rows' norms average ~1.75), not unit vectors
    # one pass (refine 0): every entry an input row; refining gives a smaller bank, still covering
    single = build_bank(blocks(x, 300), BankConfig(threshold=theta, dtype="float32", chunk_rows=512, refine=0))
    np.testing.assert_array_equal(single.bank, x[single.entry_rows])
    assert best_cos64(single.bank, x).min() >= theta and single.stats["passes"] == 1
    closer = best.mean() > best_cos64(single.bank, x).mean() + 0.01
    assert len(res.bank) < len(single.bank) or (len(res.bank) == len(single.bank) and closer)


def test_sources_one_shot_iterator_gets_one_pass() -> None:
    x = clustered(seed=6)
    cfg = BankConfig(threshold=0.8, dtype="float32", chunk_rows=512)
    listed = build_bank(blocks(x, 300), cfg)
    called = build_bank(lambda: iter(blocks(x, 300)), cfg)
    assert listed.bank.tobytes() == called.bank.tobytes()
    once = build_bank(iter(blocks(x, 300)), cfg)  # a generator cannot be replayed
    single = build_bank(blocks(x, 300), BankConfig(threshold=0.8, dtype="float32", chunk_rows=512, refine=0))
    assert once.bank.tobytes() == single.bank.tobytes() and once.stats["passes"] == 1


def test_fp16_bank_covers_its_stored_vectors() -> None:
    x = clustered(seed=3)
    res = build_bank(blocks(x, 1000), BankConfig(threshold=0.8, dtype="float16", chunk_rows=700))
    assert res.bank.dtype == np.float16
    assert best_cos64(res.bank, x.astype(np.float16)).min() >= 0.8


def test_deterministic_and_independent_of_block_sizes() -> None:
    x = clustered(seed=1)
    cfg = BankConfig(threshold=0.8, dtype="float32", chunk_rows=400)
    a = build_bank(blocks(x, 128), cfg)
    b = build_bank(blocks(x, 128), cfg)
    c = build_bank(blocks(x, 999), cfg)
    assert a.bank.tobytes() == b.bank.tobytes() == c.bank.tobytes()
    np.testing.assert_array_equal(a.entry_rows, c.entry_rows)


def test_identical_rows_give_one_entry() -> None:
    row = np.random.default_rng(0).standard_normal(32).astype(np.float32)
    x = np.tile(row, (1000, 1))
    for theta in (0.8, 1.0):
        res = build_bank(blocks(x, 128), BankConfig(threshold=theta, dtype="float32", chunk_rows=256))
        assert len(res.bank) == 1 and res.stats["t"] == 1
        np.testing.assert_array_equal(res.bank[0], row)
        assert res.stats["compression"] == 1000


def test_theta_one_removes_exact_duplicates_only() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((50, 16)).astype(np.float16)
    near = base.copy()
    near[:, 0] = np.nextafter(near[:, 0], np.float16(np.inf))  # cosine ~1 but not the same row
    scaled = base * np.float16(2)  # cosine exactly 1 in exact arithmetic, still a different row
    x = np.concatenate([base, base[::-1], near, scaled, base])
    res = build_bank(blocks(x, 37), BankConfig(threshold=1.0, chunk_rows=64))
    assert len(res.bank) == 150
    np.testing.assert_array_equal(res.bank, np.concatenate([base, near, scaled]))
    assert res.stats["N"] == 250 and res.stats["coverage"] == 1.0
    cov = coverage_stats(res.bank, blocks(x, 37), BankConfig(threshold=1.0, chunk_rows=64))
    assert cov["coverage"] == 1.0 and cov["uncovered"] == 0
    cov = coverage_stats(res.bank[:100], blocks(x, 37), BankConfig(threshold=1.0, chunk_rows=64))
    assert cov["uncovered"] == 50  # the scaled copies are not equal to any kept row


def test_masked_rows_are_ignored() -> None:
    x = clustered(2000, seed=2)
    valid = np.random.default_rng(0).random(len(x)) < 0.7
    poisoned = x.copy()
    poisoned[~valid] = np.random.default_rng(9).standard_normal(((~valid).sum(), x.shape[1])) * 100
    cfg = BankConfig(threshold=0.8, dtype="float32", chunk_rows=300)
    masked = build_bank(blocks(poisoned, 250, valid), cfg)
    clean = build_bank(blocks(x[valid], 250), cfg)
    assert masked.bank.tobytes() == clean.bank.tobytes()
    assert masked.stats["N"] == valid.sum() and masked.stats["masked_rows"] == (~valid).sum()
    assert set(masked.entry_rows.tolist()) <= set(range(-1, valid.sum()))  # valid rows (-1: a centre)
    np.testing.assert_array_equal(masked.entry_rows, clean.entry_rows)
    none = build_bank(blocks(poisoned, 250, np.zeros(len(x), dtype=bool)), cfg)  # every pass sees no row
    zero = build_bank(blocks(np.zeros_like(x), 250), cfg)
    assert len(none.bank) == len(zero.bank) == 0 and none.stats["N"] == zero.stats["N"] == 0


def test_stats_match_an_exact_recomputation() -> None:
    x = clustered(1500, seed=4)
    x[100] = 0.0  # a zero row has no direction: skipped and counted
    cfg = BankConfig(threshold=0.75, dtype="float32", chunk_rows=256)
    res = build_bank(blocks(x, 100), cfg)
    s = res.stats
    assert s["N"] == 1499 and s["zero_rows"] == 1 and s["t"] == len(res.bank) and s["d"] == 64
    assert s["compression"] == pytest.approx(1499 / len(res.bank))
    assert s["seconds"] > 0 and s["peak_ram_mb"] > 10
    nonzero = np.delete(x, 100, axis=0)
    best = best_cos64(res.bank, nonzero)
    assert s["min_best_cosine"] <= best.min() + 1e-5  # assigned cosines are lower bounds
    assert s["mean_best_cosine"] <= best.mean() + 1e-6
    cov = coverage_stats(res.bank, blocks(x, 100), cfg)
    assert cov["coverage"] == 1.0 and cov["uncovered"] == 0
    assert cov["min_best_cosine"] == pytest.approx(best.min(), abs=1e-5)
    assert cov["mean_best_cosine"] == pytest.approx(best.mean(), abs=1e-5)
    # against a bank missing entries, coverage drops and is counted exactly
    partial = coverage_stats(res.bank[:2], blocks(x, 100), cfg)
    assert partial["uncovered"] == int((best_cos64(res.bank[:2], nonzero) < 0.75).sum()) > 0


def test_mutual_pairs_drops_one_sided_pairs() -> None:
    """A range search can find a pair at the threshold one way only (rounding); such a pair made the
    greedy cover's neighbour counts wrong and the loop never ended (demo-scene CLIP rows, 0.8000102)."""
    src = np.array([0, 0, 0, 1, 1, 2, 2])
    idx = np.array([0, 1, 2, 0, 1, 2, 1])  # 2 -> 1 has no 1 -> 2; 0 -> 2 has no 2 -> 0
    sim = np.arange(7, dtype=np.float32)
    s, i, c = mutual_pairs(src, idx, sim, 3)
    assert s.tolist() == [0, 0, 1, 1, 2] and i.tolist() == [0, 1, 0, 1, 2] and c.tolist() == [0, 1, 3, 4, 5]


def test_greedy_cover_takes_best_connected_rows() -> None:
    rng = np.random.default_rng(0)
    # a dense cluster of 20 rows and 3 isolated rows listed first
    c = rng.standard_normal(16)
    rows = np.concatenate([rng.standard_normal((3, 16)) * 3, c + 0.05 * rng.standard_normal((20, 16))])
    y = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    entries, assigned, owner = greedy_cover(y, 0.9)
    assert len(entries) == 4 and entries[0] >= 3  # the cluster first, then each isolated row
    assert sorted(entries[1:].tolist()) == [0, 1, 2]
    assert (assigned >= 0.9).all()
    assert (owner[3:] == 0).all() and sorted(owner[:3].tolist()) == [1, 2, 3]
    np.testing.assert_allclose(assigned, (y * y[entries[owner]]).sum(axis=1), atol=1e-6)


def test_covering_range_search_and_top_k_agree() -> None:
    import faiss

    rng = np.random.default_rng(0)
    bank = rng.standard_normal((40, 8)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    x = (bank[rng.integers(0, 40, 100)] + 0.4 * rng.standard_normal((100, 8))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(8)
    index.add(bank)
    expect = [set(np.flatnonzero(r >= 0.5).tolist()) for r in x @ bank.T]
    for k in (None, 40, 1000):  # range search (CPU) and top-k (the GPU path)
        lims, sim, idx = covering(index, x, 0.5, k)
        got = [set(idx[lims[i] : lims[i + 1]].tolist()) for i in range(100)]
        assert got == expect and (sim >= 0.5).all()
    assert sum(map(len, expect)) > 100  # rows with several covering entries


def test_enclosing_cap_is_the_minimax_centre_not_the_mean() -> None:
    # two rows at angle a either side of e0, and 30 rows near one of them (inside the same cap):
    # the smallest cap around all of them is centred on e0 with cosine cos(a); the mean leans
    # toward the crowd and misses the lone row
    a = 0.6
    rng = np.random.default_rng(0)
    crowd = np.cos(a / 2) * np.eye(8)[0] + np.sin(a / 2) * np.eye(8)[1] + 0.03 * rng.standard_normal((30, 8))
    rows = np.concatenate(
        [
            [np.cos(a) * np.eye(8)[0] + np.sin(a) * np.eye(8)[1]],
            [np.cos(a) * np.eye(8)[0] - np.sin(a) * np.eye(8)[1]],
            crowd,
        ]
    )
    y = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    lam, lower, upper = enclosing_cap(y)
    assert lam.min() >= 0 and abs(lam.sum() - 1) < 1e-9
    centre = y.T.astype(np.float64) @ lam
    centre /= np.linalg.norm(centre)
    cos = y @ centre
    assert abs(cos.min() - np.cos(a)) < 1e-5 and lower <= cos.min() + 1e-6 and lower > np.cos(a) - 1e-5
    assert np.cos(a) - 1e-5 < upper < np.cos(a) + 1e-5
    np.testing.assert_allclose(centre, np.eye(8)[0], atol=1e-3)
    mean = y.mean(axis=0) / np.linalg.norm(y.mean(axis=0))
    assert (y @ mean).min() < np.cos(a) - 0.02
    # with a threshold it stops as soon as the answer is known
    assert enclosing_cap(y, np.cos(a) - 0.01)[1] >= np.cos(a) - 0.01
    assert enclosing_cap(y, np.cos(a) + 0.01)[2] < np.cos(a) + 0.01


def test_cap_centre_is_a_weighted_mean_in_the_cap_direction() -> None:
    row = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    same = np.tile(row, (5, 1))
    np.testing.assert_array_equal(cap_centre(same, np.full(5, 0.2)).astype(np.float32), row)
    raw = np.array([[3.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # unit directions e0, e1; norms 3, 1
    c = cap_centre(raw, np.array([0.5, 0.5]))
    np.testing.assert_allclose(c / np.linalg.norm(c), [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)
    np.testing.assert_allclose(c, [0.75, 0.75])  # rows weighted 1/6 and 1/2, over their sum 2/3


def test_merge_caps_merges_only_groups_one_cap_holds() -> None:
    rng = np.random.default_rng(0)
    axis = np.eye(16, dtype=np.float32)
    # groups 0 and 1: rows near two directions at cosine 0.5 (no row covers both at 0.8, the cap
    # between them does, at cosine ~0.87); group 2: an orthogonal direction, too far to merge
    dirs = [axis[0], 0.5 * axis[0] + np.sqrt(0.75) * axis[1], axis[5]]
    groups = [2.0 * (d + 0.02 * rng.standard_normal((5, 16)).astype(np.float32)) for d in dirs]
    unit = [g / np.linalg.norm(g, axis=1, keepdims=True) for g in groups]
    assert (unit[0] @ unit[1].T).max() < 0.8
    counts = np.array([5, 10, 5])
    rows, lam, into = merge_caps(groups, counts, 0.8, keep=16)
    np.testing.assert_array_equal(into, [1, 1, 2])  # the smallest group first, into its neighbour
    assert len(rows[0]) == 0 and len(rows[1]) == 10 and len(rows[2]) == 5
    centre = cap_centre(rows[1], lam[1])
    both = np.concatenate(unit[:2])
    assert (both @ (centre / np.linalg.norm(centre))).min() >= 0.8  # one entry covers both groups
    for g in (1, 2):
        assert lam[g].min() >= 0 and abs(lam[g].sum() - 1) < 1e-9
    np.testing.assert_array_equal(merge_caps(groups, counts, 0.9, keep=16)[2], [0, 1, 2])  # 0.87 < 0.9
    rows, lam, into = merge_caps(groups, counts, 0.8, keep=4)  # the merged group keeps its support rows
    assert max(4, int((lam[1] > 0).sum())) == len(rows[1]) < 10


def test_rechunk_fixed_sizes_and_mask_counts() -> None:
    x = np.arange(50, dtype=np.float32).reshape(25, 2)
    valid = np.ones(25, dtype=bool)
    valid[[0, 7, 8]] = False
    out = list(rechunk(blocks(x, 6, valid), 5))
    assert [len(r) for r, _ in out] == [5, 5, 5, 5, 2]
    assert sum(m for _, m in out) == 3
    np.testing.assert_array_equal(np.concatenate([r for r, _ in out]), x[valid])


def test_save_load_and_provenance_check(tmp_path) -> None:
    bank = clustered(10, seed=5).astype(np.float16)
    prov = {"features": {"config_hash": "c1", "inputs_hash": "i1"}, "config": {"model": "clip"}}
    save_bank(tmp_path / "clip.zarr", bank, {"provenance": prov})
    loaded, attrs = load_bank(tmp_path / "clip.zarr")
    assert loaded.dtype == np.float32 and loaded.shape == bank.shape
    np.testing.assert_array_equal(loaded, bank.astype(np.float32))
    check_bank_matches(attrs, {"provenance": {"config_hash": "c1", "inputs_hash": "i1", "stage": "features"}})
    with pytest.raises(M3Error, match="other features.*m3 bank"):
        check_bank_matches(attrs, {"provenance": {"config_hash": "c1", "inputs_hash": "i2"}})
    with pytest.raises(M3Error, match="no memory bank"):
        load_bank(tmp_path / "missing.zarr")


def test_bad_config_is_a_clear_error() -> None:
    with pytest.raises(M3Error, match="threshold"):
        BankConfig(threshold=1.5)
    with pytest.raises(M3Error, match="chunk_rows"):
        BankConfig(threshold=0.8, chunk_rows=0)
    with pytest.raises(M3Error, match="refine"):
        BankConfig(threshold=0.8, refine=-1)
    with pytest.raises(M3Error, match="merge_rows"):
        BankConfig(threshold=0.8, merge_rows=-1)


def test_faiss_builds_are_exclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    """faiss-cpu and faiss-gpu install the same package: having both is one clear error."""
    import importlib.metadata

    from pipeline.bank import cover

    monkeypatch.setattr(importlib.metadata, "version", lambda dist: "1.15.1")
    with pytest.raises(M3Error, match=r"both faiss-cpu 1.15.1 and faiss-gpu 1.15.1 are installed.*keep one"):
        cover.make_index(8, "auto")
