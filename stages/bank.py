"""Stage ``bank``: one model's features -> its PSC memory bank ``[t, d]`` + stats.

Reads ``params.yaml: bank.<model>`` (:class:`pipeline.bank.config.BankConfig`; ``threshold`` is
required, the other keys default). Streams ``data/<scene>/features/<model>.zarr`` view by view
(bounded memory) through :func:`pipeline.bank.reduction.build_bank` (``refine + 1`` passes); with
``verify`` one more pass measures every row's exact best cosine against the final bank. Outputs::

    data/<scene>/bank/<model>.zarr         bank [t, d] (raw-scale vectors: centres and rows, bank.dtype),
                                           attrs: provenance and the full stats
    data/<scene>/stats/bank-<model>.json   N, t, compression, coverage, min/mean best cosine, seconds, peak RAM

The provenance records the features' config, inputs and code hashes; consumers call
:func:`pipeline.bank.store.check_bank_matches` to refuse a bank built from other features.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import typer
from tqdm import tqdm

from pipeline.bank.config import BankConfig
from pipeline.bank.reduction import build_bank, coverage_stats, n_passes
from pipeline.bank.store import FEATURES_IDENTITY, bank_hash, save_bank
from pipeline.core.code import code_hash
from pipeline.core.config import load_params, section_of, to_dict
from pipeline.core.errors import M3Error
from pipeline.core.io import config_hash, provenance, write_json
from pipeline.core.scene import Scene
from pipeline.features.models import listed_models, model_class
from stages.command import PARAMS, SCENE, Options, command, scene_target

log = logging.getLogger(__name__)


RUN_STATS = ("seconds", "verify_seconds", "peak_ram_mb")
METRICS = ("N", "t", "compression", "coverage", "min_best_cosine", "mean_best_cosine", "seconds", "peak_ram_mb")
"""What ``stats/bank-<model>.json`` (DVC metrics) holds; the bank's attrs keep the full stats and provenance."""


def stats_path(scene: Scene, model: str) -> Path:
    return scene.stats_path("bank", model)


def _rows(store: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(features [h*w, d] fp16, valid [h*w])`` of every view, in view order."""
    for _, feats, valid in store.iter_views():
        yield feats.reshape(-1, feats.shape[-1]), valid.reshape(-1)


def _bar(store: Any, desc: str, passes: int = 1) -> tqdm:
    h, w, _ = store.shape
    return tqdm(total=passes * store.n_views * h * w, desc=desc, unit="row", unit_scale=True)


def run(config: BankConfig, scene: Scene, model: str) -> dict[str, Any]:
    """Build ``scene``'s bank for ``model``; writes the zarr bank and stats; returns the stats."""
    from pipeline.features.store import FeatureStore

    path = scene.features_path(model)
    if not path.exists():
        raise M3Error(f"{path}: no features; run `m3 features {scene.name} --model {model}` first")
    store = FeatureStore.open(path)
    feats_prov = store.attrs.get("provenance") or {}
    if not feats_prov.get("config_hash") or not feats_prov.get("inputs_hash"):
        raise M3Error(f"{path}: features without provenance; rerun `m3 features {scene.name} --model {model}`")
    with _bar(store, f"bank {model}", n_passes(config)) as bar:
        result = build_bank(lambda: _rows(store), config, progress=bar.update)
    stats = dict(result.stats)
    if stats["t"] == 0:
        raise M3Error(f"{path}: no valid feature rows (all masked or zero); check the features of {scene.name}")
    if config.verify:
        with _bar(store, f"verify {model}") as bar:
            stats.update(coverage_stats(result.bank, _rows(store), config, progress=bar.update))
        if stats["coverage"] < 1.0:
            raise M3Error(
                f"{path}: bank covers only {stats['coverage']:.6f} of the rows (bug); report it with the stats"
            )
    features = {k: feats_prov.get(k) for k in FEATURES_IDENTITY}
    prov = provenance(
        "bank",
        {"model": model, **to_dict(config)},
        config_hash(features),
        code_hash(__name__),
        features=features,
        bank_hash=bank_hash(result.bank),
        model=model,
    )
    # the artifact holds only what its inputs determine (a recompute is byte-identical);
    # run timings and RAM go to the stats JSON beside it
    content = {k: v for k, v in stats.items() if k not in RUN_STATS}
    save_bank(scene.bank_path(model), result.bank, {"provenance": prov, "stats": content}, config.chunk_rows)
    write_json(stats_path(scene, model), {k: stats[k] for k in METRICS})
    log.info(
        "%s/%s: %d rows -> t=%d (x%.1f), coverage %.4f, min/mean best cosine %.3f/%.3f, %.1f s", scene.name,
        model, stats["N"], stats["t"], stats["compression"], stats["coverage"], stats["min_best_cosine"],
        stats["mean_best_cosine"], stats["seconds"],
    )  # fmt: skip
    return stats


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
    target, stage_model = scene_target(scene)
    models = list(model) if model else [stage_model] if stage_model else listed_models(params)
    for name in models:
        model_class(name, "--model")
        if name not in section_of(load_params(params), "bank", str(params)):
            raise M3Error(f"{params}: no bank.{name} section; add one with its threshold (e.g. `bank: {{{name}: "
                          "{threshold: 0.8}}`)")  # fmt: skip
        config = options.load(f"bank.{name}", params)
        run(config, target, name)
