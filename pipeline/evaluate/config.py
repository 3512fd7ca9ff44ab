"""Configs of the ``evaluate`` stage and the ``query`` command (``params.yaml: evaluate``, ``query``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.core.config import Checked, Cosine, Count, Fraction, Natural, Port, Positive

CANONICAL_NEGATIVES = ("object", "things", "stuff", "texture")
"""LERF's canonical phrases: relevance is measured against the hardest of them."""


def _negatives() -> list[str]:
    return list(CANONICAL_NEGATIVES)


@dataclass(frozen=True)
class GroundingConfig(Checked):
    """``params.yaml: evaluate.grounding``: used only when the scene has the grounding file."""

    file: str = "grounding.json"
    """Grounding samples, relative to the scene folder (see the README)."""
    model: str | None = None
    """Language model to query (null: the first with a text encoder)."""
    mode: Literal["canonical", "cosine"] = "canonical"
    """canonical (LERF softmax against the negatives) | cosine."""
    negatives: list[str] = field(default_factory=_negatives)
    """Canonical phrases of the canonical mode."""
    scale: Positive = 10.0
    """Softmax scale (1 / temperature) of the canonical mode."""
    threshold: Fraction = 0.5
    """Predicted mask: per-view min-max normalised relevance >= threshold."""


@dataclass(frozen=True)
class LerfConfig(Checked):
    """``params.yaml: evaluate.lerf``: the LERF-OVS protocol, used only when the label folder exists."""

    labels: str = "input/labels"
    """Folder of per-frame annotations (LERF-OVS label/<scene>, LangSplat or labelme JSON), relative
    to the scene folder or absolute."""
    model: str | None = None
    """Language model to query (null: the first with a text encoder)."""
    mode: Literal["canonical", "cosine"] = "canonical"
    """canonical (LERF and LangSplat's relevance) | cosine."""
    negatives: list[str] = field(default_factory=_negatives)
    """Canonical phrases of the canonical mode."""
    scale: Positive = 10.0
    """Softmax scale (1 / temperature) of the canonical mode."""
    vectors: str | None = None
    """JSON file {label: [d numbers]} (relative to the scene folder, or absolute): labels queried with
    their vector instead of the text tower."""
    filter_size: Count = 30
    """Mean filter size in pixels of the label images (LangSplat: 30)."""
    mask_threshold: Cosine = 0.4
    """Normalised relevance above which a pixel (or Gaussian) is predicted (LangSplat: 0.4)."""
    min_opacity: Fraction = 0.1
    """3D protocol: ignore Gaussians more transparent than this."""


@dataclass(frozen=True)
class EvaluateConfig(Checked):
    """``params.yaml: evaluate``: metrics of the trained memory on held-out views."""

    test_every: Natural = 8
    """Evaluate every n-th registered view (0, 8, 16, ...: the views train held out)."""
    n_renders: Natural = 3
    """Save render | ground-truth images of this many held-out views."""
    lpips: bool = True
    """Compute LPIPS when the lpips package and its weights are already on this machine."""
    max_side: Natural | None = None
    """Render the held-out views at this longer image side (0: full size; null: the size the memory
    was trained at)."""
    device: str = "auto"
    """auto | cpu | cuda."""
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    """Referring-segmentation metrics (params.yaml only)."""
    lerf: LerfConfig = field(default_factory=LerfConfig)
    """LERF-OVS localisation accuracy and mIoU, 2D and 3D (params.yaml only)."""


@dataclass(frozen=True)
class SelectConfig(Checked):
    """What the query tools share (``query``, ``export``, ``view``): how a query is encoded and
    scored, and which Gaussians answer it."""

    model: str | None = None
    """Model whose features to query (null: the first with a text encoder)."""
    mode: Literal["canonical", "cosine"] = "canonical"
    """canonical (LERF softmax against 'object', 'things', 'stuff', 'texture') | cosine."""
    negatives: list[str] = field(default_factory=_negatives)
    """Canonical phrases of the canonical mode."""
    scale: Positive = 10.0
    """Softmax scale of the canonical mode (1 / temperature)."""
    vectors: str | None = None
    """JSON file {phrase: [d numbers]} (relative to the scene folder, or absolute): these phrases
    are queried with their vector instead of the text tower (models without text, fixed embeddings)."""
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
class ViewConfig(SelectConfig):
    """``params.yaml: view``: the ``m3 view`` browser viewer (not a DVC stage)."""

    host: str = "127.0.0.1"
    """Address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface)."""
    port: Port = 8080
    """Port of the web page (http://host:port)."""


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
