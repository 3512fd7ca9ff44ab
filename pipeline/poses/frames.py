"""Frames from a video or a photo set: downscaled, blur- and duplicate-filtered, evenly spread.

One streaming pass: every candidate (each image, or up to ``video_candidates`` frames evenly
spaced through a video) is decoded, EXIF-rotated, downscaled to ``max_side`` and written to the
output folder right away; only its sharpness (variance of the Laplacian), a 32x32 grey
thumbnail and a digest of its pixels stay in memory. Then :func:`select_frames` drops blurred
frames (sharpness below ``blur_ratio`` x the median) and duplicates, and keeps the sharpest frame
in each of ``target_count`` even windows. Duplicates differ by input: consecutive video frames
whose thumbnails differ from the last kept frame by less than ``dedup_threshold`` (mean absolute
difference) carry no new view, but nearby photos of a set are distinct views (e.g. a turntable
on a dark background), so a photo set loses only exact duplicates (identical pixels). Kept
frames are renamed ``00000.png ...``; the rest are deleted.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy.ndimage import median_filter

from pipeline.core.errors import M3Error
from pipeline.core.images import has_alpha
from pipeline.core.progress import progress
from pipeline.core.scene import IMAGE_EXTS, VIDEO_EXTS
from pipeline.poses.config import FramesConfig

log = logging.getLogger(__name__)
THUMB = 32


@dataclass
class Candidate:
    """One decoded, downscaled frame on disk with its sharpness, thumbnail ``[32, 32]`` and pixel digest."""

    source: str
    time: float | None
    path: Path
    sharpness: float
    thumb: np.ndarray
    digest: bytes


def find_input(input_dir: Path) -> tuple[str, list[Path]]:
    """``("video", [file])`` or ``("images", [files sorted by name])`` found in ``input_dir``.

    Media at the top level win; without any, sub-folders are searched (e.g. ``input/images/``).
    ``input_dir`` may also be a single video file.
    """
    input_dir = Path(input_dir)
    if input_dir.is_file() and input_dir.suffix.lower() in VIDEO_EXTS:
        return "video", [input_dir]
    if not input_dir.is_dir():
        raise M3Error(
            f"{input_dir}: input not found; put a video (mp4/mov/...) or photos there (then `dvc add {input_dir}`)"
        )
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not any(p.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS for p in files):
        files = sorted(p for p in input_dir.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.parts))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
    videos = [p for p in files if p.suffix.lower() in VIDEO_EXTS]
    if videos and images:
        raise M3Error(f"{input_dir}: holds both videos and images; keep either one video or a set of images per scene")
    if len(videos) > 1:
        names = ", ".join(p.name for p in videos[:3])
        raise M3Error(
            f"{input_dir}: holds {len(videos)} videos ({names}); keep one video per scene (make one scene each)"
        )
    if videos:
        return "video", videos
    if not images:
        exts = " ".join(IMAGE_EXTS + VIDEO_EXTS)
        raise M3Error(f"{input_dir}: no images or video found (looked for {exts}); add a video or photos of the scene")
    return "images", images


def downscale(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` as RGB (RGBA when it has transparency: the alpha goes on to training) with its
    longer side at most ``max_side`` (aspect kept, never upscaled)."""
    image = image.convert("RGBA" if has_alpha(image) else "RGB")
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def measure(image: Image.Image) -> tuple[float, np.ndarray]:
    """Sharpness (variance of the 4-neighbour Laplacian of grey in [0, 1]) and thumbnail ``[32, 32]``."""
    grey = np.asarray(image.convert("L"), dtype=np.float32) / 255
    lap = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1]
    thumb = image.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX)
    return float(lap.var()), np.asarray(thumb, dtype=np.float32) / 255


def iter_images(paths: list[Path], root: Path, max_side: int) -> Iterator[tuple[str, float | None, Image.Image]]:
    """``(name, None, image)`` per readable image (EXIF orientation applied); unreadable ones are
    skipped with a warning naming the file. JPEGs are decoded at a reduced scale that is still at
    least ``max_side`` on both sides."""
    for path in paths:
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        try:
            with Image.open(path) as im:
                im.draft("RGB", (max_side, max_side))
                im.load()
                image = ImageOps.exif_transpose(im)
                image = image.convert("RGBA" if has_alpha(image) else "RGB")
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            log.warning("skipping %s: unreadable image (%s); replace or remove the file", path, exc)
            continue
        yield name, None, image


def _video_error(path: Path, cause: str) -> M3Error:
    return M3Error(
        f"{path}: {cause}; re-encode it (e.g. `ffmpeg -i {path.name} -c:v libx264 -pix_fmt yuv420p out.mp4`) "
        "or extract its frames as images into the input folder"
    )


