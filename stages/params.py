"""Command ``m3 params``: every option of a stage section, its value in params.yaml, its default and help.

The reference for ``params.yaml``: generated from the stage configs' field docstrings (the one
place an option is written), so it is never out of date.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import typer

from pipeline.bank.config import BankConfig
from pipeline.cluster.config import ClusterConfig
from pipeline.core.config import field_help, load_params, section_of
from pipeline.demo.config import DemoConfig
from pipeline.evaluate.config import AskConfig, EvaluateConfig, ExportConfig, QueryConfig, ViewConfig
from pipeline.poses.config import FramesConfig, PosesConfig
from pipeline.splat.config import TrainConfig
from stages.command import PARAMS, reports_errors

SECTIONS: dict[str, type] = {
    "demo": DemoConfig,
    "frames": FramesConfig,
    "poses": PosesConfig,
    "bank": BankConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "query": QueryConfig,
    "export": ExportConfig,
    "view": ViewConfig,
    "ask": AskConfig,
    "cluster": ClusterConfig,
}
"""Section -> config class (``bank`` is per model: ``bank.<model>``)."""


def defaults_of(cls: type) -> dict[str, Any]:
    """Field name -> default value (nested sections as dicts; ``MISSING`` for required fields)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def describe(cls: type, values: dict[str, Any], prefix: str, defaults: dict[str, Any] | None = None) -> list[str]:
    """Lines ``<prefix>.<field> = <value>  (default <d>)`` plus the field's help, for every field of
    ``cls``; ``values`` are the params.yaml settings, ``defaults`` those of the enclosing section."""
    defaults = defaults_of(cls) if defaults is None else defaults
    docs, hints, lines = field_help(cls), typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        default = defaults.get(f.name, dataclasses.MISSING)
        if dataclasses.is_dataclass(hints[f.name]):
            lines += describe(hints[f.name], values.get(f.name) or {}, f"{prefix}.{f.name}", default)
            continue
        if f.name in values:
            differs = default is not dataclasses.MISSING and values[f.name] != default
            shown = f"{values[f.name]!r}" + (f"  (default {default!r})" if differs else "")
        else:
            shown = "(required, missing)" if default is dataclasses.MISSING else f"{default!r}  (default)"
        lines.append(f"{prefix}.{f.name} = {shown}\n    {' '.join(docs[f.name].split())}")
    return lines


@reports_errors
def cli(
    section: str = typer.Argument(None, help=f"a section ({', '.join(SECTIONS)}); default: all"),
    params: Path = PARAMS,
) -> None:
    """List every option of the stage sections: value in params.yaml, default and help."""
    data = load_params(params)
    names = [section] if section else list(SECTIONS)
    for name in names:
        if name not in SECTIONS:
            raise typer.BadParameter(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
        if name == "bank":
            models = list((data.get("bank") or {}).keys()) or ["<model>"]
            for model in models:
                print("\n".join(describe(BankConfig, section_of(data, f"bank.{model}", str(params)), f"bank.{model}")))
        else:
            print("\n".join(describe(SECTIONS[name], section_of(data, name, str(params)), name)))
