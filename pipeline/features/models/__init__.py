"""Registry of foundation-model adapters.

Each adapter is one module in this package that defines a :class:`FeatureModel` subclass and
decorates it with :func:`register`. Modules are imported on first use, so adding a model is
adding a file: no stage or pipeline code changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import torch

from pipeline.core.config import merge_conf
from pipeline.core.errors import M3Error
from pipeline.features.models.base import FeatureMap, FeatureModel

_REGISTRY: dict[str, type[FeatureModel]] = {}


def register(name: str) -> Callable[[type[FeatureModel]], type[FeatureModel]]:
    """Class decorator: make an adapter available as ``name`` in ``params.yaml``."""

    def deco(cls: type[FeatureModel]) -> type[FeatureModel]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name '{name}' registered twice")
        cls.name = name
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


def model_class(name: str) -> type[FeatureModel]:
    _load_all()
    if name not in _REGISTRY:
        raise M3Error(f"unknown model '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def resolve_conf(name: str, user: dict[str, Any] | None) -> dict[str, Any]:
    """``default_conf`` of ``name`` with the user's ``features.<name>`` section merged over it."""
    return merge_conf(model_class(name).default_conf, user, f"params.yaml: features.{name}")


def build_model(name: str, user_conf: dict[str, Any] | None, device: str | torch.device = "cpu") -> FeatureModel:
    """Instantiate adapter ``name`` (weights loaded per its conf)."""
    return model_class(name)(resolve_conf(name, user_conf), device)


__all__ = ["FeatureMap", "FeatureModel", "available", "build_model", "model_class", "register", "resolve_conf"]