def iter_video(path: Path, n_candidates: int) -> Iterator[tuple[str, float | None, Image.Image]]:
    """``(file name, seconds, frame)`` for up to ``n_candidates`` frames evenly spaced in ``path``.

    Decodes the stream once, in order, holding one frame at a time; frame rotation metadata is applied.
    """
    import av

    def open_video() -> Any:
        try:
            return av.open(str(path))
        except av.error.FFmpegError as exc:
            raise _video_error(path, f"not a readable video ({exc.strerror or exc})") from exc

    with open_video() as container:
        if not container.streams.video:
            raise _video_error(path, "has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise _video_error(path, "its video codec is unknown to this FFmpeg/PyAV build and cannot be decoded")
        total = stream.frames or sum(1 for p in container.demux(stream) if p.size)
    if total == 0:
        raise _video_error(path, "has no video frames")
    wanted = set(np.linspace(0, total - 1, min(total, n_candidates)).round().astype(int).tolist())
    index = 0
    with open_video() as container:
        try:
            for frame in container.decode(container.streams.video[0]):
                if index in wanted:
                    image = frame.to_image()
                    if frame.rotation:
                        image = image.rotate(frame.rotation, expand=True)
                    yield path.name, (float(frame.time) if frame.time is not None else None), image
                index += 1
        except av.error.FFmpegError as exc:
            if index == 0:
                raise _video_error(path, f"cannot be decoded ({exc.strerror or exc})") from exc
            log.warning("%s: decoding stopped at frame %d (%s); using the frames before it", path, index, exc)
    if index == 0:
        raise _video_error(path, "no frame could be decoded")


def select_frames(
    sharpness: np.ndarray, thumbs: np.ndarray, cfg: FramesConfig, digests: list[bytes] | None = None
) -> tuple[list[int], dict[str, int]]:
    """Indices of the frames to keep (in order) from ``sharpness [N]`` and ``thumbs [N, t, t]``.

    Without ``digests`` (a video) a frame is a duplicate when its thumbnail differs from the last
    kept one by less than ``cfg.dedup_threshold``; with ``digests [N]`` (a photo set) only when its
    pixels equal those of a frame kept before. Returns the kept indices and counts
    ``{"dropped_blur", "dropped_duplicate", "dropped_target"}``.
    """
    n = len(sharpness)
    if n == 0:
        return [], {"dropped_blur": 0, "dropped_duplicate": 0, "dropped_target": 0}
    s = np.asarray(sharpness, dtype=np.float64)
    if cfg.blur_window > 0:
        ref = median_filter(s, size=min(cfg.blur_window, n), mode="nearest")
    else:
        ref = np.full(n, np.median(s))
    sharp = [i for i in range(n) if s[i] >= cfg.blur_ratio * ref[i]]
    kept: list[int] = []
    seen: set[bytes] = set()
    for i in sharp:
        if digests is not None:
            if digests[i] in seen:
                continue
            seen.add(digests[i])
        elif kept and np.abs(thumbs[i] - thumbs[kept[-1]]).mean() < cfg.dedup_threshold:
            continue
        kept.append(i)
    n_unique = len(kept)
    if len(kept) > cfg.target_count:
        windows = np.array_split(np.array(kept), cfg.target_count)
        kept = [int(w[np.argmax(s[w])]) for w in windows]
    return kept, {
        "dropped_blur": n - len(sharp),
        "dropped_duplicate": len(sharp) - n_unique,
        "dropped_target": n_unique - len(kept),
    }


def extract_frames(kind: str, paths: list[Path], root: Path, out_dir: Path, cfg: FramesConfig) -> dict[str, Any]:
    """Write the selected frames of ``paths`` (found by :func:`find_input` in ``root``) into
    ``out_dir`` as ``00000.png ...``; returns the ``frames.json`` record (without provenance)."""
    source = iter_video(paths[0], cfg.video_candidates) if kind == "video" else iter_images(paths, root, cfg.max_side)
    total = cfg.video_candidates if kind == "video" else len(paths)
    cands: list[Candidate] = []
    for name, t, image in progress(source, total=total, desc="frames", unit="frame"):
        image = downscale(image, cfg.max_side)
        sharpness, thumb = measure(image)
        path = out_dir / f".candidate_{len(cands):06d}.png"
        image.save(path, compress_level=3)
        digest = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
        cands.append(Candidate(name, t, path, sharpness, thumb, digest))
    unreadable = len(paths) - len(cands) if kind == "images" else 0
    if len(cands) < cfg.min_frames:
        what = f"{len(cands)} of {len(paths)} images readable" if kind == "images" else f"{len(cands)} frames decoded"
        raise M3Error(
            f"{root}: only {what}, need at least {cfg.min_frames}; add more (readable) images or a longer video"
        )
    kept, counts = select_frames(
        np.array([c.sharpness for c in cands]),
        np.stack([c.thumb for c in cands]),
        cfg,
        [c.digest for c in cands] if kind == "images" else None,
    )
    frames = []
    for i, k in enumerate(kept):
        c = cands[k]
        name = f"{i:05d}.png"
        c.path.rename(out_dir / name)
        frames.append({"name": name, "source": c.source, "time": c.time, "sharpness": round(c.sharpness, 6)})
    for c in cands:
        c.path.unlink(missing_ok=True)
    if len(frames) < cfg.min_frames:
        raise M3Error(
            f"{root}: only {len(frames)} frame(s) left after filtering ({counts}), need at least {cfg.min_frames}; "
            "lower frames.blur_ratio / frames.dedup_threshold or add more images"
        )
    stats = {
        "candidates": len(cands),
        "unreadable": unreadable,
        **counts,
        "kept": len(frames),
    }
    return {"source_kind": kind, "frames": frames, "stats": stats}
