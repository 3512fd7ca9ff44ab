"""The ``features`` stage's work on one scene and model: every view's dense map into a zarr store.

For every registered view of ``<scene>/colmap`` the adapter's dense map is written, one view at a
time, into ``<scene>/features/<model>.zarr`` (layout: :mod:`pipeline.features.store`) by the
executor ``cluster.executor`` names (this process's model, or a pool of Ray actors: the store is
the same). The store is built as ``.<model>.zarr.partial`` and renamed when complete: a killed run
resumes there (only if config and inputs are unchanged), a finished store with the same provenance
(and every chunk intact) is kept as it is, and any config or input change recomputes every view.
Run figures go to ``<scene>/stats/features-<model>.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cluster.config import ClusterConfig
from pipeline.core.code import code_hash
from pipeline.core.errors import M3Error
from pipeline.core.io import canonical_json, hash_files, provenance, write_json
from pipeline.core.progress import progress
from pipeline.core.runtime import resolve_device
from pipeline.core.scene import Scene, View, load_views
from pipeline.features.extract import Extractor, LocalExtractor
from pipeline.features.models import FeatureModel, build_model, model_class, resolve_conf
from pipeline.features.store import FeatureStore, matches, resume_or_create, store_bytes

log = logging.getLogger(__name__)


def inputs_hash(views: list[View]) -> str:
    """Hash of the undistorted images (bytes) and their cameras (name, size, K)."""
    missing = [v.image_path for v in views if not Path(v.image_path).is_file()]
    if missing:
        raise M3Error(f"{missing[0]}: undistorted image missing; rerun the poses stage")
    cams = [{"name": v.name, "size": [v.width, v.height], "K": np.round(v.K, 6).tolist()} for v in views]
    images = hash_files([Path(v.image_path) for v in views])
    return hashlib.sha256(f"{images}:{canonical_json(cams)}".encode()).hexdigest()[:16]


def extract_scene(
    config: dict[str, Any],
    scene: Scene,
    model_name: str,
    *,
    device: str = "auto",
    views: list[View] | None = None,
    model: FeatureModel | None = None,
    cluster: ClusterConfig | None = None,
    on_view: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Features of every view of ``scene`` for ``model_name``; returns the stats.

    ``config`` is the user's ``features.<model>`` section (checked and completed by the adapter's
    ``config_class``: :func:`~pipeline.features.models.resolve_conf`).
    ``views`` (default: :func:`load_views`) and ``model`` (default: built from ``config``; local
    executor only) can be injected. ``cluster.executor`` picks where views are extracted (default
    local); the store is the same either way. ``on_view(i)`` is called after view ``i`` is stored.
    """
    start = time.perf_counter()
    conf = resolve_conf(model_name, config)
    views = load_views(scene) if views is None else views
    if not views:
        raise M3Error(f"{scene.sparse_dir}: no registered views; rerun `m3 poses {scene.name}`")
    names = [v.name for v in views]
    height, width = views[0].height, views[0].width
    prov = provenance("features", {"model": model_name, **conf}, inputs_hash(views), code_hash(__name__))
    final = scene.features_path(model_name)
    stats_path = scene.stats_path("features", model_name)
    if matches(final, {"provenance": prov}, names):
        log.info("%s: up to date (same config and inputs), kept", final)
        return _stats(final, model_name, names, 0, 0.0, time.perf_counter() - start, stats_path)

    with _extractor(model_name, config, device, model, cluster or ClusterConfig()) as extractor:
        h, w, dim, has_mask = extractor.layout(height, width)
        attrs = {
            "model": model_name,
            "checkpoint": conf.get("checkpoint"),
            "weights": conf.get("weights"),
            "input_size": conf.get("input_size"),
            "feature_stride": [height / h, width / w],  # pixels of the view per feature cell (y, x)
            "grid": [h, w],
            "image_size": [height, width],
            "dim": dim,
            "config": prov["config"],
            "config_hash": prov["config_hash"],
            "inputs_hash": prov["inputs_hash"],
            "provenance": prov,
            "records": list(model_class(model_name).record_names),
        }
        store = resume_or_create(final, names, h, w, dim, attrs, has_mask)
        todo = [(i, Path(views[i].image_path)) for i, done in enumerate(store.done_mask()) if not done]
        compute = 0.0
        bar = progress(total=len(names), initial=len(names) - len(todo), desc=f"features {model_name}", unit="view")

        def show_workers(refresh: bool = True) -> None:  # live workers, also while waiting for one
            bar.set_postfix(workers=extractor.live_workers(), refresh=refresh)

        with bar:
            for i, features, valid, records, seconds in extractor.extract(todo, width, height, show_workers):
                store.write(i, features, valid, records)
                compute += seconds
                show_workers(refresh=False)
                bar.update(1)
                if on_view is not None:
                    on_view(i)
    store.finalize(final)
    return _stats(final, model_name, names, len(todo), compute, time.perf_counter() - start, stats_path)


@contextlib.contextmanager
def _extractor(
    model_name: str, config: dict[str, Any], device: str, model: FeatureModel | None, cluster: ClusterConfig
) -> Iterator[Extractor]:
    """The executor ``cluster.executor`` names: this process's model, or a pool of Ray actors."""
    if cluster.executor == "local":
        yield LocalExtractor(model or build_model(model_name, config, resolve_device(device, "features")))
        return
    from pipeline.cluster.session import ray_session
    from pipeline.features.pool import RayExtractor

    with ray_session(cluster), RayExtractor(model_name, config, device, cluster) as pool:
        yield pool


def _stats(
    final: Path, model_name: str, names: list[str], computed: int, compute_s: float, total_s: float, stats_path: Path
) -> dict[str, Any]:
    store = FeatureStore.open(final)
    h, w, d = store.shape
    stats: dict[str, Any] = {
        "views": store.n_views,
        "computed_views": computed,
        "map_size": [h, w, d],
        "seconds_per_view": round(compute_s / computed, 4) if computed else None,
        "seconds": round(total_s, 2),
        "bytes_on_disk": store_bytes(final),
    }
    write_json(stats_path, {k: v for k, v in stats.items() if k != "map_size"})
    log.info(
        "%s: %d views (%d computed), map %dx%dx%d, %.1f MB",
        final,
        stats["views"],
        computed,
        h,
        w,
        d,
        stats["bytes_on_disk"] / 1e6,
    )
    return stats
