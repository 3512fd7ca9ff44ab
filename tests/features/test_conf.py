"""Adapter configs (``features.<model>``): typed like the stage sections, with unchanged provenance hashes.

The adapters' sections used to be plain dicts (``default_conf``) merged hloc-style; they are frozen
dataclasses now (``config_class``). The features stage records ``provenance("features", {"model":
name, **conf})``, so the resolved conf must be the very dict the old merge gave, or every existing
feature store would be recomputed: :data:`OLD_DEFAULTS` and :func:`old_merge` are frozen copies of
the old code, and :data:`GOLDEN` the ``config_hash`` the old code computed for :data:`CASES`.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline.core.config import Checked, field_help, section_class
from pipeline.core.errors import M3Error
from pipeline.core.io import config_hash
from pipeline.features.models import available, model_class, resolve_conf
from stages.cli import app

OLD_CLIP_ARCH = {
    "image_size": 56, "patch_size": 14, "width": 64, "layers": 2, "heads": 2, "embed_dim": 32, "text_width": 32,
    "text_layers": 2, "text_heads": 2, "context_length": 77,
}  # fmt: skip
OLD_SAM = {
    "sam_type": "vit_h",
    "checkpoint": "sam_vit_h_4b8939.pth",
    "random_arch": {"embed_dim": 64, "depth": 2, "num_heads": 2, "global_attn_indexes": [1], "img_size": 256},
    "points_per_side": 32,
    "points_per_batch": 64,
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95,
    "box_nms_thresh": 0.7,
    "crop_n_layers": 0,
}
OLD_DEFAULTS: dict[str, dict[str, Any]] = {
    "clip": {
        "source": "open_clip",
        "checkpoint": "ViT-L-14-336",
        "pretrained": "openai",
        "weights": "pretrained",
        "input_size": None,
        "random_arch": OLD_CLIP_ARCH,
        "seed": 0,
        "mean": None,
        "std": None,
    },
    "dinov2": {
        "checkpoint": "facebook/dinov2-giant",
        "weights": "pretrained",
        "input_size": 448,
        "patch_size": 14,
        "random_arch": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "seed": 0,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    },
    "llama3": {
        "weights": "pretrained",
        "seed": 0,
        "stride": 4,
        "cell_coverage": 0.5,
        "blank_background": True,
        "sam": OLD_SAM,
        "captioner": {
            "checkpoint": "florence-community/Florence-2-large",
            "task": "<DETAILED_CAPTION>",
            "max_new_tokens": 48,
            "num_beams": 3,
            "batch_size": 8,
            "random_arch": {"image_size": 64, "vision_width": 16, "text_width": 64, "text_layers": 1, "text_heads": 2},
        },
        "embedder": {
            "checkpoint": "meta-llama/Meta-Llama-3-8B",
            "dtype": "bfloat16",
            "batch_size": 16,
            "random_arch": {"width": 64, "layers": 2, "heads": 2},
        },
    },
    "llamav": {
        "checkpoint": "meta-llama/Llama-3.2-11B-Vision-Instruct",
        "weights": "pretrained",
        "family": "mllama",
        "dtype": "float16",
        "tiles": [2, 2],
        "prompt": None,
        "mean": None,
        "std": None,
        "random_arch": {
            "image_size": 56,
            "patch_size": 14,
            "vision_width": 32,
            "vision_layers": 2,
            "vision_heads": 2,
            "text_width": 64,
            "text_layers": 2,
            "text_heads": 2,
            "select_strategy": "default",
        },
        "seed": 0,
    },
    "sam_clip": {
        **OLD_SAM,
        "weights": "pretrained",
        "seed": 0,
        "stride": 4,
        "cell_coverage": 0.5,
        "blank_background": True,
        "batch_size": 32,
        "clip": {
            "source": "open_clip",
            "checkpoint": "ViT-L-14-336",
            "pretrained": "openai",
            "weights": "pretrained",
            "random_arch": OLD_CLIP_ARCH,
            "seed": 0,
            "mean": None,
            "std": None,
        },
    },
    "seem": {
        "checkpoint": "google/owlv2-base-patch16-ensemble",
        "weights": "pretrained",
        "seed": 0,
        "stride": 4,
        "cell_coverage": 0.5,
        "sam": OLD_SAM,
        "random_arch": {"image_size": 128, "patch_size": 16, "width": 48, "text_width": 32, "layers": 2, "heads": 2},
    },
    "siglip": {
        "checkpoint": "google/siglip-so400m-patch14-384",
        "weights": "pretrained",
        "input_size": None,
        "random_arch": {
            "image_size": 56,
            "patch_size": 14,
            "width": 64,
            "layers": 2,
            "heads": 2,
            "text_width": 32,
            "text_layers": 2,
            "text_heads": 2,
            "context_length": 64,
        },
        "seed": 0,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    },
}


def old_merge(default: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """The old ``merge_conf`` for valid sections: ``user`` over ``default``, nested dicts key by key,
    an int given for a float default made a float."""
    merged = dict(default)
    for key, value in user.items():
        if isinstance(default[key], dict) and isinstance(value, dict):
            merged[key] = old_merge(default[key], value)
        elif isinstance(default[key], float) and isinstance(value, int):
            merged[key] = float(value)
        else:
            merged[key] = value
    return merged


CASES: list[tuple[str, dict[str, Any]]] = [
    *((name, {}) for name in ("clip", "dinov2", "llama3", "llamav", "sam_clip", "seem", "siglip")),
    # params.yaml's sections
    (
        "clip",
        {
            "source": "open_clip", "checkpoint": "ViT-L-14-336", "pretrained": "openai", "weights": "pretrained",
            "input_size": None,
        },
    ),
    ("siglip", {"checkpoint": "google/siglip-so400m-patch14-384", "weights": "pretrained", "input_size": None}),
    ("dinov2", {"checkpoint": "facebook/dinov2-giant", "weights": "pretrained", "input_size": 448}),
    (
        "sam_clip",
        {
            "sam_type": "vit_h", "checkpoint": "sam_vit_h_4b8939.pth", "weights": "pretrained", "stride": 4,
            "points_per_side": 32, "clip": {"checkpoint": "ViT-L-14-336", "pretrained": "openai"},
        },
    ),
    (
        "seem",
        {
            "checkpoint": "google/owlv2-base-patch16-ensemble", "weights": "pretrained", "stride": 4,
            "sam": {"sam_type": "vit_h", "checkpoint": "sam_vit_h_4b8939.pth"},
        },
    ),
    (
        "llama3",
        {
            "weights": "pretrained", "stride": 4, "sam": {"sam_type": "vit_h", "checkpoint": "sam_vit_h_4b8939.pth"},
            "captioner": {"checkpoint": "florence-community/Florence-2-large", "task": "<DETAILED_CAPTION>"},
            "embedder": {"checkpoint": "meta-llama/Meta-Llama-3-8B"},
        },
    ),
    (
        "llamav",
        {
            "checkpoint": "meta-llama/Llama-3.2-11B-Vision-Instruct", "weights": "pretrained", "dtype": "float16",
            "tiles": [2, 2],
        },
    ),
    # small random configs of the tests, ints given for floats, nulls, partial nested sections
    (
        "clip",
        {"weights": "random", "source": "hf", "input_size": 28, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    ),
    ("clip", {"weights": "random", "input_size": 448, "random_arch": {"embed_dim": 512}, "seed": 3}),
    ("siglip", {"weights": "random", "random_arch": {"context_length": 16}, "mean": [0.0, 0.0, 0.0]}),
    ("dinov2", {"weights": "random", "input_size": 56, "random_arch": None}),
    (
        "sam_clip",
        {
            "weights": "random", "points_per_side": 3, "pred_iou_thresh": 0, "stability_score_thresh": 0,
            "cell_coverage": 1, "random_arch": None, "clip": {"weights": "random", "random_arch": {"layers": 1}},
        },
    ),
    (
        "seem",
        {"weights": "random", "sam": {"points_per_side": 3, "pred_iou_thresh": 0.0, "random_arch": {"depth": 1}}},
    ),
    (
        "llama3",
        {
            "weights": "random", "blank_background": False,
            "sam": {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
            "captioner": {"num_beams": 1, "max_new_tokens": 6}, "embedder": {"dtype": "float32"},
        },
    ),
    ("llamav", {"weights": "random", "family": "llava", "random_arch": {"image_size": 112, "select_strategy": "full"}}),
    ("llamav", {"weights": "random", "family": "mllama", "prompt": "USER: <image>\n{question} ASSISTANT:"}),
]  # fmt: skip
"""``(model, features.<model> section)``: defaults, params.yaml's sections, the tests' small configs,
ints given for floats, nulls, partial nested sections."""

GOLDEN = [
    "fe0a24a94dd5e656", "fa120f231e9f1ba9", "5c380d23b0802288", "6a764d7d3d978e6b", "816b7910427fad1f",
    "c5c3bf8cf5acd144", "ffe8668623410068", "fe0a24a94dd5e656", "ffe8668623410068", "fa120f231e9f1ba9",
    "816b7910427fad1f", "c5c3bf8cf5acd144", "5c380d23b0802288", "6a764d7d3d978e6b", "eb2ca233adaf2fca",
    "2045ce40b4256dae", "2a0368b731d652f4", "c02509d406330d05", "06875882dc5877c8", "ca58800352db4237",
    "fcc194bfbae73de6", "0dcf821e833cfae6", "43f0e2d80dc4f5a0",
]  # fmt: skip
"""``config_hash({"model": name, **conf})`` of each case, computed by the code before the change."""


def test_every_adapter_lists_its_config_class_torch_free() -> None:
    from pipeline.features.adapter_config import ADAPTER_CONFIGS

    assert list(ADAPTER_CONFIGS) == available()
    for name, cls in ADAPTER_CONFIGS.items():
        assert model_class(name).config_class is cls, name


def test_defaults_are_todays() -> None:
    assert set(OLD_DEFAULTS) == set(available()) and len(CASES) == len(GOLDEN)
    for name, old in OLD_DEFAULTS.items():
        assert resolve_conf(name, None) == model_class(name).default_conf == old, name


@pytest.mark.parametrize(
    ("case", "golden"), list(zip(CASES, GOLDEN)), ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)]
)
def test_resolved_conf_and_provenance_hash_are_unchanged(case: tuple[str, dict[str, Any]], golden: str) -> None:
    name, user = case
    conf = resolve_conf(name, user)
    assert conf == old_merge(OLD_DEFAULTS[name], user)
    assert config_hash({"model": name, **conf}) == config_hash({"model": name, **old_merge(OLD_DEFAULTS[name], user)})
    assert config_hash({"model": name, **conf}) == golden


def _sections(cls: type, prefix: str) -> list[tuple[str, type]]:
    """``(dotted name, dataclass)`` of ``cls`` and of every section nested in it."""
    hints = typing.get_type_hints(cls)
    found = [(prefix, cls)]
    for f in dataclasses.fields(cls):
        sub = section_class(hints[f.name])
        if sub is not None:
            found += _sections(sub, f"{prefix}.{f.name}")
    return found


@pytest.mark.parametrize("name", available())
def test_every_adapter_key_is_a_typed_documented_field(name: str) -> None:
    for where, cls in _sections(model_class(name).config_class, f"features.{name}"):
        assert issubclass(cls, Checked) and cls.__dataclass_params__.frozen, where  # type: ignore[attr-defined]
        missing = [key for key, doc in field_help(cls).items() if not doc.strip()]
        assert not missing, f"{where}: fields without a docstring: {missing}"


@pytest.mark.parametrize(
    ("name", "user", "error"),
    [
        (
            "clip",
            {"input_sise": 28},
            r"params.yaml: features.clip: unknown key 'input_sise'; did you mean 'input_size'\?",
        ),
        (
            "seem",
            {"sam": {"points_per_sid": 3}},
            r"features.seem.sam: unknown key 'points_per_sid'; did you mean 'points_per_side'",
        ),
        (
            "dinov2",
            {"input_size": "448"},
            r"features.dinov2.input_size: expected int, got '448' \(a quoted number is a string",
        ),
        ("clip", {"input_size": 0}, r"features.clip.input_size: 0 is out of range; use >= 1$"),
        (
            "sam_clip",
            {"cell_coverage": 1.5},
            r"features.sam_clip.cell_coverage: 1.5 is out of range; use >= 0 and <= 1$",
        ),
        (
            "llama3",
            {"embedder": {"dtype": "int8"}},
            r"features.llama3.embedder.dtype: 'int8' is not one of 'float16', ",
        ),
        (
            "siglip",
            {"weights": "pretrianed"},
            r"features.siglip.weights: 'pretrianed' is not one of 'pretrained', 'random'$",
        ),
        ("llamav", {"tiles": [2, 0]}, r"features.llamav.tiles\[1\]: 0 is out of range; use >= 1$"),
        ("dinov2", {"random_arch": {"hidden_size": 0}}, r"features.dinov2.random_arch.hidden_size: 0 is out of range"),
        ("clip", {"random_arch": None}, r"features.clip.random_arch: expected a mapping, got None$"),
        ("clip", [1], r"features.clip: expected a mapping of settings, got \[1\]$"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(name: str, user: Any, error: str) -> None:
    with pytest.raises(M3Error, match=error) as exc:
        resolve_conf(name, user)
    assert "\n" not in str(exc.value)


def test_m3_params_lists_the_adapter_keys_with_values_defaults_and_help(tmp_path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("features:\n  clip: {input_size: 224}\n  sam_clip: {sam_type: vit_b, clip: {weights: random}}\n")
    runner = CliRunner()
    result = runner.invoke(app, ["params", "features", "clip", "--params", str(params)])
    assert result.exit_code == 0, result.output
    help_ = " ".join(field_help(model_class("clip").config_class)["input_size"].split())
    assert f"features.clip.input_size = 224  (default None)\n    {help_}" in result.output
    assert "features.clip.random_arch.embed_dim = 32  (default)\n    Dimension of the joint" in result.output
    assert "features.siglip." not in result.output
    result = runner.invoke(app, ["params", "--params", str(params)])  # every section, features included
    assert result.exit_code == 0, result.output
    assert "features.sam_clip.sam_type = 'vit_b'  (default 'vit_h')" in result.output
    assert "features.sam_clip.clip.weights = 'random'  (default 'pretrained')" in result.output
    assert "features.llama3.sam.random_arch.depth = 2  (default)" in result.output
    assert "train.tau = " in result.output
    result = runner.invoke(app, ["params", "features", "clipp", "--params", str(params)])
    assert result.exit_code == 2 and "unknown model 'clipp'; did you mean 'clip'?" in result.output
