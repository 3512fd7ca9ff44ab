"""Feature adapters `clip` and `siglip` (small random-weight configs) and the `features` stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from pipeline.core.errors import M3Error
from pipeline.core.scene import load_views
from pipeline.features.models import available, build_model
from pipeline.features.store import FeatureStore, partial_path
from tests.helpers.scenes import posed_scene

CLIP = {"weights": "random"}


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth random image ``[3, H, W]`` in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(2, height // 24), max(2, width // 24), generator=g)
    return torch.nn.functional.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)[0].clamp(
        0, 1
    )


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


def test_siglip_dense_equals_pooled_embedding_when_all_tokens_are_equal():
    """SigLIP invariant: with a uniform image and equal position embeddings every patch token is
    the same, so the model's own pooled embedding (probe attending over all tokens) equals every
    dense feature (the head applied to each token alone). A textured image gives distinct cells."""
    model = build_model("siglip", {"weights": "random"})
    assert model.dim == 64 and model.grid_size(240, 320) == (4, 5)
    fm = model.extract(_image(240, 320))
    assert fm.features.shape == (4, 5, 64) and bool(fm.valid.all())
    assert (fm.features - fm.features.mean((0, 1))).abs().max() > 1e-2
    with torch.no_grad():
        pos = model.model.vision_model.embeddings.position_embedding.weight
        pos.copy_(pos[:1].expand_as(pos))
        uniform = torch.ones(3, 240, 320) * torch.tensor([0.2, 0.6, 0.4]).view(3, 1, 1)
        dense = model.extract(uniform).features
        x = model.preprocess(uniform)
        pooled = model.model.get_image_features(pixel_values=x, interpolate_pos_encoding=True).pooler_output[0]
    assert torch.allclose(dense, pooled.expand_as(dense), atol=1e-5)
    text = model.encode_text(["a yellow duck", "a chair"])
    assert text.shape == (2, 64) and torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_siglip_local_checkpoint_uses_its_sentencepiece_vocabulary(tmp_path: Path):
    """A SigLIP folder laid out as on the hub (weights, config, spiece.model): the adapter loads
    the checkpoint's own SentencePiece tokenizer (sentencepiece + protobuf are dependencies)."""
    import sentencepiece as spm
    from transformers import SiglipConfig, SiglipModel, SiglipTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["a yellow duck on a red box", "the blue sphere", "a wooden cylinder", "walls"] * 50))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "spiece"), vocab_size=24, model_type="unigram", minloglevel=2
    )
    tok = SiglipTokenizer(vocab_file=str(tmp_path / "spiece.model"))
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = SiglipConfig(
        text_config={**small, "vocab_size": tok.vocab_size, "max_position_embeddings": tok.model_max_length},
        vision_config={**small, "image_size": 56, "patch_size": 14},
    )
    ckpt = tmp_path / "siglip"
    SiglipModel(config).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    model = build_model("siglip", {"checkpoint": str(ckpt)})
    assert model.tokenizer(["a yellow duck"])["input_ids"][0, 0] == tok("a yellow duck")["input_ids"][0]
    text = model.encode_text(["a yellow duck", "the blue sphere"])
    assert text.shape == (2, 32) and torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert float(text[0] @ text[1]) < 0.999  # different texts, different embeddings
    assert model.extract(_image(112, 112)).features.shape == (4, 4, 32)  # image and text share the space


def test_siglip_missing_weights_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(M3Error, match=r"google/siglip-so400m-patch14-384.*hf download google/siglip-so400m"):
        build_model("siglip", {})


