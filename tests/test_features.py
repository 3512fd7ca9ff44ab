"""Feature adapters `clip` and `siglip` (small random-weight configs) and the `features` stage."""
from __future__ import annotations

import pytest
import torch

from pipeline import M3Error
from pipeline.models import build_model

CLIP = {"weights": "random"}


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth random image ``[3, H, W]`` in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(2, height // 24), max(2, width // 24), generator=g)
    return torch.nn.functional.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)[0].clamp(0, 1)


def _self_only_mask(n: int) -> torch.Tensor:
    """Additive attention mask ``[n, n]`` letting every token attend only to itself."""
    mask = torch.full((n, n), float("-inf"))
    return mask.fill_diagonal_(0.0)


@pytest.mark.parametrize("source", ["open_clip", "hf"])
def test_clip_maskclip_equals_last_block_with_self_only_attention(source):
    """MaskCLIP invariant: dense features = the model's own last block run with each token attending
    only to itself, then its post-LN and projection; and they differ from the normal attention."""
    model = build_model("clip", {**CLIP, "source": source})
    image = _image(240, 320)
    fm = model.extract(image)
    h, w = model.grid_size(240, 320)
    assert fm.features.shape == (h, w, model.dim) == (4, 5, 32) and bool(fm.valid.all())
    with torch.no_grad():
        x = model.preprocess(image)
        tokens = model.clip.tokens_before_last(x)
        own = model.clip.head(model.clip.full_last(tokens, _self_only_mask(tokens.shape[1])))[0, 1:]
        normal = model.clip.head(model.clip.full_last(tokens))[0, 1:]
    assert torch.allclose(own.reshape(h, w, -1), fm.features, atol=1e-5)
    assert (normal.reshape(h, w, -1) - fm.features).abs().max() > 1e-2


def test_clip_pooled_embedding_is_the_models_own_at_native_size():
    model = build_model("clip", CLIP)
    x = model.preprocess(_image(56, 56))  # native size of the random arch: no interpolation
    with torch.no_grad():
        ours = model.clip.encode_image(x)
        own = model.clip.model.encode_image(x)
    assert torch.allclose(ours, own, atol=1e-5)
    text = model.encode_text(["a yellow duck", "a chair"])
    assert text.shape == (2, 32) and torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_clip_missing_weights_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(M3Error, match=r"ViT-L-14-336.*openai.*hf download timm/vit_large_patch14_clip_336\.openai"):
        build_model("clip", {})
    with pytest.raises(M3Error, match=r"m3-tests/clip-absent.*hf download m3-tests/clip-absent"):
        build_model("clip", {"source": "hf", "checkpoint": "m3-tests/clip-absent"})
