"""Stage ``frames``: ``data/<scene>/input`` (a video or photos) -> ``data/<scene>/frames/``.

Reads ``params.yaml: frames`` (:class:`~pipeline.poses.config.FramesConfig`). Writes
``frames/00000.png ...`` and ``frames/frames.json`` (``source_kind``, per-frame
``name``/``source``/``time``/``sharpness``, ``stats`` with the counts dropped for blur,
duplicates and the target count, and ``provenance``) atomically.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pipeline.core.code import code_hash
from pipeline.core.io import atomic_dir, hash_files, provenance, write_json
from pipeline.core.scene import Scene
from pipeline.poses.config import FramesConfig
from pipeline.poses.frames import extract_frames, find_input
from stages.command import PARAMS, SCENE, Options, command, resolve_scene

log = logging.getLogger(__name__)


def run(config: FramesConfig, scene: Scene) -> dict[str, Any]:
    """Frames of ``scene`` from its ``input/``; returns the ``frames.json`` record."""
    start = time.perf_counter()
    root = scene.input_dir
    kind, paths = find_input(root)
    prov = provenance("frames", config, hash_files(paths, root), code_hash(__name__))
    with atomic_dir(scene.frames_dir) as out:
        meta = extract_frames(kind, paths, root, out, config)
        meta["provenance"] = prov
        write_json(out / "frames.json", meta)
    st = meta["stats"]
    log.info(
        "%s: %d frames from %d candidates (%s; dropped: %d blurred, %d duplicates, %d over target, %d unreadable) "
        "in %.1f s", scene.name, st["kept"], st["candidates"], kind, st["dropped_blur"], st["dropped_duplicate"],
        st["dropped_target"], st["unreadable"], time.perf_counter() - start,
    )  # fmt: skip
    return meta


@command(FramesConfig)
def cli(options: Options[FramesConfig], scene: str = SCENE, params: Path = PARAMS) -> None:
    """Extract frames from a scene's input video or photos (downscaled, blur/duplicate-filtered).

    Writes data/<scene>/frames/00000.png ... and data/<scene>/frames/frames.json.
    """
    run(options.load("frames", params), resolve_scene(scene))
