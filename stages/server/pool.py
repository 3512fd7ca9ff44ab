"""Warm scenes: each scene's memory, views, encoders and relevance engines, loaded once and reused.

A :class:`ScenePool` holds one :class:`WarmScene` per scene, loaded at start (the scenes named
on the command line) or on its first request. A scene answers through a :class:`WarmSession`:
a :class:`~pipeline.query.session.QuerySession` built from the scene's cached parts (the
:class:`~pipeline.query.encode.Encoder` per model and relevance settings, the
:class:`~pipeline.query.relevance.GaussianRelevance` engine per model and ``attention_k``, whose
norms and sparse attention are computed once) instead of loading them again.

Reload: before each use a scene compares its model folder's files' ``(size, mtime_ns)`` with
those it loaded; when they changed (a retrain, ``dvc repro``, ``dvc checkout``), their content
hash decides, and a new memory is loaded (the caches emptied) without a restart.

Concurrency: FastAPI runs the sync endpoints in its threadpool. Each scene has one lock, held
around all its torch work (the reload check, the load, every query, render and export), so a
scene answers one request at a time while different scenes answer in parallel; the pool's own
lock only guards its dict of scenes.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from pipeline.core.config import check_scene_name
from pipeline.core.errors import M3Error
from pipeline.core.io import hash_files, read_json
from pipeline.core.runtime import resolve_device
from pipeline.core.scene import DATA_ROOT, Scene, View, load_views
from pipeline.core.threads import CpuThreads
from pipeline.query.config import SelectConfig
from pipeline.query.encode import Encoder, pick_model
from pipeline.query.relevance import GaussianRelevance
from pipeline.query.session import QuerySession, relevance_engine
from pipeline.splat.trained import HEADS_FILE, TrainedMemory

log = logging.getLogger(__name__)

MODEL_FILES = ("config.json", "point_cloud.ply", HEADS_FILE)
"""The files of ``data/<scene>/model/`` a loaded memory is read from (watched for a reload)."""
MAX_ENGINES = 4
"""Relevance engines kept per scene (each holds its norms and caches: up to ``query.cache_mb``)."""


class NotFound(M3Error):
    """A scene, model or view that does not exist (HTTP 404)."""


class Conflict(M3Error):
    """A request the scene cannot answer as it is, e.g. ``ask`` on a memory without VLM tokens (HTTP 409)."""


def model_signature(scene: Scene) -> tuple[tuple[int, int], ...]:
    """``(size, mtime_ns)`` of each of the model folder's :data:`MODEL_FILES` (``(-1, -1)`` when absent)."""
    out = []
    for name in MODEL_FILES:
        try:
            st = (scene.model_dir / name).stat()
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((-1, -1))
    return tuple(out)


class WarmSession(QuerySession):
    """A :class:`~pipeline.query.session.QuerySession` over a :class:`WarmScene`'s loaded memory,
    with its cached encoder and relevance engine (nothing is loaded again)."""

    def __init__(self, warm: WarmScene, config: SelectConfig, section: str = "query"):
        self.scene, self.config, self.section = warm.scene, config, section
        self.memory = warm.memory
        self.model = pick_model(self.memory.models, config.model, section)
        self.encoder = warm.encoder(self.model, config)
        self.engine = warm.engine(self.model, config)


