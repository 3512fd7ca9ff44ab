"""Feature store (contract 4): layout, round trip, resume and provenance rules."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from pipeline.core.errors import M3Error
from pipeline.features.store import FeatureStore, matches, partial_path, resume_or_create

NAMES = ["a.png", "b.png", "c.png"]


def _attrs(config_hash: str = "c1", inputs_hash: str = "i1") -> dict:
    return {
        "model": "toy",
        "grid": [4, 5],
        "provenance": {"stage": "features", "config_hash": config_hash, "inputs_hash": inputs_hash},
    }


def _maps(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(4, 5, 8)).astype(np.float32) for _ in NAMES]


def test_layout_roundtrip_and_mask(tmp_path):
    path = tmp_path / "toy.zarr"
    store = FeatureStore.create(path, NAMES, 4, 5, 8, _attrs(), has_mask=True)
    maps = _maps()
    valid = np.zeros((4, 5), bool)
    valid[1:3, 2:] = True
    for i, m in enumerate(maps):
        assert not store.done(i)
        store.write(i, m, valid if i == 1 else None)
        assert store.done(i)
    reader = FeatureStore.open(path)
    assert reader.names == NAMES and reader.n_views == 3 and reader.shape == (4, 5, 8)
    assert reader.attrs["model"] == "toy" and reader.attrs["provenance"]["config_hash"] == "c1"
    for i, feats, ok in reader.iter_views():
        assert feats.dtype == np.float16 and feats.shape == (4, 5, 8) and ok.dtype == np.bool_
        np.testing.assert_array_equal(feats, maps[i].astype(np.float16))
        np.testing.assert_array_equal(ok, valid if i == 1 else np.ones((4, 5), bool))
    arr = zarr.open_array(zarr.storage.LocalStore(path / "features", read_only=True))
    assert arr.shape == (3, 4, 5, 8) and arr.chunks == (1, 4, 5, 8) and arr.dtype == np.float16
    assert arr.compressors and "zstd" in str(arr.compressors[0])
    mask = zarr.open_array(zarr.storage.LocalStore(path / "valid", read_only=True))
    assert mask.shape == (3, 4, 5) and mask.chunks == (1, 4, 5)


def test_no_mask_reads_all_valid_and_checks_shapes(tmp_path):
    store = FeatureStore.create(tmp_path / "t.zarr", NAMES, 4, 5, 8, _attrs(), has_mask=False)
    store.write(0, _maps()[0])
    assert not (tmp_path / "t.zarr" / "valid").exists()
    assert FeatureStore.open(tmp_path / "t.zarr").read(0)[1].all()
    with pytest.raises(ValueError, match="store shape"):
        store.write(1, np.zeros((4, 5, 7)))
    with pytest.raises(M3Error, match="no feature store"):
        FeatureStore.open(tmp_path / "missing.zarr")


def test_resume_only_with_same_provenance_and_finalize(tmp_path):
    final = tmp_path / "toy.zarr"
    maps = _maps()
    store = resume_or_create(final, NAMES, 4, 5, 8, _attrs(), has_mask=False)
    assert store.path == partial_path(final) and store.path.name == ".toy.zarr.partial"
    store.write(0, maps[0])
    del store
    # same run: view 0 kept
    store = resume_or_create(final, NAMES, 4, 5, 8, _attrs(), has_mask=False)
    assert store.done_mask().tolist() == [True, False, False]
    # another config or other inputs: nothing reused
    for attrs in (_attrs(config_hash="c2"), _attrs(inputs_hash="i2")):
        other = resume_or_create(final, NAMES, 4, 5, 8, attrs, has_mask=False)
        assert other.done_mask().tolist() == [False, False, False]
    store = resume_or_create(final, NAMES, 4, 5, 8, _attrs(), has_mask=False)
    assert not store.done_mask().any()
    store.write(0, maps[0])
    with pytest.raises(M3Error, match="2 views not written"):
        store.finalize(final)
    for i in (1, 2):
        store.write(i, maps[i])
    done = store.finalize(final)
    assert done.path == final and not partial_path(final).exists() and done.complete
    np.testing.assert_array_equal(done.read(2)[0], maps[2].astype(np.float16))
    assert matches(final, _attrs(), NAMES)
    assert not matches(final, _attrs(config_hash="c2"), NAMES)
    assert not matches(final, _attrs(), NAMES[:2])


def test_records_survive_a_resume_and_are_gathered_per_name(tmp_path):
    """Per-view records (e.g. llama3 captions) are written with their view, kept by a resumed run,
    and gathered into one <name>.json in view order when the store is finalised."""
    final = tmp_path / "toy.zarr"
    attrs = {**_attrs(), "records": ["captions"]}
    maps = _maps()
    caps = [[{"region": 0, "caption": f"view {i} region 0"}, {"region": 1, "caption": "x"}] for i in range(3)]
    store = resume_or_create(final, NAMES, 4, 5, 8, attrs, has_mask=False)
    store.write(0, maps[0], records={"captions": caps[0]})
    with pytest.raises(ValueError, match="not declared"):
        store.write(1, maps[1], records={"cls": []})
    del store
    store = resume_or_create(final, NAMES, 4, 5, 8, attrs, has_mask=False)  # resumed: view 0 and its records kept
    assert store.done_mask().tolist() == [True, False, False]
    store.write(1, maps[1])  # a view without records
    store.write(2, maps[2], records={"captions": caps[2]})
    done = store.finalize(final)
    assert not (final / "records").exists() and (final / "captions.json").is_file()
    rows = done.records("captions")
    assert [r["view"] for r in rows] == ["a.png", "a.png", "c.png", "c.png"]
    assert [r["caption"] for r in rows] == ["view 0 region 0", "x", "view 2 region 0", "x"]
    assert rows[0] == {"view": "a.png", **caps[0][0]}
    with pytest.raises(M3Error, match="no 'cls' records"):
        done.records("cls")
    assert FeatureStore.open(final).record_names == ["captions"] and matches(final, attrs, NAMES)


def _flip(path, offset: int = -8) -> None:
    """Flip one byte of the file ``path`` (by default near its end: compressed data, not the header)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_and_missing_chunk_are_errors_naming_store_view_and_fix(tmp_path):
    """A damaged chunk is never read as other features (or a missing one as zeros): crc32c per chunk,
    and every view has a chunk (even all-zero features and an all-invalid mask)."""
    final = tmp_path / "toy.zarr"
    store = resume_or_create(final, NAMES, 4, 5, 8, _attrs(), has_mask=True)
    for i, m in enumerate(_maps()):
        store.write(i, np.zeros_like(m) if i == 2 else m, np.zeros((4, 5), bool) if i == 2 else None)
    store.finalize(final)
    assert matches(final, _attrs(), NAMES)
    assert (final / "features" / "c" / "2" / "0" / "0" / "0").is_file()  # all zeros, still written
    assert (final / "valid" / "c" / "2" / "0" / "0").is_file()
    _flip(final / "features" / "c" / "1" / "0" / "0" / "0")
    damaged = r"toy.zarr: view 1 \(b.png\): its chunk is corrupt \(.*checksum.*\); restore the store with `dvc checkout"
    with pytest.raises(M3Error, match=damaged + r" .*toy.zarr` or rerun the features stage"):
        FeatureStore.open(final).read(1)
    assert not matches(final, _attrs(), NAMES)  # the features stage recomputes instead of keeping it
    (final / "features" / "c" / "2" / "0" / "0" / "0").unlink()
    with pytest.raises(M3Error, match=r"view 2 \(c.png\): its features chunk is missing"):
        FeatureStore.open(final).read(2)
    (final / "valid" / "c" / "0" / "0" / "0").unlink()
    with pytest.raises(M3Error, match=r"view 0 \(a.png\): its valid chunk is missing; restore the store"):
        FeatureStore.open(final).read(0)
