"""Typed stage configs: params sections, overrides, required keys, field docstrings as help."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.bank.config import BankConfig
from pipeline.core.config import field_help, load_config
from pipeline.core.errors import M3Error
from pipeline.splat.config import Schedule, TrainConfig, cpu_schedule
from stages.cli import app
from stages.params import SECTIONS


def test_every_stage_option_has_a_field_docstring() -> None:
    for name, cls in SECTIONS.items():
        docs = field_help(cls)
        missing = [f for f, doc in docs.items() if not doc.strip()]
        assert not missing, f"{cls.__name__} ({name}): fields without a docstring: {missing}"
        assert all(dataclasses.fields(cls)) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert field_help(Schedule)["iterations"] == "Training steps." and all(field_help(Schedule).values())


def test_load_config_overrides_and_checks(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("bank:\n  clip: {threshold: 0.8, refine: 2}\n")
    cfg = load_config(BankConfig, "bank.clip", params, {"refine": 0, "dtype": None})
    assert cfg == BankConfig(threshold=0.8, refine=0)  # None: not given, params.yaml decides
    with pytest.raises(M3Error, match=r"bank.siglip: required key 'threshold' missing"):
        load_config(BankConfig, "bank.siglip", params)
    with pytest.raises(M3Error, match=r"bank.clip \(with options --refine\).refine: expected int, got 'x'"):
        load_config(BankConfig, "bank.clip", params, {"refine": "x"})
    with pytest.raises(
        M3Error, match=r"bank.clip \(with options --threshold\).threshold: 2.0 is out of range; use >= -1"
    ):
        load_config(BankConfig, "bank.clip", params, {"threshold": 2.0})


def test_exponent_floats_without_dot_are_floats_and_quoted_numbers_strings(tmp_path: Path) -> None:
    """`6e-4` is a float as YAML 1.2 and DVC read it (PyYAML alone reads a string); a quoted
    `"4e-4"` is a string, an error for a number, saying so."""
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  cpu: {grad_threshold: 6e-4, lr_means: 1.6E-4, lr_scales: 5e+1}\n")
    cfg = load_config(TrainConfig, "train", params)
    assert cfg.cpu.grad_threshold == 6e-4 and cfg.cpu.lr_means == 1.6e-4 and cfg.cpu.lr_scales == 50.0
    assert cfg.cpu.iterations == cpu_schedule().iterations  # a partial schedule keeps its other defaults
    params.write_text("train:\n  cpu: {grad_threshold: small}\n")
    with pytest.raises(M3Error, match="grad_threshold: expected float, got 'small'$"):
        load_config(TrainConfig, "train", params)
    params.write_text('train:\n  cpu: {lr_means: "4e-4"}\n')
    with pytest.raises(M3Error, match=r"lr_means: expected float, got '4e-4' \(a quoted number is a string"):
        load_config(TrainConfig, "train", params)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("train:\n  cpu: {iterations: 0}\n", r"train.cpu.iterations: 0 is out of range; use >= 1"),
        ("train:\n  cpu: {iterations: -5}\n", r"train.cpu.iterations: -5 is out of range; use >= 1"),
        ("train:\n  cpu: {lr_means: .nan}\n", r"train.cpu.lr_means: nan is out of range; use > 0"),
        ("train:\n  cpu: {init_opacity: 1.0}\n", r"train.cpu.init_opacity: 1.0 is out of range; use > 0 and < 1"),
        ("train:\n  ssim_weight: 1.5\n", r"train.ssim_weight: 1.5 is out of range; use >= 0 and <= 1"),
        ("train:\n  query_dims: {clip: 0}\n", r"train.query_dims.clip: 0 is out of range; use >= 1"),
        ("trian:\n  seed: 1\n", r"top-level section: unknown key 'trian'; did you mean 'train'\?"),
        ("scenes: ['x; touch /tmp/INJECTED #']\n", r"scene name 'x; touch /tmp/INJECTED #' is not allowed"),
        ("scenes: [my scene]\n", r"'my scene' is not allowed \(it becomes a folder .*\); use letters, digits"),
        ("scenes: [..]\n", r"scene name '..' is not allowed"),
        ("models: clip\n", r"models must be a list of names, got 'clip'"),
    ],
)
def test_values_out_of_range_and_unknown_sections_are_refused(tmp_path: Path, text: str, error: str) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(text)
    with pytest.raises(M3Error, match=error):
        load_config(TrainConfig, "train", params)


def test_every_documented_section_is_a_known_top_level_section(tmp_path: Path) -> None:
    from pipeline.core.config import SECTIONS as TOP_LEVEL
    from pipeline.core.config import load_params

    assert set(TOP_LEVEL) == {*SECTIONS, "scenes", "models", "features"}
    params = tmp_path / "params.yaml"
    params.write_text("query: {negatives: [e5, -e5, .e1, 1e3x]}\ntrain: {tau: 5e-2}\n")  # only numbers are numbers
    data = load_params(params)
    assert data["query"]["negatives"] == ["e5", "-e5", ".e1", "1e3x"] and data["train"]["tau"] == 0.05


def test_configs_built_in_code_are_checked_too() -> None:
    with pytest.raises(M3Error, match=r"Schedule.iterations: 0 is out of range; use >= 1"):
        TrainConfig().with_schedule("cpu", iterations=0)
    with pytest.raises(M3Error, match=r"BankConfig.threshold: 1.5 is out of range"):
        BankConfig(threshold=1.5)


def test_misspelled_model_names_say_which_one_was_meant(tmp_path: Path) -> None:
    from pipeline.features.models import listed_models, resolve_conf

    params = tmp_path / "params.yaml"
    for text, error in (
        ("models: [clipp]\n", r"params.yaml: models: unknown model 'clipp'; did you mean 'clip'\?"),
        (
            "models: [clip]\nbank: {clipp: {threshold: 0.8}}\n",
            r"bank.clipp: unknown model 'clipp'; did you mean 'clip'",
        ),
        ("models: [clip]\nfeatures: {dinov: {}}\n", r"features.dinov: unknown model 'dinov'; did you mean 'dinov2'"),
        (
            "models: [clip]\ntrain: {query_dims: {sigclip: 8}}\n",
            r"query_dims.sigclip: unknown model 'sigclip'; did you",
        ),
    ):
        params.write_text(text)
        with pytest.raises(M3Error, match=error):
            listed_models(params)
    params.write_text("models: [clip]\n")
    assert listed_models(params) == ["clip"]
    with pytest.raises(M3Error, match=r"features.dinov2.input_size: expected int, got '448' \(a quoted"):
        resolve_conf("dinov2", {"input_size": "448"})
    runner = CliRunner()
    params.write_text("models: [clip]\nbank:\n  clipp: {threshold: 0.8}\n")
    result = runner.invoke(app, ["bank", str(tmp_path / "demo"), "--params", str(params)])
    assert result.exit_code == 2 and "bank.clipp: unknown model 'clipp'; did you mean 'clip'?" in result.output
    params.write_text("models: [clip]\n")
    result = runner.invoke(app, ["bank", str(tmp_path / "demo"), "--params", str(params)])
    assert result.exit_code == 2 and "no bank.clip section; add one with its threshold" in result.output


def test_m3_params_lists_values_defaults_and_help(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  cpu: {iterations: 50}\n")
    result = CliRunner().invoke(app, ["params", "train", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "train.cpu.iterations = 50  (default 1600)\n    Training steps." in result.output
    assert "train.reference.iterations = 30000  (default)" in result.output
    assert "train.tau = 0.05  (default)" in result.output
    n_sched = len(dataclasses.fields(Schedule))
    assert result.output.count("\ntrain.") + 1 == len(dataclasses.fields(TrainConfig)) - 2 + 2 * n_sched


def test_generated_options_match_the_fields() -> None:
    """`m3 train --help` holds an option per scalar field, with the field docstring as its help."""
    result = CliRunner().invoke(app, ["train", "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name, doc in field_help(TrainConfig).items():
        if name in ("cpu", "reference"):  # nested schedules: --cpu.<key>, --reference.<key>
            for key, sub in field_help(Schedule).items():
                assert f"--{name}.{key.replace('_', '-')}" in text and " ".join(sub.split())[:40] in text, key
        elif name == "query_dims":  # a mapping: params.yaml only
            assert "--query-dims" not in text
        else:
            assert f"--{name.replace('_', '-')}" in text and " ".join(doc.split())[:40] in text, name
