"""Stage ``bank``: one model's features -> its PSC memory bank ``[t, d]`` + stats.

Reads ``params.yaml: bank.<model>`` (:class:`pipeline.bank.config.BankConfig`; ``threshold`` is
required, the other keys default). Streams ``data/<scene>/features/<model>.zarr`` view by view
(bounded memory) through :func:`pipeline.bank.reduction.build_bank` (``refine + 1`` passes); with
``verify`` one more pass measures every row's exact best cosine against the final bank
(:func:`pipeline.bank.stage.bank_scene`). Outputs::

    data/<scene>/bank/<model>.zarr         bank [t, d] (raw-scale vectors: centres and rows, bank.dtype),
                                           attrs: provenance and the full stats
    data/<scene>/stats/bank-<model>.json   N, t, compression, coverage, min/mean best cosine, seconds, peak RAM

The provenance records the features' config, inputs and code hashes; consumers call
:func:`pipeline.bank.store.check_bank_matches` to refuse a bank built from other features.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pipeline.bank.config import BankConfig
from pipeline.core.config import load_params, section_of
from pipeline.core.errors import M3Error
from stages.command import PARAMS, SCENE, Options, command, scene_target

if TYPE_CHECKING:
    from pipeline.core.scene import Scene


def run(config: BankConfig, scene: Scene, model: str) -> dict[str, Any]:
    """Build ``scene``'s bank for ``model`` (:func:`~pipeline.bank.stage.bank_scene`); returns the stats."""
    from pipeline.bank.stage import bank_scene

    return bank_scene(config, scene, model)


@command(BankConfig)
def cli(
    options: Options[BankConfig],
    scene: str = SCENE,
    model: list[str] | None = typer.Option(
        None, "--model", "-m", help="model(s) to bank (default: every model in params.yaml `models`)"
    ),
    params: Path = PARAMS,
) -> None:
    """Reduce a scene's features to a PSC memory bank per model (every row within the threshold of an entry).

    Writes data/<scene>/bank/<model>.zarr and data/<scene>/stats/bank-<model>.json.
    """
    from pipeline.features.models import listed_models, model_class

    target, stage_model = scene_target(scene)
    models = list(model) if model else [stage_model] if stage_model else listed_models(params)
    sections = section_of(load_params(params), "bank", str(params))
    for name in models:
        model_class(name, "--model")
        if name not in sections:
            raise M3Error(f"{params}: no bank.{name} section; add one with its threshold (e.g. `bank: {{{name}: "
                          "{threshold: 0.8}}`)")  # fmt: skip
        config = options.load(f"bank.{name}", params)
        run(config, target, name)
