"""Query relevance (cosine and canonical softmax), encoders, 3D localisation and heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.errors import M3Error
from pipeline.query import colors as C
from pipeline.query import encode as Q
from pipeline.query.files import check_query
from pipeline.query.localize import localize


def test_cosine_relevance_identical_orthogonal_opposite():
    qv = Q.QueryVector(torch.tensor([1.0, 0.0, 0.0]))
    feats = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    assert qv(feats).tolist() == pytest.approx([1.0, 0.0, -1.0], abs=1e-6)
    with pytest.raises(M3Error, match="dims"):
        qv(torch.zeros(2, 4))


def test_canonical_relevance_is_min_pairwise_softmax():
    q = torch.tensor([1.0, 0.0, 0.0])
    negs = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    qv = Q.QueryVector(q, negs, mode="canonical", scale=10.0)
    f = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    r = qv(f)
    # f0: cos(q)=1, cos(n)=0 -> sigmoid(10); f1: cos(q)=0, cos(n0)=1 -> sigmoid(-10); f2: ties n0 -> 0.5
    assert r.tolist() == pytest.approx(
        [torch.sigmoid(torch.tensor(10.0)).item(), torch.sigmoid(torch.tensor(-10.0)).item(), 0.5], abs=1e-5
    )
    with pytest.raises(M3Error, match="canonical mode needs"):
        Q.QueryVector(q, None, mode="canonical")


def test_localize_top_k_trims_outliers_and_weights_by_opacity():
    rng = np.random.default_rng(0)
    cluster = rng.normal([1.0, 2.0, 3.0], 0.05, size=(50, 3))
    outliers = np.array([[10.0, 10.0, 10.0], [-8.0, 0.0, 0.0]])
    background = rng.uniform(-5, 5, size=(500, 3))
    means = np.concatenate([cluster, outliers, background])
    rel = np.concatenate([np.full(50, 0.9), np.full(2, 0.95), rng.uniform(0, 0.5, 500)])
    op = np.ones(len(means))
    loc = localize(means, rel, op, top_k=52)
    assert loc.selected.size == 52 and loc.inliers.size == 50
    assert np.allclose(loc.centroid, [1.0, 2.0, 3.0], atol=0.03)
    assert np.all(loc.box_min > 0.7) and np.all(loc.box_max < 3.3)
    # transparent Gaussians never count, even when most relevant
    op[50:52] = 0.0
    loc2 = localize(means, rel, op, quantile=1 - 50 / 552, min_opacity=0.1)
    assert set(loc2.selected.tolist()) <= set(range(50)) and loc2.threshold == pytest.approx(0.9)
    js = loc.to_json()
    assert js["n_inliers"] == 50 and len(js["centroid"]) == 3


def test_heatmap_overlay_and_turbo():
    assert C.turbo(np.array([0.0, 1.0])).shape == (2, 3)
    lo, hi = C.turbo(np.array(0.0)), C.turbo(np.array(1.0))
    assert lo.sum() < 0.5 and hi[0] > 0.5 > hi[1] + hi[2]  # dark at 0, red at 1
    rgb = torch.full((4, 6, 3), 0.5)
    rel = C.normalize_relevance(torch.arange(24.0).reshape(4, 6))
    assert float(rel.min()) == 0.0 and float(rel.max()) == 1.0
    img = C.heatmap_overlay(rgb, rel)
    assert img.shape == (4, 6, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [77, 77, 77]  # zero relevance: dimmed render only
    assert C.upsample(torch.rand(2, 3), 8, 12).shape == (8, 12)


def test_recorded_conf():
    attrs = {"provenance": {"config": {"checkpoint": "ViT-B-16", "weights": "random"}}}
    assert Q.recorded_conf(attrs)["checkpoint"] == "ViT-B-16"
    with pytest.raises(M3Error, match="no model config"):
        Q.recorded_conf({})


def encode(model: str, attrs: dict, text: str | None = None, mode: str = "canonical") -> Q.QueryVector:
    """The query of ``text`` as every tool builds it: an encoder of the stored model."""
    check_query(text, None)
    return Q.Encoder(model, attrs, mode).text(text)


def test_text_query_uses_the_stored_models_text_tower():
    from pipeline.features.models import available

    if "clip" not in available():
        pytest.skip("clip adapter not present")
    attrs = {"provenance": {"config": {"model": "clip", "weights": "random"}}}  # as the features stage records
    qv = encode("clip", attrs, text="a yellow duck", mode="canonical")
    assert qv.negatives is not None and qv.negatives.shape == (4, qv.dim) and qv.text == "a yellow duck"
    rel = qv(torch.randn(3, 5, qv.dim))
    assert rel.shape == (3, 5) and float(rel.min()) >= 0.0 and float(rel.max()) <= 1.0
    assert Q.pick_model(["dinov2", "clip"], None) == "clip"  # first model with a text encoder
    with pytest.raises(M3Error, match="no text encoder"):
        encode("dinov2", {}, text="x", mode="cosine")
    with pytest.raises(M3Error, match="either a text or a query vector"):
        encode("clip", attrs)
    for empty in ("", "   "):
        with pytest.raises(M3Error, match="the text is empty"):
            encode("clip", attrs, text=empty, mode="cosine")


def test_cli_refuses_an_empty_query(tmp_path: Path) -> None:
    """``m3 query demo ""`` is one clear error before anything is loaded or written."""
    from typer.testing import CliRunner

    from stages.cli import app

    result = CliRunner().invoke(app, ["query", str(tmp_path / "demo"), ""])
    assert result.exit_code == 2 and "the text is empty" in result.output
    assert not (tmp_path / "demo" / "query").exists()


def test_long_query_texts_are_warned_about(caplog) -> None:
    """A text tower reads a fixed number of tokens (CLIP: 77); a longer text is cut there, so say so."""
    import logging

    attrs = {"provenance": {"config": {"model": "clip", "weights": "random"}}}
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        encode("clip", attrs, text="a yellow duck", mode="cosine")
        assert "longer than" not in caplog.text
        encode("clip", attrs, text="a yellow duck " * 800, mode="cosine")
        encode("clip", attrs, text="x" * 10000, mode="cosine")
    assert caplog.text.count("is longer than the 77 tokens clip's text tower reads: the rest is ignored") == 2


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (np.array([{"a": 1}], dtype=object), "Object arrays cannot be loaded"),
        ("[1, 2,", "Expecting value"),
        ('["a"]', "could not convert"),
        ('{"a": 1}', "not 'dict'"),
        ("[]", "empty, all zero or not finite"),
        (np.full(8, np.nan, np.float32), "empty, all zero or not finite"),
    ],
)
def test_bad_vector_files_are_one_line(tmp_path: Path, content, why: str) -> None:
    from pipeline.query.files import load_vector

    if isinstance(content, np.ndarray):
        path = tmp_path / "q.npy"
        np.save(path, content, allow_pickle=True)
    else:
        path = tmp_path / "q.json"
        path.write_text(content)
    with pytest.raises(M3Error, match=f"q.(npy|json): .*{why}"):
        load_vector(path)
    np.save(tmp_path / "ok.npy", np.ones(8, np.float32))
    assert load_vector(tmp_path / "ok.npy").shape == (8,)


def test_a_text_tower_is_loaded_once_per_model_and_process() -> None:
    """Encoders (a query, each grounding text, each LERF label, ask's region) share one tower."""
    attrs = {"provenance": {"config": {"model": "clip", "weights": "random"}}}
    Q._adapter.cache_clear()
    for text in ("a yellow duck", "a red box", "a blue sphere"):
        Q.Encoder("clip", attrs, mode="canonical").text(text)
    assert Q._adapter.cache_info().misses == 1 and Q._adapter.cache_info().hits == 2
