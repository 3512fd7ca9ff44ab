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
    with pytest.raises(M3Error, match="bank.threshold: 2.0 is not a cosine"):
        load_config(BankConfig, "bank.clip", params, {"threshold": 2.0})


def test_exponent_floats_without_dot_are_floats(tmp_path: Path) -> None:
    """PyYAML reads `6e-4` as a string (YAML 1.1); float params still accept it, other strings not."""
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  cpu: {grad_threshold: 6e-4, lr_means: 1.6E-4}\n")
    cfg = load_config(TrainConfig, "train", params)
    assert cfg.cpu.grad_threshold == 6e-4 and cfg.cpu.lr_means == 1.6e-4
    assert cfg.cpu.iterations == cpu_schedule().iterations  # a partial schedule keeps its other defaults
    params.write_text("train:\n  cpu: {grad_threshold: small}\n")
    with pytest.raises(M3Error, match="grad_threshold: expected float, got 'small'"):
        load_config(TrainConfig, "train", params)


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
