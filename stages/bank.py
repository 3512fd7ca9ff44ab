"""Stage ``bank``: one model's features -> its PSC memory bank ``[t, d]`` + stats.

Reads ``params.yaml: bank.<model>`` (:class:`pipeline.reduction.BankConfig`; ``threshold`` is
required, the other keys default). Streams ``data/<scene>/features/<model>.zarr`` view by view
(bounded memory) through :func:`pipeline.reduction.build_bank` (``refine + 1`` passes); with
``verify`` one more pass measures every row's exact best cosine against the final bank. Outputs::

    data/<scene>/bank/<model>.zarr         bank [t, d] (raw-scale feature vectors: centres and rows, bank.dtype) + provenance attrs
    data/<scene>/bank/<model>.stats.json   N, t, compression, coverage, min/mean best cosine, seconds, peak RAM

The provenance records the features' ``config_hash``/``inputs_hash``; consumers call
:func:`pipeline.reduction.check_bank_matches` to refuse a bank built from other features.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import typer
from tqdm import tqdm

from pipeline import M3Error, logger
from pipeline.bankstore import bank_hash, save_bank
from pipeline.config import PARAMS_FILE, from_dict, load_params, to_dict
from pipeline.io import config_hash, provenance, write_json
from pipeline.reduction import BankConfig, build_bank, coverage_stats, n_passes
from pipeline.scene import Scene
from stages.common import PARAMS_HELP, SCENE_HELP, override, reports_errors

log = logger.getChild("bank")


def load_config(model: str, params: Path = PARAMS_FILE) -> BankConfig:
    """``bank.<model>`` of ``params`` as a :class:`BankConfig` (unknown keys are errors)."""
    section = (load_params(params).get("bank") or {}).get(model)
    where = f"{Path(params).name}: bank.{model}"
    if not isinstance(section, dict) or "threshold" not in section:
        raise M3Error(f"{where}: no threshold for model '{model}'; add `bank: {{{model}: {{threshold: 0.8}}}}` to {params}")
    return from_dict(BankConfig, section, where)


RUN_STATS = ("seconds", "verify_seconds", "peak_ram_mb")


def stats_path(scene: Scene, model: str) -> Path:
    return scene.bank_dir / f"{model}.stats.json"


def _rows(store: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(features [h*w, d] fp16, valid [h*w])`` of every view, in view order."""
    for _, feats, valid in store.iter_views():
        yield feats.reshape(-1, feats.shape[-1]), valid.reshape(-1)


def _bar(store: Any, desc: str, passes: int = 1) -> tqdm:
    h, w, _ = store.shape
    return tqdm(total=passes * store.n_views * h * w, desc=desc, unit="row", unit_scale=True)


def run(config: BankConfig, scene: Scene, model: str) -> dict[str, Any]:
    """Build ``scene``'s bank for ``model``; writes the zarr bank and stats; returns the stats."""
    from pipeline.featurestore import FeatureStore

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
            raise M3Error(f"{path}: bank covers only {stats['coverage']:.6f} of the rows (bug); report it with the stats")
    features = {k: feats_prov[k] for k in ("config_hash", "inputs_hash")}
    prov = provenance(
        "bank", {"model": model, **to_dict(config)}, config_hash(features),
        features=features, bank_hash=bank_hash(result.bank), model=model,
    )
    # the artifact holds only what its inputs determine (a recompute is byte-identical);
    # run timings and RAM go to the stats JSON beside it
    content = {k: v for k, v in stats.items() if k not in RUN_STATS}
    save_bank(scene.bank_path(model), result.bank, {"provenance": prov, "stats": content}, config.chunk_rows)
    stats["provenance"] = prov
    write_json(stats_path(scene, model), stats)
    log.info(
        "%s/%s: %d rows -> t=%d (x%.1f), coverage %.4f, min/mean best cosine %.3f/%.3f, %.1f s",
        scene.name, model, stats["N"], stats["t"], stats["compression"], stats["coverage"],
        stats["min_best_cosine"], stats["mean_best_cosine"], stats["seconds"],
    )
    return stats


@reports_errors
def cli(
    scene: str = typer.Argument(..., help=SCENE_HELP),
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="model(s) to bank (default: every model in params.yaml `models`)"),
    threshold: Optional[float] = typer.Option(None, help="cosine every row must reach with some bank entry (overrides bank.<model>.threshold)"),
    chunk_rows: Optional[int] = typer.Option(None, help="rows per streamed chunk (search batch and greedy pass size)"),
    dtype: Optional[str] = typer.Option(None, help="stored bank dtype: float16 | float32"),
    device: Optional[str] = typer.Option(None, help="FAISS index device: auto | cpu | cuda"),
    verify: Optional[bool] = typer.Option(None, "--verify/--no-verify", help="extra pass measuring each row's exact best cosine"),
    refine: Optional[int] = typer.Option(None, help="re-centring passes before the final cover pass (0: one pass, entries are input rows)"),
    params: Path = typer.Option(PARAMS_FILE, help=PARAMS_HELP),
) -> None:
    """Reduce a scene's features to a PSC memory bank per model (every row within the threshold of an entry).

    Writes data/<scene>/bank/<model>.zarr and data/<scene>/bank/<model>.stats.json.
    """
    models = model or list(load_params(params).get("models") or [])
    if not models:
        raise M3Error(f"{params}: no `models` listed; add one or pass --model")
    for name in models:
        cfg = override(load_config(name, params), threshold=threshold, chunk_rows=chunk_rows, dtype=dtype, device=device, verify=verify, refine=refine)
        run(from_dict(BankConfig, to_dict(cfg), f"m3 bank options ({name})"), Scene.resolve(scene), name)
