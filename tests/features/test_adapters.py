"""Foundation-model adapters `dinov2` and `sam_clip` with small random-weight configs."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.core.errors import M3Error
from pipeline.features.models import available, build_model

DINO = {"weights": "random", "input_size": 112}


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth random test image ``[3, H, W]`` in [0, 1] (blobs, so masks and features vary)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(2, height // 24), max(2, width // 24), generator=g)
    image = torch.nn.functional.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
    return image[0].clamp(0, 1)


@pytest.fixture(scope="module")
def dino():
    return build_model("dinov2", DINO)


def test_registry_lists_adapters_and_checks_keys():
    assert {"dinov2", "sam_clip"} <= set(available())
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
    copy.deepcopy(dino.model).half().save_pretrained(tmp_path / "dino16")  # fp16 files load as fp32
    half = build_model("dinov2", {"checkpoint": str(tmp_path / "dino16"), "input_size": 112})
    assert half.model.dtype == torch.float32
    assert torch.allclose(half.extract(image).features, dino.extract(image).features, atol=0.05)
    (tmp_path / "empty").mkdir()
    with pytest.raises(M3Error, match="no config.json"):
        build_model("dinov2", {"checkpoint": str(tmp_path / "empty")})


def test_dinov2_missing_weights_offline_is_a_clear_error():
    with pytest.raises(M3Error, match=r"m3-tests/dinov2-absent.*hf download m3-tests/dinov2-absent"):
        build_model("dinov2", {"checkpoint": "m3-tests/dinov2-absent"})


# ---------------------------------------------------------------- sam_clip
# Random SAM weights give low predicted IoU / stability, so the generator's filters are opened up;
# a high cell coverage leaves some cells without a mask, to check the invalid cells.
SAMC = {
    "weights": "random",
    "points_per_side": 3,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
    "stride": 8,
    "cell_coverage": 0.9,
    "clip": {"weights": "random"},
}


@pytest.fixture(scope="module")
def samclip():
    model = build_model("sam_clip", SAMC)
    image = _image(240, 320, seed=3)
    return model, image, model.segment(image), model.extract(image)


def test_sam_clip_shapes_mask_and_zero_invalid(samclip):
    model, image, masks, fm = samclip
    assert model.has_mask and model.grid_size(240, 320) == (30, 40) and model.grid_size(100, 50) == (12, 6)
    assert fm.features.shape == (30, 40, model.dim) and fm.features.dtype == torch.float32
    assert fm.valid.shape == (30, 40) and fm.valid.dtype == torch.bool
    assert 0.2 < fm.valid.float().mean() < 1.0  # some cells covered, some not
    assert bool((fm.features[~fm.valid] == 0).all())
    assert torch.allclose(fm.features[fm.valid].norm(dim=-1), torch.ones(int(fm.valid.sum())), atol=1e-5)
    assert masks.dtype == torch.bool and masks.shape[1:] == (240, 320) and len(masks) >= 3


def test_sam_clip_cell_holds_embedding_of_smallest_covering_mask(samclip):
    model, image, masks, fm = samclip
    embeddings = model.encode_masks(image, masks)  # [M, d], every mask
    # independent reference: a mask covers an 8x8 cell when >= 90% of its pixels are in the mask
    cover = masks.view(len(masks), 30, 8, 40, 8).float().mean((2, 4)) >= 0.9  # [M, 30, 40]
    area = masks.flatten(1).sum(1)
    overlaps = 0
    for i in range(30):
        for j in range(40):
            ids = torch.nonzero(cover[:, i, j]).flatten()
            if len(ids) == 0:
                assert not fm.valid[i, j]
                continue
            assert fm.valid[i, j]
            smallest = ids[area[ids].argmin()]
            assert torch.allclose(fm.features[i, j], embeddings[smallest], atol=1e-5)
            largest = ids[area[ids].argmax()]
            if area[largest] > area[smallest] and not torch.allclose(embeddings[largest], embeddings[smallest]):
                overlaps += 1
    assert overlaps > 10  # the overlap rule was exercised


def test_sam_clip_mask_crop_embedding_matches_direct_clip(samclip):
    model, image, masks, _ = samclip
    k = int(masks.flatten(1).sum(1).argmin())  # the smallest mask: its box is a real crop
    mask = masks[k]
    ys, xs = torch.nonzero(mask, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    crop = (image * mask)[:, y0:y1, x0:x1]  # background blanked
    side = max(y1 - y0, x1 - x0)
    square = torch.zeros(3, side, side)
    top, left = (side - (y1 - y0)) // 2, (side - (x1 - x0)) // 2
    square[:, top : top + y1 - y0, left : left + x1 - x0] = crop
    s = model.crop_size
    x = torch.nn.functional.interpolate(
        square[None], size=(s, s), mode="bilinear", align_corners=False, antialias=side > s
    )
    x = (x - model.mean) / model.std
    with torch.no_grad():
        direct = torch.nn.functional.normalize(model.clip.encode_image(x).float(), dim=-1)[0]
    batched = model.encode_masks(image, masks)[k]
    assert torch.allclose(batched, direct, atol=1e-5)


def test_assign_masks_smaller_mask_wins_and_coverage_threshold():
    from pipeline.features.models.sam_clip import assign_masks

    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0] = True  # whole image, area 64
    masks[1, :4, :4] = True  # top-left quadrant, area 16
    masks[2, 6:, 6:] = True  # 4 pixels of the bottom-right cell: 25% < coverage
    owner, cover = assign_masks(masks, (2, 2), coverage=0.5)
    assert owner.tolist() == [[1, 0], [0, 0]]
    assert cover[2].sum() == 0 and cover[0].all()
    owner, _ = assign_masks(masks[1:], (2, 2), coverage=0.5)
    assert owner.tolist() == [[0, -1], [-1, -1]]
    owner, cover = assign_masks(masks[:0], (2, 2), coverage=0.5)
    assert (owner == -1).all() and cover.shape == (0, 2, 2)


def test_sam_clip_missing_checkpoint_is_a_clear_error(tmp_path):
    missing = tmp_path / "sam_vit_b_01ec64.pth"
    # text queries need only CLIP: the SAM checkpoint is checked when SAM is first used
    model = build_model("sam_clip", {"sam_type": "vit_b", "checkpoint": str(missing), "clip": {"weights": "random"}})
    assert model.encode_text(["a chair"]).shape == (1, model.dim)
    with pytest.raises(M3Error, match=r"sam_vit_b_01ec64\.pth' not found.*dl\.fbaipublicfiles\.com.*sam_vit_b"):
        model.extract(_image(60, 80))
    with pytest.raises(M3Error, match=r"features\.sam_clip\.clip: cannot load .*'ViT-L-14-336'"):
        build_model("sam_clip", {"weights": "random"})  # default CLIP, pretrained, not cached offline
    with pytest.raises(M3Error, match="sam_type.*vit_x"):
        build_model("sam_clip", {"sam_type": "vit_x", "weights": "random"})


def test_sam_clip_text_space_is_the_crop_clip(samclip):
    model = samclip[0]
    text = model.encode_text(["a red chair", "a wooden table"])
    assert text.shape == (2, model.dim)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    same = build_model("clip", SAMC["clip"]).encode_text(["a red chair", "a wooden table"])
    assert torch.allclose(text, same, atol=1e-6)
