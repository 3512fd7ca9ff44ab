"""Stage ``features``: undistorted views -> dense foundation-model features (zarr) + stats.

Reads ``params.yaml: features.<model>`` (the adapter's ``config_class``: ``m3 params features``
lists the keys; ``--<model>.<key>`` options override them). For every registered view of
``data/<scene>/colmap`` the adapter's dense map is written, one view at a time, into
``data/<scene>/features/<model>.zarr`` (layout: :mod:`pipeline.features.store`)::

    data/<scene>/features/<model>.zarr          [V, h, w, d] float16 (+ valid [V, h, w]), attrs,
                                                the model's records (<name>.json, e.g. llama3 captions)
    data/<scene>/stats/features-<model>.json    views, seconds per view, bytes on disk (DVC metrics)

The work is :func:`pipeline.features.stage.extract_scene`. The store is built as
``.<model>.zarr.partial`` and renamed when complete: a killed run resumes
there (only if config and inputs are unchanged), a finished store with the same provenance is
kept as it is, and any config or input change recomputes every view.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from pipeline.cluster.config import ClusterConfig
from pipeline.core.config import to_dict
from pipeline.core.errors import M3Error
from pipeline.features.adapter_config import ADAPTER_CONFIGS
from stages.command import PARAMS, SCENE, Options, command, scene_target

FeaturesOptions = dataclasses.make_dataclass(
    "FeaturesOptions",
    [(name, cls, dataclasses.field(default_factory=cls)) for name, cls in ADAPTER_CONFIGS.items()],
    bases=(ClusterConfig,),
    frozen=True,
)
"""The options of ``m3 features``: the ``cluster`` section's fields and every adapter's section as
``--<model>.<key>`` (each overrides ``params.yaml: features.<model>``)."""


def __getattr__(name: str) -> Any:
    """``run``, the stage: :func:`pipeline.features.stage.extract_scene` itself (a thin alias, options
    parsed below), imported on first use, so that ``m3 features --help`` loads no torch."""
    if name == "run":
        from pipeline.features.stage import extract_scene

        return extract_scene
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@command(FeaturesOptions)
def cli(
    options: Options[Any],
    scene: str = SCENE,
    model: str | None = typer.Option(
        None, help="model to extract (default: every model listed under models: in params)"
    ),
    device: str = typer.Option("auto", help="auto (CUDA when available) | cpu | cuda"),
    params: Path = PARAMS,
) -> None:
    """Extract dense foundation-model features of every registered view into data/<scene>/features/<model>.zarr.

    Resumes an interrupted run; keeps a finished store made by the same config and inputs. The
    cluster options choose the executor (local, or a pool of Ray actors); they never change the store.
    The --<model>.<key> options override that model's params.yaml section (m3 params features lists them).
    """
    from pipeline.features.models import listed_models, model_class
    from pipeline.features.stage import extract_scene as run

    target, stage_model = scene_target(scene)
    names = [model or stage_model] if model or stage_model else listed_models(params)
    for name in names:
        model_class(name, "--model")  # a misspelled name: the closest registered one
    unused = sorted(set(options.given) & set(ADAPTER_CONFIGS) - set(names))
    if unused:
        raise M3Error(f"--{unused[0]}.<key> options given, but model {unused[0]} is not extracted; drop them")
    cluster = options.fields_of(ClusterConfig).load("cluster", params)
    for name in names:
        conf = options.section(name, ADAPTER_CONFIGS[name]).load(f"features.{name}", params)
        run(to_dict(conf), target, name, device=device, cluster=cluster)
