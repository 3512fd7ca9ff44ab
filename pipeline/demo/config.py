"""Config of the ``demo`` stage (``params.yaml: demo``)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.errors import M3Error


@dataclass(frozen=True)
class DemoConfig:
    """``params.yaml: demo``: the procedural demo room and its cameras."""

    n_views: int = 36
    """Number of views on the camera ring (plus height variation) around the room."""
    width: int = 320
    """Image width in pixels."""
    height: int = 240
    """Image height in pixels."""
    seed: int = 0
    """Random seed of the textures, object placement and camera jitter."""
    supersample: int = 1
    """Rays per pixel along each axis (2: 4 rays, smoother edges, 4x slower)."""
    label_every: int = 8
    """Write LERF-OVS-style annotations (input/labels/) of every n-th view, the views evaluate
    holds out with test_every 8 (0: none)."""

    def __post_init__(self) -> None:
        if self.n_views < 3 or self.width < 16 or self.height < 16 or self.supersample < 1 or self.label_every < 0:
            raise M3Error(
                f"demo: n_views={self.n_views}, {self.width}x{self.height}, supersample={self.supersample}, "
                f"label_every={self.label_every} is out of range; use n_views >= 3, width/height >= 16, "
                "supersample >= 1 and label_every >= 0"
            )
