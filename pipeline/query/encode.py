"""Texts and vectors as queries in one model's feature space, and their relevance to features.

A query is a vector ``q [d]`` in one stored model's feature space: a text encoded with that
model's own text tower (same checkpoint as the stored features, read from the feature store's
attrs), or a raw vector (tests, non-language models). Relevance of a feature ``f`` (a rendered
pixel, or one Gaussian's own query mapped through memory attention) is one of

* ``cosine``: ``cos(f, q)`` in ``[-1, 1]``;
* ``canonical`` (LERF): for each canonical negative phrase ``n`` ("object", "things", "stuff",
  "texture"), ``p_n = softmax(scale * [cos(f, q), cos(f, n)])[0]``; relevance is ``min_n p_n``
  in ``[0, 1]`` (0.5 = as close to the query as to the hardest negative). Needs the text tower
  for the negatives.

:class:`Encoder` turns texts (or raw vectors) into :class:`QueryVector`; the text tower behind it
is loaded once per model and process (:func:`load_adapter`), however many encoders use it.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.errors import M3Error
from pipeline.core.io import canonical_json
from pipeline.core.scene import Scene
from pipeline.query.config import CANONICAL_NEGATIVES, RelevanceConfig
from pipeline.query.files import check_query, load_vectors

if TYPE_CHECKING:  # the adapters' registry is imported on first use
    from pipeline.features.models import FeatureModel

log = logging.getLogger(__name__)

Mode = Literal["canonical", "cosine"]


def recorded_conf(attrs: dict[str, Any]) -> dict[str, Any]:
    """The adapter conf that produced a feature store (its provenance's config), so that a text
    tower or a VLM is built from the same checkpoint."""
    cfg = (attrs.get("provenance") or {}).get("config")
    if not isinstance(cfg, dict) or not cfg:
        raise M3Error("feature store attrs: no model config recorded; rerun the features stage")
    return dict(cfg)


@dataclass
class QueryVector:
    """A query in one model's space: ``query [d]``, ``negatives [k, d]`` (canonical mode)."""

    query: torch.Tensor
    negatives: torch.Tensor | None = None
    mode: Mode = "cosine"
    scale: float = 10.0
    text: str | None = None

    def __post_init__(self) -> None:
        self.query = torch.as_tensor(self.query, dtype=torch.float32).reshape(-1)
        if self.mode == "canonical" and (self.negatives is None or len(self.negatives) == 0):
            raise M3Error(
                "query: canonical mode needs negative phrases encoded by a text tower; "
                "use mode 'cosine' for raw vectors or models without text"
            )
        if self.negatives is not None:
            self.negatives = torch.as_tensor(self.negatives, dtype=torch.float32).reshape(-1, self.dim)

    @property
    def dim(self) -> int:
        return int(self.query.numel())

    def check_dim(self, dim: int) -> None:
        """:class:`M3Error` unless features of ``dim`` dims can be queried."""
        if dim != self.dim:
            raise M3Error(
                f"query: vector has {self.dim} dims but the features have {dim}; "
                "query with the model whose features were stored"
            )

    def phrases(self) -> torch.Tensor:
        """Unit query, then unit negatives (canonical mode): ``[1 + k, d]``."""
        rows = [self.query[None]]
        if self.mode == "canonical" and self.negatives is not None:  # never None in canonical mode
            rows.append(self.negatives)
        return F.normalize(torch.cat(rows), dim=-1)

    def from_cosines(self, cos: torch.Tensor) -> torch.Tensor:
        """Relevance ``[...]`` from the cosines ``[..., 1 + k]`` of features with :meth:`phrases`."""
        pos = cos[..., 0]
        if self.mode == "cosine":
            return pos
        # min over n of softmax(scale [pos, n])[0] = sigmoid(scale (pos - n)) at the largest n
        return torch.sigmoid(self.scale * (pos - cos[..., 1:].amax(dim=-1)))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """Relevance ``[...]`` of features ``[..., d]`` (see the module docstring)."""
        self.check_dim(features.shape[-1])
        f = F.normalize(features.float(), dim=-1)
        return self.from_cosines(f @ self.phrases().to(f.device).T)


def load_adapter(name: str, attrs: dict[str, Any], device: str = "cpu") -> FeatureModel:
    """Adapter ``name`` (its text tower, or for ``llamav`` its VLM) built with the conf recorded in
    its feature store ``attrs``; built once per conf and device in a process, then shared."""
    return _adapter(name, canonical_json(recorded_conf(attrs)), str(device))


@functools.cache
def _adapter(name: str, conf_json: str, device: str) -> FeatureModel:
    from pipeline.features.models import build_model, model_class

    known = set(model_class(name).default_conf)
    return build_model(name, {k: v for k, v in json.loads(conf_json).items() if k in known}, device)


def has_text_tower(name: str) -> bool:
    """Whether adapter ``name`` implements ``encode_text``."""
    from pipeline.features.models import FeatureModel, model_class

    return model_class(name).encode_text is not FeatureModel.encode_text


def pick_model(models: Sequence[str], requested: str | None, section: str = "query") -> str:
    """``requested`` if the memory holds it, else the first model with a text tower (``section``:
    the params section that chose, named in errors)."""
    if requested is not None:
        if requested not in models:
            raise M3Error(
                f"{section}.model: '{requested}' is not in the trained memory ({', '.join(models)}); pick one of those"
            )
        return requested
    for m in models:
        if has_text_tower(m):
            return m
    raise M3Error(
        f"{section}: none of the memory's models ({', '.join(models)}) has a text encoder; set {section}.model "
        f"and query with vectors ({section}.vectors, or --vector where the command takes one)"
    )


class Encoder:
    """Phrases or raw vectors -> :class:`QueryVector` in one model's space.

    A phrase found in ``vectors`` is queried with its vector; any other is encoded by the model's
    text tower (:func:`load_adapter`: the conf recorded in the feature store ``attrs``, loaded once
    per process). Canonical mode encodes the negatives with the text tower too.
    """

    def __init__(
        self,
        model: str,
        attrs: dict[str, Any],
        mode: Mode = "canonical",
        negatives: Sequence[str] = CANONICAL_NEGATIVES,
        scale: float = 10.0,
        vectors: dict[str, np.ndarray] | None = None,
        device: str = "cpu",
    ):
        self.model, self.attrs, self.mode, self.scale, self.device = model, attrs, mode, scale, device
        self.negatives = list(negatives)
        self.vectors = dict(vectors or {})
        self._tower: FeatureModel | None = None
        self._negs: torch.Tensor | None = None

    @classmethod
    def from_store(cls, scene: Scene, model: str, relevance: RelevanceConfig, device: str = "cpu") -> Encoder:
        """The encoder of ``scene``'s stored ``model`` with ``relevance``'s mode, phrases and vectors file."""
        from pipeline.features.store import FeatureStore

        attrs = FeatureStore.open(scene.features_path(model)).attrs
        vectors = load_vectors(scene.path_of(relevance.vectors)) if relevance.vectors else None
        return cls(model, attrs, relevance.mode, relevance.negatives, relevance.scale, vectors, device)

    def _encode(self, phrases: list[str]) -> torch.Tensor:
        if self._tower is None:
            if not has_text_tower(self.model):
                raise M3Error(
                    f"query: model '{self.model}' has no text encoder; use mode cosine with a vector "
                    "(--vector or a vectors file)"
                )
            self._tower = load_adapter(self.model, self.attrs, self.device)
        limit = self._tower.max_text_tokens
        for phrase in phrases:
            # at least a token per word (or per 16 characters of a long word), plus start and end tokens
            least = max(len(phrase.split()), len(phrase) // 16) + 2
            if limit and least > limit:
                log.warning(
                    "query: %r... (%d characters) is longer than the %d tokens %s's text tower reads: "
                    "the rest is ignored; shorten the text", phrase[:40], len(phrase), limit, self.model,
                )  # fmt: skip
        return self._tower.encode_text(phrases).detach().float().cpu()

    def _negatives(self) -> torch.Tensor | None:
        if self.mode == "canonical" and self._negs is None:
            self._negs = self._encode(self.negatives)
        return self._negs if self.mode == "canonical" else None

    def text(self, text: str) -> QueryVector:
        """The query of ``text`` (its vector when ``vectors`` holds it, else the text tower's)."""
        check_query(text, None)
        if text in self.vectors:
            return self.vector(self.vectors[text], text)
        return QueryVector(self._encode([text])[0], self._negatives(), self.mode, self.scale, text)

    def vector(self, vector: np.ndarray | torch.Tensor, text: str | None = None) -> QueryVector:
        """The query of a raw ``vector [d]``."""
        return QueryVector(torch.as_tensor(vector), self._negatives(), self.mode, self.scale, text)
