"""Registry of foundation-model adapters.

Each adapter is one module in this package that defines a :class:`FeatureModel` subclass, with
the frozen dataclass of its ``params.yaml: features.<name>`` section as ``config_class``, and
decorates it with :func:`register`. Modules are imported on first use, so adding a model is
adding its module and its config class (:mod:`pipeline.features.adapter_config`, torch-free): no
stage or pipeline code changes (``m3 params features`` and the ``--<name>.<key>`` options of ``m3
features`` come from the config class).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.core.config import from_dict, load_params, section_of
from pipeline.core.errors import M3Error
from pipeline.features.adapter_config import ADAPTER_CONFIGS
from pipeline.features.models.base import FeatureMap, FeatureModel

_REGISTRY: dict[str, type[FeatureModel]] = {}


def register(name: str) -> Callable[[type[FeatureModel]], type[FeatureModel]]:
    """Class decorator: make an adapter available as ``name`` in ``params.yaml`` (its section is
    its ``config_class``; ``default_conf`` is set to that class's defaults as a dict)."""

    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):  # it ends DVC stage names: features@<scene>-<model>
        raise ValueError(f"model name '{name}': use lower-case letters, digits and '_'")

    def deco(cls: type[FeatureModel]) -> type[FeatureModel]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name '{name}' registered twice")
        if ADAPTER_CONFIGS.get(name) is not cls.config_class:
            raise ValueError(
                f"model '{name}': list its config_class in pipeline.features.adapter_config.ADAPTER_CONFIGS"
            )
        cls.name = name
        cls.default_conf = dataclasses.asdict(cls.config_class())
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")


def available() -> list[str]:
    """Names of all registered adapters."""
    _load_all()
    return sorted(_REGISTRY)


def model_class(name: str, where: str = "model") -> type[FeatureModel]:
    """The adapter registered as ``name``; :class:`M3Error` (``where``: the setting that named it)
    with the closest registered name otherwise."""
    _load_all()
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise M3Error(f"{where}: unknown model '{name}'; {hint}registered models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def listed_models(params: Path) -> list[str]:
    """The ``models`` list of the params file, each a registered adapter; the names under the
    ``features``, ``bank`` and ``train.query_dims`` sections must be registered adapters too (a
    misspelled name is an error naming the closest one, never a setting silently left out)."""
    data = load_params(params)
    models = data.get("models") or []
    if not models:
        raise M3Error(f"{params}: no models listed under models:; add one (e.g. `models: [clip]`)")
    for name in models:
        model_class(name, f"{params}: models")
    for section in ("features", "bank"):
        for name in section_of(data, section, f"{params}: {section}"):
            model_class(name, f"{params}: {section}.{name}")
    for name in section_of(data, "train.query_dims", f"{params}: train.query_dims"):
        model_class(name, f"{params}: train.query_dims.{name}")
    return list(models)


def resolve_conf(name: str, user: dict[str, Any] | None) -> dict[str, Any]:
    """The conf adapter ``name`` receives: the user's ``features.<name>`` section (None: all defaults)
    built as its ``config_class`` (unknown keys, types and ranges are checked; a partial nested
    section keeps its other defaults), as a plain dict."""
    where = f"params.yaml: features.{name}"
    if user is not None and not isinstance(user, dict):
        raise M3Error(f"{where}: expected a mapping of settings, got {user!r}")
    return dataclasses.asdict(from_dict(model_class(name, "features").config_class, user or {}, where))


def build_model(name: str, user_conf: dict[str, Any] | None, device: str | torch.device = "cpu") -> FeatureModel:
    """Instantiate adapter ``name`` (weights loaded per its conf)."""
    return model_class(name)(resolve_conf(name, user_conf), device)


__all__ = [
    "FeatureMap",
    "FeatureModel",
    "available",
    "build_model",
    "listed_models",
    "model_class",
    "register",
    "resolve_conf",
]
