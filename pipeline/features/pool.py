"""The Ray executor of the features stage: a pool of actors, each holding one loaded model.

The driver (the stage's process) reads each view's image file and sends its bytes to an actor,
which decodes it and runs :func:`pipeline.features.extract.extract_view` (the same code as the
local executor); results come back to the driver and are yielded in view order, so the stage
writes the store exactly as a local run does. Workers need the project installed but no scene
files (nodes share no disk).

Failures: an actor whose worker process or node dies is restarted by Ray (its model reloaded; up
to ``retries`` times per actor) and its views in flight are retried; an error raised while extracting
a view (an unreadable image, a missing checkpoint) is re-raised on the driver as the same
exception the local executor raises.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.cluster.config import ClusterConfig
from pipeline.cluster.session import alive_actors, import_ray
from pipeline.core.errors import M3Error
from pipeline.core.runtime import resolve_device
from pipeline.features.extract import Job, Records, Result, extract_view
from pipeline.features.models import FeatureModel, build_model, model_class

log = logging.getLogger(__name__)


class FeatureWorker:
    """Body of one Ray actor: one model, built on first use (a restarted actor loads it again)."""

    def __init__(self, model_name: str, config: dict[str, Any], device: str, threads: int) -> None:
        self._args = (model_name, config, device)
        self._model: FeatureModel | None = None
        torch.set_num_threads(threads)

    def _loaded(self) -> FeatureModel:
        if self._model is None:
            name, config, device = self._args
            self._model = build_model(name, config, resolve_device(device, "features"))
        return self._model

    def ident(self) -> dict[str, Any]:
        """Who this actor is: Ray actor id (hex), node IP, pid."""
        import ray

        return {
            "actor_id": ray.get_runtime_context().get_actor_id(),
            "node": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
        }

    def layout(self, height: int, width: int) -> tuple[int, int, int]:
        model = self._loaded()
        h, w = model.grid_size(height, width)
        return h, w, model.dim

    def extract(self, path: str, data: bytes, width: int, height: int) -> tuple[np.ndarray, np.ndarray, Records, float]:
        t0 = time.perf_counter()
        features, valid, records = extract_view(self._loaded(), Path(path), width, height, data)
        return features, valid, records, time.perf_counter() - t0


class RayExtractor:
    """A pool of ``config.actors`` Ray actors for model ``model_name`` (see the module docstring).

    Needs a Ray connection (:func:`pipeline.cluster.session.ray_session`); :meth:`close` (or leaving
    the ``with`` block) ends the actors.
    """

    def __init__(self, model_name: str, config: dict[str, Any], device: str, cluster: ClusterConfig) -> None:
        self.ray = import_ray()
        self.model_name, self.cluster = model_name, cluster
        self.has_mask = bool(model_class(model_name).has_mask)
        self._check_resources()
        actor = self.ray.remote(
            num_cpus=cluster.actor_cpus,
            num_gpus=cluster.actor_gpus,
            max_restarts=cluster.retries,  # a dead worker's actor comes back (on another node if need be)
            max_task_retries=-1,  # its views wait for it: unavailable while it restarts is no failure
            scheduling_strategy="SPREAD",  # one actor per node before two on one
        )(FeatureWorker)
        threads = max(1, int(cluster.actor_cpus))
        self.actors = [actor.remote(model_name, config, device, threads) for _ in range(cluster.actors)]
        workers = self.workers()
        self._ids = [info["actor_id"] for info in workers]
        self._live, self._live_at = len(self.actors), 0.0
        log.info("features.%s: %d Ray actors on %s", model_name, len(workers), sorted({w["node"] for w in workers}))

    def _check_resources(self) -> None:
        total = self.ray.cluster_resources()
        for key, need in (("CPU", self.cluster.actor_cpus), ("GPU", self.cluster.actor_gpus)):
            if need > total.get(key, 0.0):
                raise M3Error(
                    f"cluster.actor_{key.lower()}s: each actor needs {need:g} {key}(s) but the Ray cluster "
                    f"has {total.get(key, 0.0):g}; lower it or add nodes that have them"
                )

    def workers(self) -> list[dict[str, Any]]:
        """Per actor: actor id, node, pid."""
        return self.ray.get([a.ident.remote() for a in self.actors])

    def layout(self, height: int, width: int) -> tuple[int, int, int, bool]:
        """Loads the model on every actor (in parallel); ``(h, w, d, has_mask)``."""
        shapes = set(self._get([a.layout.remote(height, width) for a in self.actors]))
        if len(shapes) != 1:
            raise M3Error(f"features.{self.model_name}: actors built different models {sorted(shapes)}")
        (h, w, d) = shapes.pop()
        return h, w, d, self.has_mask

    def _get(self, refs: Any, view: str | None = None) -> Any:
        """``ray.get`` re-raising a task's own exception as it is (the local executor's error)."""
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, Exception):
                raise cause from None
            raise
        except self.ray.exceptions.RayActorError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise M3Error(
                f"features.{self.model_name}: {view or 'a view'}: the Ray worker extracting it died "
                f"{self.cluster.retries + 1} times ({first}); check the nodes' memory, or extract it with "
                "cluster.executor: local"
            ) from exc

    def extract(
        self, jobs: list[Job], width: int, height: int, waiting: Callable[[], None] | None = None
    ) -> Iterator[Result]:
        """Send ``jobs`` to the actors, at most 2 in flight per actor and ``4 x actors`` results held
        (out-of-order ones wait for the earlier), and yield the results in the order of ``jobs``;
        ``waiting()`` is called every second spent waiting (e.g. for a restarting actor)."""
        limit = 4 * len(self.actors)
        pending: dict[Any, tuple[int, int, Path]] = {}  # ref -> (i, actor, path)
        done: dict[int, Result] = {}
        load = [0] * len(self.actors)
        queue = list(jobs)
        order = [i for i, _ in jobs]
        for next_i in order:
            while next_i not in done:
                while queue and min(load) < 2 and len(pending) + len(done) < limit:
                    k = load.index(min(load))
                    i, path = queue.pop(0)
                    ref = self.actors[k].extract.remote(str(path), Path(path).read_bytes(), width, height)
                    pending[ref], load[k] = (i, k, Path(path)), load[k] + 1
                ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=1.0)
                if not ready:
                    if waiting is not None:
                        waiting()
                    continue
                (ref,) = ready
                i, k, path = pending.pop(ref)
                load[k] -= 1
                features, valid, records, seconds = self._get(ref, view=str(path))
                done[i] = (i, features, valid, records, seconds)
            yield done.pop(next_i)

    def live_workers(self) -> int:
        """Actors alive now (not restarting), read at most once a second."""
        if time.monotonic() - self._live_at > 1.0:
            self._live, self._live_at = alive_actors(self.ray, self._ids), time.monotonic()
        return self._live

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

    def __enter__(self) -> RayExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
