"""A trained memory ready to answer queries: the query tools' (``query``, ``export``, ``view``) common part.

:class:`QuerySession` loads the memory once, picks the model, builds the :class:`Encoder` (text
tower and/or the vectors file) and the per-Gaussian relevance engine
(:class:`~pipeline.evaluate.relevance.GaussianRelevance`), then answers any number of queries:
relevance of every Gaussian, the selected Gaussians and their 3D box (:func:`localize`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pipeline.core.runtime import resolve_device
from pipeline.core.scene import Scene
from pipeline.evaluate.config import SelectConfig
from pipeline.evaluate.query import Encoder, Localization, QueryVector, check_query, load_vectors, localize, pick_model
from pipeline.evaluate.relevance import GaussianRelevance
from pipeline.features.store import FeatureStore
from pipeline.splat.gaussians import QUERY_PREFIX
from pipeline.splat.trained import TrainedMemory

log = logging.getLogger(__name__)


def scene_path(scene: Scene, path: str) -> Path:
    """``path`` relative to the scene folder (an absolute path is kept)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else scene.root / p


def relevance_engine(memory: TrainedMemory, model: str, attention_k: int | None = None) -> GaussianRelevance:
    """The relevance engine of ``model``'s head over the memory's Gaussians (on the memory's device)."""
    return GaussianRelevance(memory.heads[model], memory.params[QUERY_PREFIX + model], attention_k)


class QuerySession:
    """``scene``'s trained memory, one model, an encoder and a relevance engine (see the module doc)."""

    def __init__(self, scene: Scene, config: SelectConfig, section: str = "query"):
        self.scene, self.config = scene, config
        device = resolve_device(config.device, section)
        self.memory = TrainedMemory.load(scene, device=device)
        self.model = pick_model(self.memory.models, config.model)
        attrs = FeatureStore.open(scene.features_path(self.model)).attrs
        vectors = load_vectors(scene_path(scene, config.vectors)) if config.vectors else None
        self.encoder = Encoder(self.model, attrs, config.mode, config.negatives, config.scale, vectors, device)
        self.engine = relevance_engine(self.memory, self.model, config.attention_k)

    def encode(self, text: str | None = None, vector: np.ndarray | None = None) -> QueryVector:
        """The query of a ``text`` or a raw ``vector [d]`` (exactly one of them)."""
        check_query(text, vector)
        return self.encoder.text(text) if text is not None else self.encoder.vector(vector)

    def relevance(self, qv: QueryVector) -> Tensor:
        """Relevance ``[N]`` of every Gaussian (on the CPU)."""
        return self.engine(qv).cpu()

    def localize(self, relevance: Tensor) -> Localization:
        """The selected Gaussians (threshold / top_k / quantile), trimmed, and their centroid and box."""
        c = self.config
        with torch.no_grad():
            opacities = self.memory.opacities.detach().cpu()
        return localize(
            self.memory.means, relevance, opacities, c.top_k, c.quantile, c.min_opacity, c.trim, c.threshold
        )
