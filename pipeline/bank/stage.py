"""The ``bank`` stage's work on one scene and model: stream the features, build and verify the bank, store it.

Streams ``<scene>/features/<model>.zarr`` view by view (bounded memory) through
:func:`pipeline.bank.reduction.build_bank` (``refine + 1`` passes); with ``verify`` one more pass
measures every row's exact best cosine against the final bank. The bank's provenance records the
features' config, inputs and code hashes (:func:`pipeline.bank.store.check_bank_matches` refuses a
bank built from other features) and its content hash.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.bank.config import BankConfig
from pipeline.bank.reduction import build_bank, coverage_stats, n_passes
from pipeline.bank.store import FEATURES_IDENTITY, bank_hash, save_bank
from pipeline.core.code import code_hash
from pipeline.core.config import to_dict
from pipeline.core.errors import M3Error
from pipeline.core.io import config_hash, provenance, write_json
from pipeline.core.progress import progress
from pipeline.core.scene import Scene
from pipeline.features.store import FeatureStore

log = logging.getLogger(__name__)

RUN_STATS = ("seconds", "verify_seconds", "peak_ram_mb")
METRICS = ("N", "t", "compression", "coverage", "min_best_cosine", "mean_best_cosine", "seconds", "peak_ram_mb")
"""What ``stats/bank-<model>.json`` (DVC metrics) holds; the bank's attrs keep the full stats and provenance."""


def _rows(store: FeatureStore) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(features [h*w, d] fp16, valid [h*w])`` of every view, in view order."""
    for _, feats, valid in store.iter_views():
        yield feats.reshape(-1, feats.shape[-1]), valid.reshape(-1)


def _bar(store: FeatureStore, desc: str, passes: int = 1) -> Any:
    h, w, _ = store.shape
    return progress(total=passes * store.n_views * h * w, desc=desc, unit="row", unit_scale=True)


def bank_scene(config: BankConfig, scene: Scene, model: str) -> dict[str, Any]:
    """Build ``scene``'s bank for ``model``; writes ``bank/<model>.zarr`` and
    ``stats/bank-<model>.json``; returns the full stats."""
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
    write_json(scene.stats_path("bank", model), {k: stats[k] for k in METRICS})
    log.info(
        "%s/%s: %d rows -> t=%d (x%.1f), coverage %.4f, min/mean best cosine %.3f/%.3f, %.1f s", scene.name,
        model, stats["N"], stats["t"], stats["compression"], stats["coverage"], stats["min_best_cosine"],
        stats["mean_best_cosine"], stats["seconds"],
    )  # fmt: skip
    return stats