class WarmScene:
    """One scene's loaded memory and registered views, plus its caches (see the module docstring).

    Use it inside ``with warm.lock:`` after :meth:`refresh`.
    """

    def __init__(self, scene: Scene, device: str):
        self.scene, self.device = scene, device
        self.lock = threading.Lock()
        self.signature: tuple[tuple[int, int], ...] | None = None
        self.digest = ""
        self.memory: TrainedMemory
        self.views: list[View] = []
        self._encoders: dict[tuple[Any, ...], Encoder] = {}
        self._engines: dict[tuple[str, int | None, float, float], GaussianRelevance] = {}

    def refresh(self) -> None:
        """Load the memory, or reload it when the model folder's files changed (call with the lock held)."""
        signature = model_signature(self.scene)
        if signature == self.signature:
            return
        if not (self.scene.model_dir / "config.json").is_file():
            raise NotFound(f"{self.scene.model_dir}: no trained model; run `m3 train {self.scene.name}` first")
        digest = hash_files(self.scene.model_dir / n for n in MODEL_FILES if (self.scene.model_dir / n).is_file())
        if digest != self.digest:
            reload = bool(self.digest)
            self.memory = TrainedMemory.load(self.scene, device=self.device)
            self.views = load_views(self.scene)
            self._encoders.clear()
            self._engines.clear()
            self.digest = digest
            log.info("serve: %s %s (%d Gaussians, models %s)", "reloaded" if reload else "loaded",
                     self.scene.name, len(self.memory.means), ", ".join(self.memory.models))  # fmt: skip
        self.signature = signature

    def encoder(self, model: str, config: SelectConfig) -> Encoder:
        """The cached encoder of ``model`` with ``config``'s mode, negatives, scale and vectors file."""
        vectors = self.scene.path_of(config.vectors) if config.vectors else None
        stamp = vectors.stat().st_mtime_ns if vectors is not None and vectors.is_file() else None
        key = (model, config.mode, tuple(config.negatives), config.scale, config.vectors, stamp)
        if key not in self._encoders:
            self._encoders[key] = Encoder.from_store(self.scene, model, config, self.device)
        return self._encoders[key]

    def engine(self, model: str, config: SelectConfig) -> GaussianRelevance:
        """The cached relevance engine of ``model`` with ``config``'s attention_k, tolerance and
        cache_mb (its norms and attention cache computed once)."""
        key = (model, config.attention_k, config.tolerance, config.cache_mb)
        if key not in self._engines and len(self._engines) >= MAX_ENGINES:  # requests choose attention_k:
            del self._engines[next(iter(self._engines))]  # bounded memory, the oldest engine goes
        if key not in self._engines:
            self._engines[key] = relevance_engine(self.memory, model, *key[1:])
        return self._engines[key]

    def session(self, config: SelectConfig, section: str = "query") -> WarmSession:
        """A query session with ``config`` over the loaded memory."""
        if config.model is not None and config.model not in self.memory.models:
            raise NotFound(
                f"model '{config.model}' is not in {self.scene.name}'s memory ({', '.join(self.memory.models)}); "
                "pick one of those"
            )
        return WarmSession(self, config, section)

    def view(self, name: str) -> View:
        """The registered view called ``name``."""
        for v in self.views:
            if v.name == name:
                return v
        some = ", ".join(v.name for v in self.views[:3])
        raise NotFound(f"view '{name}' is not a registered view of {self.scene.name}; use an image name ({some}, ...)")

    def describe(self) -> dict[str, Any]:
        """The scene's models, Gaussians, views, method and provenance (JSON)."""
        config = read_json(self.scene.model_dir / "config.json")
        return {
            "name": self.scene.name,
            "models": self.memory.models,
            "method": self.memory.method,
            "gaussians": int(len(self.memory.means)),
            "views": [v.name for v in self.views],
            "test_views": config.get("test_views", []),
            "provenance": config.get("provenance"),
            "digest": self.digest,
        }


class ScenePool:
    """The scenes the server answers for (see the module docstring).

    ``scenes`` are named at start (loaded now); without any, every ``<data_root>/<name>`` with a
    trained model is served, loaded on its first request. Memories go on ``device`` (``auto``:
    CUDA when visible).
    """

    def __init__(self, scenes: list[Scene], device: str = "auto", data_root: Path = DATA_ROOT, threads: int = 0):
        self.device = resolve_device(device, "query")
        self.threads = CpuThreads(threads) if self.device == "cpu" else None  # re-measured on requests
        self.data_root = Path(data_root)
        self.named = {s.name: s for s in scenes}
        if len(self.named) < len(scenes):
            raise M3Error("serve: two scenes share a folder name (the name requests use); serve one of them")
        self.lock = threading.Lock()
        self.warm: dict[str, WarmScene] = {}
        for name in self.named:
            warm = self.get(name)
            with warm.lock:
                warm.refresh()

    def names(self) -> list[str]:
        """The scenes served: the named ones, else those of the data folder with a trained model."""
        if self.named:
            return list(self.named)
        found = self.data_root.glob("*/model/config.json") if self.data_root.is_dir() else []
        return sorted(p.parent.parent.name for p in found)

    def get(self, name: str) -> WarmScene:
        """The warm scene ``name`` (not loaded yet: :meth:`WarmScene.refresh` loads it)."""
        check_scene_name(name, "scene")
        scene = self.named.get(name)
        if scene is None and not self.named:
            scene = Scene.resolve(name, self.data_root)
        if scene is None or not (scene.model_dir / "config.json").is_file():
            served = ", ".join(self.names()) or "none"
            raise NotFound(f"scene '{name}' is not served (served: {served}); name one of those")
        with self.lock:
            if self.threads is not None:
                self.threads.update()
            if name not in self.warm:
                self.warm[name] = WarmScene(scene, self.device)
            return self.warm[name]
