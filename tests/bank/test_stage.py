"""Stage ``bank``: feature store -> bank zarr + stats, provenance, CLI, demo-scene features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.bank.config import BankConfig
from pipeline.bank.stage import METRICS
from pipeline.bank.store import check_bank_matches, load_bank
from pipeline.core.config import load_config
from pipeline.core.errors import M3Error
from pipeline.core.io import provenance, read_json
from pipeline.core.scene import Scene
from pipeline.features.store import FeatureStore
from stages import bank as bank_stage
from tests.helpers.data import best_cos64


def make_store(scene: Scene, model: str, views: list[np.ndarray], masks: list[np.ndarray] | None, inputs: str = "in1"):
    """A finished feature store of ``views`` (each ``[h, w, d]``) with a features provenance."""
    h, w, d = views[0].shape
    prov = provenance("features", {"model": model, "input_size": 32}, inputs, "code1")
    store = FeatureStore.create(
        scene.features_path(model),
        [f"v{i}.png" for i in range(len(views))],
        h,
        w,
        d,
        {"provenance": prov, "model": model},
        has_mask=masks is not None,
    )
    for i, v in enumerate(views):
        store.write(i, v, None if masks is None else masks[i])
    return FeatureStore.open(scene.features_path(model))


def clustered_views(n_views: int = 6, h: int = 12, w: int = 16, d: int = 48, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, d))
    views = []
    for _ in range(n_views):
        labels = rng.integers(0, 8, (h, w))
        views.append((centres[labels] + 0.5 * rng.standard_normal((h, w, d))).astype(np.float16))
    return views


def test_stage_writes_a_covering_bank_and_stats(tmp_path: Path) -> None:
    scene = Scene(tmp_path / "s")
    views = clustered_views()
    rng = np.random.default_rng(1)
    masks = [rng.random(v.shape[:2]) < 0.8 for v in views]
    store = make_store(scene, "clip", views, masks)
    stats = bank_stage.run(BankConfig(threshold=0.8, chunk_rows=256), scene, "clip")

    bank, attrs = load_bank(scene.bank_path("clip"))
    valid_rows = np.concatenate([v[m] for v, m in zip(views, masks)])
    assert stats["N"] == len(valid_rows) and stats["masked_rows"] == sum((~m).sum() for m in masks)
    assert stats["t"] == len(bank) and 1 < len(bank) < len(valid_rows)
    assert stats["compression"] == pytest.approx(len(valid_rows) / len(bank))
    best = best_cos64(bank, valid_rows)
    assert best.min() >= 0.8 and stats["coverage"] == 1.0 and stats["best_cosine"] == "exact"
    assert stats["min_best_cosine"] == pytest.approx(best.min(), abs=1e-4)
    assert stats["mean_best_cosine"] == pytest.approx(best.mean(), abs=1e-4)
    assert stats["seconds"] > 0 and stats["peak_ram_mb"] > 0
    # stored raw-scale vectors (input rows or centres of rows, not normalised)
    norms, row_norms = np.linalg.norm(bank, axis=1), np.linalg.norm(valid_rows.astype(np.float32), axis=1)
    assert row_norms.min() * 0.5 < norms.min() and norms.max() <= row_norms.max() and norms.mean() > 3
    assert stats["passes"] == 6 and 0 < stats["centre_entries"] <= len(bank)
    written = read_json(scene.stats_path("bank", "clip"))
    assert written["t"] == len(bank) and "provenance" not in written
    prov = attrs["provenance"]
    assert prov["features"] == {k: store.attrs["provenance"][k] for k in ("config_hash", "inputs_hash", "code_hash")}
    assert prov["config"]["threshold"] == 0.8 and prov["config"]["model"] == "clip" and len(prov["bank_hash"]) == 16
    check_bank_matches(attrs, store.attrs)

    # the features change (new inputs): the old bank is refused with a clear error
    new_store = make_store(scene, "clip", views, masks, inputs="in2")
    with pytest.raises(M3Error, match="other features"):
        check_bank_matches(attrs, new_store.attrs)


def test_stage_is_deterministic_and_masks_matter(tmp_path: Path) -> None:
    views = clustered_views(seed=2)
    masks = [np.ones(v.shape[:2], bool) for v in views]
    masks[0][:6] = False
    a, b = Scene(tmp_path / "a"), Scene(tmp_path / "b")
    make_store(a, "clip", views, None)
    make_store(b, "clip", views, masks)
    cfg = BankConfig(threshold=0.8, chunk_rows=200, verify=False)
    bank_stage.run(cfg, a, "clip")
    first = load_bank(a.bank_path("clip"))[0]
    bank_stage.run(cfg, a, "clip")
    assert load_bank(a.bank_path("clip"))[0].tobytes() == first.tobytes()
    sb = bank_stage.run(cfg, b, "clip")
    assert sb["N"] == sum(m.sum() for m in masks) and sb["masked_rows"] == 6 * 16
    assert sb["best_cosine"].startswith("assigned")


def test_config_from_params(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("models: [clip]\nbank:\n  clip: {threshold: 0.8, dtype: float32}\n  sam_clip: {threshold: 1.0}\n")
    assert load_config(BankConfig, "bank.clip", params) == BankConfig(threshold=0.8, dtype="float32")
    with pytest.raises(M3Error, match="bank.dinov2: required key 'threshold' missing"):
        load_config(BankConfig, "bank.dinov2", params)
    params.write_text("bank:\n  clip: {threshold: 0.8, chunk_row: 5}\n")
    with pytest.raises(M3Error, match="did you mean 'chunk_rows'"):
        load_config(BankConfig, "bank.clip", params)


def test_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stages.cli import app

    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("models: [clip]\nbank:\n  clip: {threshold: 0.8}\n")
    runner = CliRunner()
    missing = runner.invoke(app, ["bank", "demo"])
    assert missing.exit_code == 2 and "no features" in missing.output and "m3 features demo" in missing.output
    make_store(Scene.resolve("demo"), "clip", clustered_views(n_views=2), None)
    ok = runner.invoke(app, ["bank", "demo", "--model", "clip", "--threshold", "0.7", "--dtype", "float32"])
    assert ok.exit_code == 0, ok.output
    stats = json.loads(Path("data/demo/stats/bank-clip.json").read_text())
    bank, attrs = load_bank(Path("data/demo/bank/clip.zarr"))
    assert attrs["provenance"]["config"]["threshold"] == 0.7 and attrs["provenance"]["config"]["dtype"] == "float32"
    assert set(stats) == set(METRICS) and stats["t"] == len(bank)
    assert bank.shape[1] == 48


def test_full_coverage_on_demo_scene_features(tmp_path: Path) -> None:
    """Real pipeline features: demo-scene renders through a (random-weight, small) DINOv2 adapter."""
    import torch
    from PIL import Image

    from pipeline.demo.scene import make_demo_scene
    from pipeline.features.models import build_model

    make_demo_scene(tmp_path / "demo_input", n_views=4, width=160, height=120)
    model = build_model("dinov2", {"weights": "random", "input_size": 112})
    images = sorted((tmp_path / "demo_input").glob("view_*.png"))
    maps = []
    for p in images:
        image = torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0)
        maps.append(model.extract(image.permute(2, 0, 1).contiguous()).features.numpy().astype(np.float16))
    scene = Scene(tmp_path / "demo")
    make_store(scene, "dinov2", maps, None)
    stats = bank_stage.run(BankConfig(threshold=0.75, chunk_rows=512), scene, "dinov2")
    bank, _ = load_bank(scene.bank_path("dinov2"))
    rows = np.concatenate([m.reshape(-1, m.shape[-1]) for m in maps])
    assert best_cos64(bank, rows).min() >= 0.75
    assert stats["coverage"] == 1.0 and stats["N"] == len(rows) and stats["t"] < len(rows)


def _corrupt(chunk: Path) -> None:
    """Damage a zarr chunk as a bad disk or an interrupted copy would: half its bytes, then garbage."""
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2] + b"\x00garbage" * 4)


def test_corrupt_chunks_are_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A damaged feature chunk (read by m3 bank, train and evaluate through FeatureStore.read) and a
    damaged bank chunk (load_bank: train, evaluate) name the store, the view and the fix instead of
    a blosc traceback."""
    from stages.cli import app

    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("models: [clip]\nbank:\n  clip: {threshold: 0.8}\n")
    scene = Scene.resolve("demo")
    make_store(scene, "clip", clustered_views(n_views=3), None)
    runner = CliRunner()
    assert runner.invoke(app, ["bank", "demo"]).exit_code == 0
    _corrupt(scene.bank_path("clip") / "c" / "0" / "0")
    with pytest.raises(
        M3Error, match=r"clip.zarr: the bank is corrupt .*dvc checkout .*clip.zarr.* or rerun `m3 bank`"
    ):
        load_bank(scene.bank_path("clip"))
    _corrupt(scene.features_path("clip") / "features" / "c" / "1" / "0" / "0" / "0")
    result = runner.invoke(app, ["bank", "demo"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    line = errors[0]
    assert "features/clip.zarr: view 1 (v1.png): its chunk is corrupt" in line
    assert "dvc checkout" in line and "rerun the features stage" in line


def test_flipped_byte_or_missing_bank_chunk_is_never_another_bank(tmp_path: Path, monkeypatch) -> None:
    """One flipped byte decompresses fine but is caught by the chunk's crc32c; a missing chunk
    (read as zeros) by the content hash the bank's provenance recorded."""
    from stages.cli import app

    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("models: [clip]\nbank:\n  clip: {threshold: 0.8, chunk_rows: 4}\n")
    scene = Scene.resolve("demo")
    make_store(scene, "clip", clustered_views(n_views=3), None)
    assert CliRunner().invoke(app, ["bank", "demo"]).exit_code == 0
    good, _ = load_bank(scene.bank_path("clip"))
    assert len(good) > 4  # more than one chunk
    chunk = scene.bank_path("clip") / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[-6] ^= 0x01
    chunk.write_bytes(bytes(data))
    with pytest.raises(M3Error, match=r"the bank is corrupt \(.*checksum.*\); restore it with `dvc checkout"):
        load_bank(scene.bank_path("clip"))
    chunk.unlink()
    with pytest.raises(M3Error, match=r"does not match its recorded hash \(missing or damaged chunk\); restore"):
        load_bank(scene.bank_path("clip"))
