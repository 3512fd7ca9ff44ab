"""Stage ``frames``: ``data/<scene>/input`` (a video or photos) -> ``data/<scene>/frames/``.

Reads ``params.yaml: frames``. Writes ``frames/00000.png ...`` and ``frames/frames.json``
(``source_kind``, per-frame ``name``/``source``/``time``/``sharpness``, ``stats`` with the counts
dropped for blur, duplicates and the target count, and ``provenance``) atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from pipeline import logger
from pipeline.config import PARAMS_FILE, from_dict, load_section, to_dict
from pipeline.frames import FramesConfig, extract_frames, find_input
from pipeline.io import atomic_dir, hash_files, provenance, write_json
from pipeline.scene import Scene
from stages.common import PARAMS_HELP, SCENE_HELP, override, reports_errors

__all__ = ["FramesConfig", "cli", "run"]
log = logger.getChild("frames")


def run(config: FramesConfig, scene: Scene) -> dict[str, Any]:
    """Frames of ``scene`` from its ``input/``; returns the ``frames.json`` record."""
    root = scene.input_dir
    kind, paths = find_input(root)
    prov = provenance("frames", to_dict(config), hash_files(paths, root))
    with atomic_dir(scene.frames_dir) as out:
        meta = extract_frames(kind, paths, root, out, config)
        meta["provenance"] = prov
        write_json(out / "frames.json", meta)
    st = meta["stats"]
    log.info(
        "%s: %d frames from %d candidates (%s; dropped: %d blurred, %d duplicates, %d over target, "
        "%d unreadable) in %.1f s",
        scene.name, st["kept"], st["candidates"], kind, st["dropped_blur"], st["dropped_duplicate"],
        st["dropped_target"], st["unreadable"], st["seconds"],
    )
    return meta


@reports_errors
def cli(
    scene: str = typer.Argument(..., help=SCENE_HELP),
    max_side: Optional[int] = typer.Option(None, help="downscale frames so that their longer side is at most this (pixels)"),
    target_count: Optional[int] = typer.Option(None, help="keep at most this many frames, evenly spread over the input"),
    blur_ratio: Optional[float] = typer.Option(None, help="drop frames whose variance of Laplacian is below this x the median"),
    blur_window: Optional[int] = typer.Option(None, help="median over all candidates (0) or over this many neighbours"),
    dedup_threshold: Optional[float] = typer.Option(None, help="drop frames whose 32x32 thumbnail differs from the last kept by less (mean abs, 0..1)"),
    video_candidates: Optional[int] = typer.Option(None, help="sample a video at most this many times (evenly) before filtering"),
    min_frames: Optional[int] = typer.Option(None, help="fewer usable frames than this is an error"),
    params: Path = typer.Option(PARAMS_FILE, help=PARAMS_HELP),
) -> None:
    """Extract frames from a scene's input video or photos (downscaled, blur/duplicate-filtered).

    Writes data/<scene>/frames/00000.png ... and data/<scene>/frames/frames.json.
    """
    cfg = override(
        load_section(FramesConfig, "frames", params),
        max_side=max_side, target_count=target_count, blur_ratio=blur_ratio, blur_window=blur_window,
        dedup_threshold=dedup_threshold, video_candidates=video_candidates, min_frames=min_frames,
    )
    run(from_dict(FramesConfig, to_dict(cfg), "m3 frames options"), Scene.resolve(scene))
