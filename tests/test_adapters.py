"""Foundation-model adapters `dinov2` and `sam_clip` with small random-weight configs."""
from __future__ import annotations

import pytest
import torch

from pipeline import M3Error
from pipeline.models import available, build_model

DINO = {"weights": "random", "input_size": 112}


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth random test image ``[3, H, W]`` in [0, 1] (blobs, so masks and features vary)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(2, height // 24), max(2, width // 24), generator=g)
    return torch.nn.functional.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)[0].clamp(0, 1)


@pytest.fixture(scope="module")
def dino():
    return build_model("dinov2", DINO)


def test_registry_lists_adapters_and_checks_keys():
    assert "dinov2" in available()
    with pytest.raises(M3Error, match="unknown key 'input_sise'.*input_size"):
        build_model("dinov2", {"weights": "random", "input_sise": 10})


def test_dinov2_shapes_dtype_and_grid_follow_aspect(dino):
    assert dino.dim == 64
    assert dino.grid_size(240, 320) == (8, 11)  # short side 112/14 = 8 patches, long side by aspect
    assert dino.grid_size(480, 240) == (16, 8)
    fm = dino.extract(_image(240, 320))
    assert fm.features.shape == (8, 11, 64) and fm.features.dtype == torch.float32
    assert fm.valid.shape == (8, 11) and fm.valid.dtype == torch.bool and bool(fm.valid.all())
    assert torch.isfinite(fm.features).all()
    # after the final layernorm (affine = identity at init) every token has zero mean, unit variance
    assert fm.features.mean(-1).abs().max() < 1e-4
    assert (fm.features.var(-1, unbiased=False) - 1).abs().max() < 1e-2


def test_dinov2_covers_whole_image_without_crop(dino):
    image = _image(112, 224, seed=1)  # grid 8 x 16 with a 1:1 pixel -> patch mapping
    full = dino.extract(image).features
    left = dino.extract(image[:, :, :112]).features
    right = dino.extract(image[:, :, 112:]).features
    assert full.shape[:2] == (8, 16) and left.shape[:2] == right.shape[:2] == (8, 8)
    # a change in the leftmost / rightmost 14 pixel columns shows up in the first / last grid column
    for cols, expected in ((slice(0, 14), 0), (slice(210, 224), 15)):
        edited = image.clone()
        edited[:, :, cols] = 1.0 - edited[:, :, cols]
        change = (dino.extract(edited).features - full).norm(dim=-1).mean(0)  # [w]
        assert int(change.argmax()) == expected
        assert change[expected] > 3 * change.median()


def test_dinov2_loads_a_local_checkpoint_folder(dino, tmp_path):
    dino.model.save_pretrained(tmp_path / "dino")
    loaded = build_model("dinov2", {"checkpoint": str(tmp_path / "dino"), "input_size": 112})
    image = _image(120, 160, seed=2)
    assert torch.allclose(loaded.extract(image).features, dino.extract(image).features, atol=1e-5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(M3Error, match="no config.json"):
        build_model("dinov2", {"checkpoint": str(tmp_path / "empty")})


def test_dinov2_missing_weights_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(M3Error, match=r"m3-tests/dinov2-absent.*hf download m3-tests/dinov2-absent"):
        build_model("dinov2", {"checkpoint": "m3-tests/dinov2-absent"})
