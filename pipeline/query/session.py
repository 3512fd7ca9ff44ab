"""A trained memory ready to answer queries: what the query tools (``query``, ``export``, ``view``) share.

:class:`QuerySession` loads the memory once, picks the model, builds the :class:`Encoder` (text
tower and/or the vectors file) and the per-Gaussian relevance engine
(:class:`~pipeline.query.relevance.GaussianRelevance`), then answers any number of queries:
relevance of every Gaussian, the selected Gaussians and their 3D box (:func:`localize`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from pipeline.core.runtime import resolve_device
from pipeline.core.scene import Scene
from pipeline.core.threads import CpuThreads
from pipeline.query.config import SelectConfig
from pipeline.query.encode import Encoder, QueryVector, pick_model
from pipeline.query.files import check_query
from pipeline.query.localize import Localization, localize
from pipeline.query.relevance import CACHE_MB, TOLERANCE, GaussianRelevance
from pipeline.splat.gaussians import QUERY_PREFIX
from pipeline.splat.trained import TrainedMemory

log = logging.getLogger(__name__)


def relevance_engine(
    memory: TrainedMemory,
    model: str,
    attention_k: int | None = None,
    tolerance: float = TOLERANCE,
    cache_mb: float = CACHE_MB,
) -> GaussianRelevance:
    """The relevance engine of ``model``'s head over the memory's Gaussians (on the memory's device)."""
    queries = memory.params[QUERY_PREFIX + model]
    return GaussianRelevance(memory.heads[model], queries, attention_k, tolerance=tolerance, cache_mb=cache_mb)


class QuerySession:
    """``scene``'s trained memory, one model, an encoder and a relevance engine (see the module doc)."""

    def __init__(self, scene: Scene, config: SelectConfig, section: str = "query"):
        self.scene, self.config, self.section = scene, config, section
        device = resolve_device(config.device, section)
        if device == "cpu":
            CpuThreads(config.threads).update()
        self.memory = TrainedMemory.load(scene, device=device)
        self.model = pick_model(self.memory.models, config.model, section)
        self.encoder = Encoder.from_store(scene, self.model, config, device)
        self.engine = relevance_engine(self.memory, self.model, config.attention_k, config.tolerance, config.cache_mb)

    def encode(self, text: str | None = None, vector: np.ndarray | None = None) -> QueryVector:
        """The query of a ``text`` or a raw ``vector [d]`` (exactly one of them)."""
        check_query(text, vector)
        if text is not None:
            return self.encoder.text(text)
        assert vector is not None  # check_query: exactly one of them
        return self.encoder.vector(vector)

    def relevance(self, qv: QueryVector) -> Tensor:
        """Relevance ``[N]`` of every Gaussian (on the CPU)."""
        return self.engine(qv).cpu()

    def localize(self, relevance: Tensor) -> Localization:
        """The selected Gaussians (threshold / top_k / quantile), trimmed, and their centroid and box."""
        c = self.config
        with torch.no_grad():
            opacities = self.memory.opacities.detach().cpu()
        return localize(
            self.memory.means,
            relevance,
            opacities,
            c.top_k,
            c.quantile,
            c.min_opacity,
            c.trim,
            c.threshold,
            self.section,
        )
