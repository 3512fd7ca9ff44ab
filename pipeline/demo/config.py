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

    def __post_init__(self) -> None:
        if self.n_views < 3 or self.width < 16 or self.height < 16 or self.supersample < 1:
            raise M3Error(
                f"demo: n_views={self.n_views}, {self.width}x{self.height}, supersample={self.supersample} "
                "is too small; use n_views >= 3, width/height >= 16 and supersample >= 1"
            )
