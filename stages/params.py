"""Command ``m3 params``: every option of a stage section, its value in params.yaml, its default and help.

The reference for ``params.yaml``: generated from the stage configs' and the feature adapters'
config classes (their field docstrings are the one place an option is written), so it is never
out of date. ``features`` and ``bank`` have one section per model (``m3 params features clip``).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import typer

from pipeline.bank.config import BankConfig
from pipeline.cluster.config import ClusterConfig
from pipeline.core.config import SECTIONS as TOP_LEVEL
from pipeline.core.config import field_help, load_params, section_class, section_of
from pipeline.demo.config import DemoConfig
from pipeline.evaluate.config import EvaluateConfig
from pipeline.poses.config import FramesConfig, PosesConfig
from pipeline.query.config import AskConfig, ExportConfig, QueryConfig
from pipeline.splat.config import TrainConfig
from pipeline.view.config import ViewConfig
from stages.command import PARAMS, reports_errors
from stages.server.config import ServeConfig

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
    "serve": ServeConfig,
    "ask": AskConfig,
    "cluster": ClusterConfig,
}
"""Section -> config class (``bank`` is per model: ``bank.<model>``); ``features.<model>`` is the
adapter's own ``config_class``."""
LISTED = [name for name in TOP_LEVEL if name in SECTIONS or name == "features"]
"""What ``m3 params`` lists, in params.yaml's order."""


def defaults_of(cls: type) -> dict[str, Any]:
    """Field name -> default value (nested sections as dicts; ``MISSING`` for required fields)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def describe(cls: type, values: dict[str, Any], prefix: str, defaults: dict[str, Any] | None = None) -> list[str]:
    """Lines ``<prefix>.<field> = <value>  (default <d>)`` plus the field's help, for every field of
    ``cls``; ``values`` are the params.yaml settings, ``defaults`` those of the enclosing section. A
    nested section (also one that may be null) is listed field by field unless it is null."""
    defaults = defaults_of(cls) if defaults is None else defaults
    docs, hints, lines = field_help(cls), typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        default = defaults.get(f.name, dataclasses.MISSING)
        section = section_class(hints[f.name])
        if section is not None and default is not None and values.get(f.name, {}) is not None:
            lines += describe(section, values.get(f.name) or {}, f"{prefix}.{f.name}", default)
            continue
        if f.name in values:
            differs = default is not dataclasses.MISSING and values[f.name] != default
            shown = f"{values[f.name]!r}" + (f"  (default {default!r})" if differs else "")
        else:
            shown = "(required, missing)" if default is dataclasses.MISSING else f"{default!r}  (default)"
        lines.append(f"{prefix}.{f.name} = {shown}\n    {' '.join(docs[f.name].split())}")
    return lines


def parts(name: str, model: str | None, data: dict[str, Any]) -> list[tuple[type, str]]:
    """``(config class, dotted section)`` of each part of section ``name`` that ``m3 params`` lists:
    one per model for ``features`` (default: every adapter) and ``bank`` (default: those in params)."""
    if name not in LISTED:
        raise typer.BadParameter(f"unknown section {name!r}; choose from {', '.join(LISTED)}")
    if name == "features":
        from pipeline.features.models import available, model_class

        return [(model_class(m, "model").config_class, f"features.{m}") for m in ([model] if model else available())]
    if name == "bank":
        models = [model] if model else list(data.get("bank") or {}) or ["<model>"]
        return [(BankConfig, f"bank.{m}") for m in models]
    if model is not None:
        raise typer.BadParameter(f"section {name!r} is not per model; give only the section")
    return [(SECTIONS[name], name)]


@reports_errors
def cli(
    section: str | None = typer.Argument(None, help=f"a section ({', '.join(LISTED)}); default: all"),
    model: str | None = typer.Argument(None, help="features and bank: only this model's section"),
    params: Path = PARAMS,
) -> None:
    """List every option of the stage and feature adapter sections: value in params.yaml, default and help."""
    data = load_params(params)
    for name in [section] if section else LISTED:
        for cls, dotted in parts(name, model, data):
            print("\n".join(describe(cls, section_of(data, dotted, str(params)), dotted)))
