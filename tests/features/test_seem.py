"""`seem` (SEEM stand-in: OWLv2 class embeddings of SAM regions) with small random-weight models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.core.errors import M3Error
from pipeline.features.models import build_model
from pipeline.features.models.seem import mask_box_iou
from tests.helpers.checkpoints import word_tokenizer
from tests.helpers.data import smooth_image

SEEM = {
    "weights": "random",
    "stride": 8,
    "cell_coverage": 0.9,
    "sam": {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0},
}


@pytest.fixture(scope="module")
def seem():
    model = build_model("seem", SEEM)
    image = smooth_image(240, 320, seed=3)
    return model, image, model.segment(image), model.extract(image)


def test_mask_box_iou_matches_pixel_counting():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 20, 30, generator=g) > 0.6
    boxes = torch.tensor([[0, 0, 30, 20], [5.2, 3.7, 17, 12.4], [-4, 10, 40, 25], [3, 3, 3, 9]], dtype=torch.float32)
    got = mask_box_iou(masks, boxes)
    for m in range(3):
        for b, (x0, y0, x1, y1) in enumerate(boxes.round().tolist()):
            x0, x1 = max(0, int(x0)), min(30, int(x1))
            y0, y1 = max(0, int(y0)), min(20, int(y1))
            inside = torch.zeros(20, 30, dtype=torch.bool)
            inside[y0:y1, x0:x1] = True
            expect = (masks[m] & inside).sum() / (masks[m] | inside).sum()
            assert got[m, b] == pytest.approx(float(expect), abs=1e-6)


def test_seem_shapes_and_mask(seem):
    model, _, _, fm = seem
    assert model.has_mask and model.dim == 32 and model.grid_size(240, 320) == (30, 40)
    assert fm.features.shape == (30, 40, 32) and fm.features.dtype == torch.float32
    assert fm.valid.dtype == torch.bool and 0.2 < fm.valid.float().mean() < 1.0
    assert bool((fm.features[~fm.valid] == 0).all())
    assert torch.allclose(fm.features[fm.valid].norm(dim=-1), torch.ones(int(fm.valid.sum())), atol=1e-5)


def test_cell_holds_the_class_embedding_of_the_box_best_matching_its_smallest_region(seem):
    """Independent reference: OWLv2's own heads on the padded, resized view give a box and a class
    embedding per patch; a cell holds the unit class embedding of the box with the highest IoU with
    the smallest mask covering >= 90% of the cell."""
    model, image, masks, fm = seem
    side = 320
    square = torch.zeros(3, side, side)
    square[:, :240] = image  # padded at the bottom, as Owlv2ImageProcessor does
    x = F.interpolate(square[None], (128, 128), mode="bilinear", align_corners=False, antialias=True)
    x = (x - model.mean) / model.std
    owl = model.owl
    with torch.no_grad():
        fmap, _ = owl.image_embedder(pixel_values=x)
        feats = fmap.reshape(1, -1, fmap.shape[-1])
        cxcywh = owl.box_predictor(feats, fmap)[0] * side
        class_embeds = F.normalize(owl.class_head.dense0(feats)[0], dim=-1)
    boxes = torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], -1)
    cover = masks.view(len(masks), 30, 8, 40, 8).float().mean((2, 4)) >= 0.9
    area = masks.flatten(1).sum(1)
    best = mask_box_iou(masks, boxes).argmax(1)  # [M]
    distinct = set()
    for i in range(30):
        for j in range(40):
            ids = torch.nonzero(cover[:, i, j]).flatten()
            assert bool(fm.valid[i, j]) == (len(ids) > 0)
            if len(ids):
                smallest = int(ids[area[ids].argmin()])
                assert torch.allclose(fm.features[i, j], class_embeds[best[smallest]], atol=1e-5)
                distinct.add(int(best[smallest]))
    assert len(distinct) >= 3  # regions pick different boxes


def test_seem_text_tower_is_owlv2s(seem):
    model = seem[0]
    long = "a " + "very " * 30 + "long description"
    text = model.encode_text(["a red chair", long])
    assert text.shape == (2, 32) and torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    ids, mask = model.tokenizer.batch(["a red chair", long], 16)
    assert ids.shape == (2, 16) and ids[1, -1] == 49407  # cut to OWLv2's 16 positions, end token kept
    with torch.no_grad():
        own = model.owl.owlv2.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    assert torch.allclose(text, F.normalize(own, dim=-1), atol=1e-6)


def test_seem_missing_checkpoint_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(M3Error, match=r"features\.seem: .*owlv2-base-patch16-ensemble.*hf download google/owlv2"):
        build_model("seem", {})
    with pytest.raises(M3Error, match="features.seem.weights: 'none'"):
        build_model("seem", {"weights": "none"})


def test_seem_local_checkpoint_folder_uses_its_tokenizer(tmp_path):
    """An OWLv2 folder as on the hub (detector weights + processor): the adapter loads it, and text
    queries go through the checkpoint's own tokenizer and text tower (16 positions)."""
    from transformers import Owlv2ImageProcessor, Owlv2Processor

    model = build_model("seem", SEEM)
    tok = word_tokenizer("a red chair the floor".split(), add_eos=True)
    config = model.owl.config
    config.text_config.vocab_size = len(tok)
    config.text_config.eos_token_id = tok.eos_token_id
    owl = type(model.owl)(config)
    ckpt = tmp_path / "owlv2"
    owl.save_pretrained(ckpt)
    Owlv2Processor(Owlv2ImageProcessor(size={"height": 128, "width": 128}), tok).save_pretrained(ckpt)
    loaded = build_model("seem", {"checkpoint": str(ckpt)})  # SAM: loaded on first use
    text = loaded.encode_text(["a red chair", "the floor"])
    ids = tok(["a red chair", "the floor"], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        own = loaded.owl.owlv2.get_text_features(**ids).pooler_output
    assert loaded.text_length == 16 and torch.allclose(text, F.normalize(own, dim=-1), atol=1e-6)
