"""Config of the ``evaluate`` stage (``params.yaml: evaluate``): held-out metrics, grounding, LERF-OVS."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.core.config import Checked, Cosine, Count, Fraction, Natural
from pipeline.query.config import RelevanceConfig


@dataclass(frozen=True)
class GroundingConfig(RelevanceConfig):
    """``params.yaml: evaluate.grounding``: used only when the scene has the grounding file."""

    file: str = "grounding.json"
    """Grounding samples, relative to the scene folder (see the docs)."""
    threshold: Fraction = 0.5
    """Predicted mask: per-view min-max normalised relevance >= threshold."""


@dataclass(frozen=True)
class LerfConfig(RelevanceConfig):
    """``params.yaml: evaluate.lerf``: the LERF-OVS protocol, used only when the label folder exists."""

    labels: str = "input/labels"
    """Folder of per-frame annotations (LERF-OVS label/<scene>, LangSplat or labelme JSON), relative
    to the scene folder or absolute."""
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
    """Evaluate every n-th registered view (0, 8, 16, ...: the views train held out; LLFF's protocol:
    8); a dataset split imported by the poses stage (colmap/split.json) replaces it."""
    n_renders: Natural = 3
    """Save render | ground-truth images of this many held-out views."""
    lpips: bool = True
    """Compute LPIPS when the lpips package and its weights are already on this machine."""
    max_side: Natural | None = None
    """Render the held-out views at this longer image side (0: full size; null: the size the memory
    was trained at); the ground truth is resized from the full-size image (bicubic, antialiased)."""
    size: list[Count] | None = None
    """Render and compare at exactly [width, height] pixels instead (e.g. LLFF's [504, 378]; the
    intrinsics scaled; null: max_side decides)."""
    threads: Natural = 0
    """CPU threads (0: one per core that other processes leave idle, re-measured while running, see
    pipeline.core.threads; n: exactly n)."""
    device: str = "auto"
    """auto | cpu | cuda."""
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    """Referring-segmentation metrics (options --grounding.<key>)."""
    lerf: LerfConfig = field(default_factory=LerfConfig)
    """LERF-OVS localisation accuracy and mIoU, 2D and 3D (options --lerf.<key>)."""