# ---------------------------------------------------------------- stage on the demo scene
# Small random-weight configs per adapter; adapters not listed run with {"weights": "random"}.
SMALL = {
    "clip": CLIP,
    "siglip": {"weights": "random"},
    "dinov2": {"weights": "random", "input_size": 56},
    "sam_clip": {
        "weights": "random",
        "points_per_side": 3,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "clip": {"weights": "random"},
    },
    "llamav": {"weights": "random", "family": "mllama"},
    "llama3": {
        "weights": "random",
        "sam": {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
        "captioner": {"num_beams": 1, "max_new_tokens": 6},
    },
    "seem": {
        "weights": "random",
        "sam": {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    },
}


class Counting:
    """Wraps an adapter and counts its forward passes (``extract`` calls)."""

    def __init__(self, model):
        self.model, self.calls = model, 0
        self.dim, self.grid_size = model.dim, model.grid_size

    def __getattr__(self, key):
        return getattr(self.model, key)

    def extract(self, image):
        self.calls += 1
        return self.model.extract(image)


@pytest.fixture(scope="module")
def scene4(demo_input, tmp_path_factory):
    return posed_scene(tmp_path_factory.mktemp("feat") / "four", demo_input, 4)


SLOW_ADAPTERS = {"sam_clip", "llama3", "seem"}  # SAM's automatic mask generator: ~10 s per view on a busy CPU


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_ADAPTERS else n for n in available()]
)
def test_stage_store_equals_direct_forward_pass(name, scene4):
    from pipeline.core.images import load_image, to_float
    from stages.features import run

    conf = SMALL.get(name, {"weights": "random"})
    model = build_model(name, conf)
    stats = run(conf, scene4, name, model=model)
    views = load_views(scene4)
    store = FeatureStore.open(scene4.features_path(name))
    h, w = model.grid_size(240, 320)
    assert store.names == [v.name for v in views] and store.shape == (h, w, model.dim)
    assert stats["views"] == 4 and stats["computed_views"] == 4 and stats["map_size"] == [h, w, model.dim]
    assert stats["bytes_on_disk"] > 0 and stats["seconds_per_view"] > 0
    a = store.attrs
    assert a["model"] == name and a["grid"] == [h, w] and a["image_size"] == [240, 320]
    assert a["feature_stride"] == [240 / h, 320 / w] and a["weights"] == "random"
    assert a["provenance"]["config"]["model"] == name and len(a["provenance"]["inputs_hash"]) == 16
    assert a["config_hash"] == a["provenance"]["config_hash"] and len(a["provenance"]["code_hash"]) == 16
    for i in (0, 3):
        feats, valid = store.read(i)
        assert feats.dtype == np.float16 and valid.dtype == np.bool_
        pixels = to_float(load_image(views[i].image_path, 320, 240))
        direct = model.extract(torch.from_numpy(pixels).permute(2, 0, 1))
        expect = direct.features.numpy().astype(np.float16)
        np.testing.assert_allclose(feats.astype(np.float32), expect.astype(np.float32), rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(valid, direct.valid.numpy())
    for record in model.record_names:  # every view's records, gathered in view order
        rows = store.records(record)
        assert {r["view"] for r in rows} <= set(store.names) and (
            scene4.features_path(name) / f"{record}.json"
        ).is_file()


def test_kill_and_resume_recomputes_only_missing_views(demo_input, tmp_path):
    from stages.features import run

    model = build_model("clip", CLIP)
    whole = posed_scene(tmp_path / "whole", demo_input, 6)
    run(CLIP, whole, "clip", model=model)
    reference = zarr.open_array(zarr.storage.LocalStore(whole.features_path("clip") / "features"))[:]

    scene = posed_scene(tmp_path / "killed", demo_input, 6)

    def kill_after_3(i: int) -> None:
        if i == 2:
            raise KeyboardInterrupt

    first = Counting(model)
    with pytest.raises(KeyboardInterrupt):
        run(CLIP, scene, "clip", model=first, on_view=kill_after_3)
    assert first.calls == 3 and not scene.features_path("clip").exists()
    assert partial_path(scene.features_path("clip")).is_dir()
    second = Counting(model)
    stats = run(CLIP, scene, "clip", model=second)
    assert second.calls == 3 and stats["computed_views"] == 3
    assert not partial_path(scene.features_path("clip")).exists()
    final = zarr.open_array(zarr.storage.LocalStore(scene.features_path("clip") / "features"))[:]
    np.testing.assert_array_equal(final, reference)
    # finished and unchanged: kept; a config change or an input change: every view recomputed
    again = Counting(model)
    assert run(CLIP, scene, "clip", model=again)["computed_views"] == 0 and again.calls == 0
    changed = {**CLIP, "input_size": 84}
    assert run(changed, scene, "clip")["computed_views"] == 6
    assert FeatureStore.open(scene.features_path("clip")).shape[:2] == (6, 8)
    Image.new("RGB", (320, 240), (10, 200, 30)).save(scene.images_dir / "00004.png")
    assert run(changed, scene, "clip")["computed_views"] == 6


def test_cli_features_uses_params_section_and_reports_errors(scene4, tmp_path):
    from typer.testing import CliRunner

    from stages.cli import app

    params = tmp_path / "params.yaml"
    params.write_text("models: [clip]\nfeatures:\n  clip: {weights: random, input_size: 28}\n")
    runner = CliRunner()
    result = runner.invoke(app, ["features", str(scene4.root), "--params", str(params), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    store = FeatureStore.open(scene4.features_path("clip"))
    assert store.shape == (2, 3, 32) and store.attrs["input_size"] == 28
    stats = json.loads((scene4.stats_path("features", "clip")).read_text())
    assert stats["views"] == 4 and "map_size" not in stats and stats["bytes_on_disk"] > 0
    # run figures (seconds) lie outside features/, which train depends on as a folder
    assert not list(scene4.features_dir.glob("*.json")) and "seconds" in stats
    params.write_text("models: [clip]\nfeatures:\n  clip: {weights: random, input_sise: 28}\n")
    result = runner.invoke(app, ["features", str(scene4.root), "--params", str(params)])
    assert result.exit_code == 2 and "unknown key 'input_sise'" in result.output


def test_cli_options_override_the_model_section(demo_input, tmp_path):
    """`--<model>.<key>` options are the adapter config's fields: given ones override params.yaml."""
    from typer.testing import CliRunner

    from stages.cli import app

    scene = posed_scene(tmp_path / "two", demo_input, 2)
    params = tmp_path / "params.yaml"
    params.write_text("models: [clip]\nfeatures:\n  clip: {input_size: 56, random_arch: {embed_dim: 16}}\n")
    runner = CliRunner()
    base = ["features", str(scene.root), "--params", str(params), "--device", "cpu"]
    result = runner.invoke(app, [*base, "--clip.input-size", "28", "--clip.weights", "random"])
    assert result.exit_code == 0, result.output
    store = FeatureStore.open(scene.features_path("clip"))
    assert store.n_views == 2 and store.shape == (2, 3, 16)
    assert store.attrs["input_size"] == 28 and store.attrs["weights"] == "random"
    assert store.attrs["config"]["random_arch"]["embed_dim"] == 16  # the params section's other keys stay
    for option, error in (
        (["--clip.input-size", "0"], "features.clip (with options --clip.input-size).input_size: 0 is out of range"),
        (["--clip.random_arch.layers", "0"], "(with options --clip.random_arch.layers).random_arch.layers: 0 is out"),
        (["--siglip.input-size", "28"], "--siglip.<key> options given, but model siglip is not extracted"),
    ):
        result = runner.invoke(app, [*base, *option])
        assert result.exit_code == 2 and error in result.output, result.output


@pytest.mark.slow
def test_peak_ram_does_not_grow_with_views(demo_input, tmp_path):
    """10 vs 40 views, each map 32 x 43 x 512 (2.8 MB in float32): holding the 30 extra views would
    add ~85 MB. Streaming per view keeps the high-water mark flat apart from allocator warm-up
    (~20 MB over the first ~40 views; a 150-view run levels off at the same RSS)."""
    from benchmarks.features_memory import measure_in_subprocess

    conf = {"weights": "random", "input_size": 448, "random_arch": {"embed_dim": 512}}
    runs = {
        n: measure_in_subprocess(posed_scene(tmp_path / f"v{n}", demo_input, n).root, "clip", conf) for n in (10, 40)
    }
    print("features peak RSS:", runs)
    assert runs[10]["views"] == 10 and runs[40]["views"] == 40
    assert runs[40]["peak_rss_mb"] - runs[10]["peak_rss_mb"] < 40
