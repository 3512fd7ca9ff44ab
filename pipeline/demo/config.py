"""Config of the ``demo`` stage (``params.yaml: demo``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pipeline.core.config import Checked, Count, Natural, Range


@dataclass(frozen=True)
class DemoConfig(Checked):
    """``params.yaml: demo``: the procedural demo room and its cameras."""

    n_views: Annotated[int, Range(3)] = 36
    """Number of views on the camera ring (plus height variation) around the room."""
    width: Annotated[int, Range(16)] = 320
    """Image width in pixels."""
    height: Annotated[int, Range(16)] = 240
    """Image height in pixels."""
    seed: Natural = 0
    """Random seed of the textures, object placement and camera jitter."""
    supersample: Count = 1
    """Rays per pixel along each axis (2: 4 rays, smoother edges, 4x slower)."""
    label_every: Natural = 8
    """Write LERF-OVS-style annotations (input/labels/) of every n-th view, the views evaluate
    holds out with test_every 8 (0: none)."""
