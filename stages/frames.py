"""Stage ``frames``: ``data/<scene>/input`` (a video or photos) -> ``data/<scene>/frames/``.

Reads ``params.yaml: frames`` (:class:`~pipeline.poses.config.FramesConfig`). Writes
``frames/00000.png ...`` and ``frames/frames.json`` (``source_kind``, per-frame
``name``/``source``/``time``/``sharpness``, ``stats`` with the counts dropped for blur,
duplicates and the target count, and ``provenance``) atomically
(:func:`pipeline.poses.stage.make_frames`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.poses.config import FramesConfig
from stages.command import PARAMS, SCENE, Options, command, resolve_scene

if TYPE_CHECKING:
    from pipeline.core.scene import Scene

log = logging.getLogger(__name__)


def run(config: FramesConfig, scene: Scene) -> dict[str, Any]:
    """Frames of ``scene`` from its ``input/`` (:func:`~pipeline.poses.stage.make_frames`); returns
    the ``frames.json`` record."""
    from pipeline.poses.stage import make_frames

    start = time.perf_counter()
    meta = make_frames(config, scene)
    st = meta["stats"]
    log.info(
        "%s: %d frames from %d candidates (%s; dropped: %d blurred, %d duplicates, %d over target, %d unreadable) "
        "in %.1f s", scene.name, st["kept"], st["candidates"], meta["source_kind"], st["dropped_blur"],
        st["dropped_duplicate"], st["dropped_target"], st["unreadable"], time.perf_counter() - start,
    )  # fmt: skip
    return meta


@command(FramesConfig)
def cli(options: Options[FramesConfig], scene: str = SCENE, params: Path = PARAMS) -> None:
    """Extract frames from a scene's input video or photos (downscaled, blur/duplicate-filtered).

    Writes data/<scene>/frames/00000.png ... and data/<scene>/frames/frames.json.
    """
    run(options.load("frames", params), resolve_scene(scene))
