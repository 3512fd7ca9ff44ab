"""`llama3` (region captions embedded by a language model) with small random-weight models."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.core.errors import M3Error
from pipeline.features.models import build_model
from pipeline.features.regions import mask_boxes
from tests.helpers.checkpoints import word_tokenizer
from tests.helpers.data import smooth_image

# random SAM: the generator's filters opened up; a high coverage leaves cells without a mask
LLAMA3 = {
    "weights": "random",
    "stride": 8,
    "cell_coverage": 0.9,
    "sam": {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0},
    "captioner": {"num_beams": 1, "max_new_tokens": 6},
}


@pytest.fixture(scope="module")
def llama3():
    model = build_model("llama3", LLAMA3)
    image = smooth_image(240, 320, seed=3)
    return model, image, model.segment(image), model.extract(image)


def test_llama3_shapes_mask_and_caption_records(llama3):
    model, _, masks, fm = llama3
    assert model.has_mask and model.record_names == ("captions",) and model.dim == 64
    assert model.grid_size(240, 320) == (30, 40)
    assert fm.features.shape == (30, 40, 64) and fm.features.dtype == torch.float32
    assert fm.valid.dtype == torch.bool and 0.2 < fm.valid.float().mean() < 1.0
    assert bool((fm.features[~fm.valid] == 0).all())
    assert torch.allclose(fm.features[fm.valid].norm(dim=-1), torch.ones(int(fm.valid.sum())), atol=1e-5)
    captions = fm.records["captions"]
    assert len(captions) >= 3 and [c["region"] for c in captions] == list(range(len(captions)))
    assert all(isinstance(c["caption"], str) and c["caption"] for c in captions)
    assert len({c["caption"] for c in captions}) > 1  # the captioner looks at the crops
    assert sum(c["cells"] for c in captions) == int(fm.valid.sum())
    boxes = mask_boxes(masks).tolist()
    assert all(c["box"] in boxes for c in captions)  # each record's box is one SAM mask's box


def test_llama3_cell_holds_the_embedding_of_the_smallest_covering_regions_caption(llama3):
    """Independent reference: a mask covers an 8x8 cell when >= 90% of its pixels are in it; the
    cell holds the language model's embedding of the caption of the smallest such mask."""
    model, _, masks, fm = llama3
    by_box = {}
    for c in fm.records["captions"]:
        by_box.setdefault(tuple(c["box"]), []).append(c)
    cover = masks.view(len(masks), 30, 8, 40, 8).float().mean((2, 4)) >= 0.9
    area = masks.flatten(1).sum(1)
    boxes = mask_boxes(masks).tolist()
    texts = {c["caption"] for c in fm.records["captions"]}
    embedded = dict(zip(texts, model.encode_text(sorted(texts)).unbind(0)))
    seen = set()
    for i in range(30):
        for j in range(40):
            ids = torch.nonzero(cover[:, i, j]).flatten()
            assert bool(fm.valid[i, j]) == (len(ids) > 0)
            if len(ids) == 0:
                continue
            smallest = int(ids[area[ids].argmin()])
            own = by_box[tuple(boxes[smallest])]
            matches = [c for c in own if torch.allclose(fm.features[i, j], embedded[c["caption"]], atol=1e-5)]
            assert matches, f"cell {(i, j)} does not hold the caption embedding of its smallest mask"
            seen.add(matches[0]["region"])
    assert len(seen) >= 3


def test_embedding_is_the_mean_of_last_hidden_states_without_the_start_token(llama3):
    model = llama3[0]
    embed = model.embed
    ids = torch.tensor([embed.tokenizer.encode("a red chair")])
    with torch.no_grad():
        hidden = embed.model(input_ids=ids).last_hidden_state[0].float()
    expect = torch.nn.functional.normalize(hidden[1:].mean(0), dim=0)  # position 0 is the start token
    got = model.encode_text(["a red chair", "a wooden table with four legs"])
    assert torch.allclose(got[0], expect, atol=1e-5)
    assert float(got[0] @ got[1]) < 0.999 and torch.allclose(got.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(model.encode_text(["a red chair"])[0], got[0], atol=1e-5)  # padding changes nothing


def test_llama3_offline_errors_name_the_checkpoints(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(M3Error, match=r"features\.llama3\.embedder.*Meta-Llama-3-8B.*hf download meta-llama/Meta-Ll"):
        build_model("llama3", {})
    # SAM and the captioner load on first use (text queries need only the language model)
    from pipeline.features.adapter_config import CaptionerConf
    from pipeline.features.captioner import Captioner
    from pipeline.features.models import resolve_conf
    from pipeline.features.regions import nested_sam

    conf = resolve_conf("llama3", {"sam": {"checkpoint": str(tmp_path / "sam.pth")}})
    segment = nested_sam(conf, torch.device("cpu"), "llama3")
    with pytest.raises(M3Error, match=r"features\.llama3\.sam\.checkpoint: SAM checkpoint .*sam\.pth' not found"):
        segment(smooth_image(60, 80))
    absent = dataclasses.asdict(CaptionerConf(checkpoint="m3-tests/absent"))
    with pytest.raises(M3Error, match=r"features\.llama3\.captioner.*m3-tests/absent.*hf download m3-tests/absent"):
        Captioner(absent, "pretrained", 0, torch.device("cpu"), "features.llama3.captioner")


def test_llama3_language_model_from_a_local_checkpoint_folder(tmp_path):
    """A causal LM folder as on the hub (weights + tokenizer): text embeddings are the mean of its
    last hidden states over the text's tokens, its start token left out."""
    from transformers import AutoModel, LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer("a red chair wooden table with four legs".split())
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    ckpt = tmp_path / "llama"
    LlamaForCausalLM(config).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    model = build_model("llama3", {"embedder": {"checkpoint": str(ckpt), "dtype": "float32"}})  # SAM, captioner: lazy
    got = model.encode_text(["a red chair", "a wooden table with four legs"])
    ids = tok("a red chair", return_tensors="pt")["input_ids"]
    assert ids[0, 0] == tok.bos_token_id and model.dim == 32
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(ckpt)(input_ids=ids).last_hidden_state[0]
    assert torch.allclose(got[0], torch.nn.functional.normalize(hidden[1:].mean(0), dim=0), atol=1e-5)
    assert float(got[0] @ got[1]) < 0.999
