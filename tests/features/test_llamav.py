"""`llamav`: a VLM's image tokens as a dense map (LLaVA and Llama-3.2-Vision families, small random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.errors import M3Error
from pipeline.features.models import build_model
from pipeline.features.models.llamav import tokens_from_records
from pipeline.features.vlm import ImageTokens
from tests.helpers.checkpoints import word_tokenizer
from tests.helpers.data import smooth_image

FAMILIES = {
    "llava": {"weights": "random", "family": "llava"},
    "llava-full": {"weights": "random", "family": "llava", "random_arch": {"select_strategy": "full"}},
    "mllama": {"weights": "random", "family": "mllama"},
}
QUESTION = "What is on the table?"


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    model = build_model("llamav", FAMILIES[request.param])
    image = smooth_image(240, 320)
    return request.param, model, image, model.extract(image)


def test_dense_map_shapes_dtype_and_global_tokens(family):
    name, model, _, fm = family
    h, w = {"llava": (4, 4), "llava-full": (4, 4), "mllama": (8, 8)}[name]  # 56 px / 14; mllama 2 x 2 tiles
    assert model.grid_size(240, 320) == model.grid_size(100, 50) == (h, w)  # the model's grid, any image
    assert model.dim == 64 and fm.features.shape == (h, w, 64) and fm.features.dtype == torch.float32
    assert fm.valid.shape == (h, w) and fm.valid.dtype == torch.bool and bool(fm.valid.all())
    assert torch.isfinite(fm.features).all() and fm.features.std() > 1e-3
    # the VLM runs in float16: the float16 store holds exactly the tokens its language model reads
    assert torch.equal(fm.features, fm.features.half().float())
    records = fm.records["global_tokens"]
    assert len(records) == {"llava": 0, "llava-full": 1, "mllama": 4}[name]  # none, CLS, a CLS per tile
    assert [r["index"] for r in records] == list(range(len(records)))
    assert all(len(r["token"]) == 64 for r in records)


def test_stored_tokens_give_exactly_the_models_own_logits(family):
    """The map and records, rounded to float16 as stored, fed in place of the VLM's own vision tokens,
    give bit for bit the logits of the VLM's own forward on the image; other tokens do not."""
    _, model, image, fm = family
    stored = torch.from_numpy(fm.features.numpy().astype(np.float16))
    tokens = tokens_from_records(stored, fm.records["global_tokens"])
    own = model.vlm.own_logits(image, QUESTION)
    assert torch.equal(model.vlm.logits(QUESTION, tokens), own)
    other = model.extract(smooth_image(240, 320, seed=5)).features
    assert (model.vlm.logits(QUESTION, ImageTokens(other, tokens.globals)) - own).abs().max() > 1e-3
    keep = torch.zeros(model.vlm.grid, dtype=torch.bool)
    keep[:2, :2] = True  # a region: only its tokens are read
    region = model.vlm.logits(QUESTION, tokens, keep)
    assert (region[0, -1] - own[0, -1]).abs().max() > 1e-3
    answer = model.vlm.generate(QUESTION, tokens, max_new_tokens=4)
    assert isinstance(answer, str) and answer  # noise from random weights, but generated


def test_llava_patch_cells_tile_the_wholesmooth_image():
    """Cell (i, j) of the map is the patch of pixels [i*H/h, (i+1)*H/h) x [j*W/w, ...): editing the
    image's rightmost quarter changes the last grid column most (LLaVA's tokens carry their patch)."""
    model = build_model("llamav", FAMILIES["llava"])
    image = smooth_image(240, 320, seed=1)
    edited = image.clone()
    edited[:, :, 240:] = 1.0 - edited[:, :, 240:]
    change = (model.extract(edited).features - model.extract(image).features).norm(dim=-1).mean(0)  # [w]
    assert int(change.argmax()) == 3 and change[3] > 2 * change[:2].max()


def test_llamav_errors_name_the_key_and_fix():
    with pytest.raises(M3Error, match=r"tiles: \[1, 2\] must use all 4 tiles.*\[2, 2\]"):
        build_model("llamav", {**FAMILIES["mllama"], "tiles": [1, 2], "random_arch": {}})
    with pytest.raises(M3Error, match=r"prompt: .*needs both '<image>' and '\{question\}'"):
        build_model("llamav", {**FAMILIES["llava"], "prompt": "USER: {question}"})
    with pytest.raises(M3Error, match="family: 'qwen' is not one of 'llava', 'mllama'"):
        build_model("llamav", {"weights": "random", "family": "qwen"})
    with pytest.raises(M3Error, match="dtype: 'int8'"):
        build_model("llamav", {**FAMILIES["llava"], "dtype": "int8"})


def test_llamav_missing_checkpoint_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(M3Error, match=r"Llama-3\.2-11B-Vision-Instruct.*hf download meta-llama/Llama-3\.2-11B"):
        build_model("llamav", {})


def test_llava_local_checkpoint_uses_its_processor(tmp_path):
    """A LLaVA folder as on the hub (model, tokenizer, image processor, chat template): the adapter
    prompts with the checkpoint's chat template and expands <image> exactly as LlavaProcessor does,
    and the stored tokens still give the model's own logits."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    tok = word_tokenizer("USER ASSISTANT : what is on the table ? a red box".split(), ["<image>"])
    template = (
        "{% for m in messages %}{{ m['role'].upper() + ': ' }}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}{{ '<image>\n' }}{% else %}{{ c['text'] + ' ' }}{% endif %}"
        "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    )
    improc = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    processor = LlavaProcessor(
        improc, tok, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1
    )  # as llava-1.5-hf: a CLS token the default strategy drops
    processor.chat_template = template
    model = build_model("llamav", FAMILIES["llava"]).vlm.model
    model.resize_token_embeddings(len(tok))
    model.config.image_token_id = tok.convert_tokens_to_ids("<image>")
    ckpt = tmp_path / "llava"
    model.save_pretrained(ckpt)
    processor.save_pretrained(ckpt)

    loaded = build_model("llamav", {"checkpoint": str(ckpt)})
    vlm = loaded.vlm
    assert vlm.family == "llava" and vlm.template == "USER: <image>\n{question} ASSISTANT:"
    question = "what is on the table ?"
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True,
    )
    image = smooth_image(240, 320, seed=2)
    pixels = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    theirs = processor(text=prompt, images=pixels, return_tensors="pt")["input_ids"]
    assert vlm._input_ids(question, 16).tolist() == theirs.tolist()  # 16 = 4 x 4 patches, CLS dropped
    fm = loaded.extract(image)
    stored = ImageTokens(torch.from_numpy(fm.features.numpy().astype(np.float16)), torch.zeros(0, 64))
    assert torch.equal(vlm.logits(question, stored), vlm.own_logits(image, question))
