"""Configs of the query tools (``params.yaml: query``, ``export``, ``ask``) and the relevance
settings every user of a text query shares (:class:`RelevanceConfig`: also ``view``,
``evaluate.grounding`` and ``evaluate.lerf``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.core.config import Checked, Cosine, Count, Fraction, Natural, NonNegative, Positive

CANONICAL_NEGATIVES = ("object", "things", "stuff", "texture")
"""LERF's canonical phrases: relevance is measured against the hardest of them."""


def _negatives() -> list[str]:
    return list(CANONICAL_NEGATIVES)


@dataclass(frozen=True)
class RelevanceConfig(Checked):
    """How a text (or a vector) is scored against a memory's features: which model, which relevance."""

    model: str | None = None
    """Model whose features to query (null: the first of the memory with a text encoder)."""
    mode: Literal["canonical", "cosine"] = "canonical"
    """canonical (LERF's softmax against the negative phrases) | cosine."""
    negatives: list[str] = field(default_factory=_negatives)
    """Negative phrases of the canonical mode."""
    scale: Positive = 10.0
    """Softmax scale (1 / temperature) of the canonical mode."""
    vectors: str | None = None
    """JSON file {phrase: [d numbers]} (relative to the scene folder, or absolute): these phrases are
    queried with their vector instead of the text tower (models without text, fixed embeddings)."""


@dataclass(frozen=True)
class SelectConfig(RelevanceConfig):
    """What the 3D query tools share (``query``, ``export``, ``view``): the relevance, and which
    Gaussians answer a query."""

    attention_k: Count | None = None
    """Sparse memory attention per Gaussian: its k largest weights only (null: exact, all slots)."""
    top_k: Count | None = None
    """Keep the k most relevant Gaussians (null: threshold, else quantile)."""
    quantile: Fraction = 0.99
    """Keep Gaussians whose relevance is at or above this quantile."""
    threshold: Cosine | None = None
    """Keep Gaussians whose relevance is at or above this value (null: top_k, else quantile)."""
    min_opacity: Fraction = 0.1
    """Ignore Gaussians more transparent than this."""
    trim: Positive = 3.0
    """Drop kept Gaussians farther than median + trim * MAD from their median."""
    tolerance: Positive = 1e-4
    """Exact relevance (attention_k null): largest error of a Gaussian's cosine read from the attention
    cache (canonical relevance: scale / 2 times it); Gaussians the cache cannot promise it for are
    recomputed from their logits."""
    cache_mb: NonNegative = 4096.0
    """Exact relevance: largest attention cache per model in MiB (2 bytes per Gaussian and bank slot,
    built with the first query); Gaussians beyond it are recomputed by every query; 0: no cache
    (cheapest when a process answers a single query)."""
    threads: Natural = 0
    """CPU threads (0: one per core that other processes leave idle, re-measured while running, see
    pipeline.core.threads; n: exactly n)."""
    device: str = "auto"
    """auto | cpu | cuda."""


@dataclass(frozen=True)
class QueryConfig(SelectConfig):
    """``params.yaml: query``: the ``m3 query`` command (not a DVC stage)."""

    n_views: Count = 4
    """Heatmaps on this many views spread over the scene (when no views are named)."""
    views: list[str] = field(default_factory=list)
    """Or heatmaps on these views (image names; repeat the option)."""
    alpha: Fraction = 0.6
    """Heatmap opacity at full relevance."""


@dataclass(frozen=True)
class ExportConfig(SelectConfig):
    """``params.yaml: export``: the ``m3 export`` command (not a DVC stage)."""


@dataclass(frozen=True)
class AskConfig(Checked):
    """``params.yaml: ask``: the ``m3 ask`` command (not a DVC stage)."""

    model: str = "llamav"
    """The memory's VLM-token model (an adapter whose extract stores a VLM's image tokens)."""
    max_new_tokens: Count = 64
    """Longest answer, in tokens (greedy decoding; it stops earlier at the end token)."""
    region_model: str | None = None
    """Model whose text tower finds a --region text (null: the first with a text encoder)."""
    region_threshold: Fraction = 0.5
    """A --region text keeps the cells whose min-max normalised relevance is at least this."""
    device: str = "auto"
    """auto | cpu | cuda."""
