"""Configs of the ``frames`` and ``poses`` stages (``params.yaml: frames``, ``poses``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pipeline.core.config import Checked, Count, Fraction, Natural, NonNegative, Range

CameraModel = Literal["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"]


@dataclass(frozen=True)
class FramesConfig(Checked):
    """``params.yaml: frames``: which frames of the input video or photo set are kept."""

    max_side: Annotated[int, Range(16)] = 1024
    """Downscale frames so that their longer side is at most this (pixels; never upscaled)."""
    target_count: Count = 60
    """Keep at most this many frames, evenly spread over the input."""
    blur_ratio: NonNegative = 0.35
    """Drop frames whose sharpness (variance of the Laplacian) is below this x the median."""
    blur_window: Natural = 0
    """Median over all candidates (0) or over this many neighbouring ones (long videos)."""
    dedup_threshold: Fraction = 0.02
    """Videos: drop a frame whose 32x32 thumbnail differs from the last kept one by less (mean abs, 0..1).
    Photo sets lose only exact duplicates (identical pixels)."""
    video_candidates: Count = 300
    """Sample a video at most this many times (evenly) before filtering."""
    min_frames: Count = 3
    """Fewer usable frames than this is an error."""


@dataclass(frozen=True)
class PosesConfig(Checked):
    """``params.yaml: poses``: structure from motion, or an import of known cameras."""

    source: Literal["sfm", "colmap", "transforms", "llff"] = "sfm"
    """sfm (pycolmap on the frames) | colmap (import a COLMAP model) | transforms (import a NeRF
    transforms.json) | llff (import LLFF's poses_bounds.npy)."""
    import_path: str | None = None
    """With colmap/transforms/llff: the model folder, transforms.json or poses_bounds.npy, relative
    to the scene folder."""
    import_images: str | None = None
    """With colmap/llff: the images folder of the model (default: images/ next to it; LLFF's 504x378
    protocol: images_8)."""
    split: Literal["none", "dataset"] = "none"
    """With transforms: dataset also imports transforms_test.json (else transforms_val.json) beside
    import_path; its views are posed but held out (colmap/split.json): never trained on, evaluated
    (none: train and evaluate hold out every test_every-th view)."""
    held_out: list[str] = field(default_factory=list)
    """Image names (as in colmap/images) held out like a dataset split, with any source (empty: none)."""
    matcher: Literal["auto", "sequential", "exhaustive"] = "auto"
    """auto (sequential for videos, exhaustive for photo sets up to exhaustive_max) | sequential | exhaustive."""
    exhaustive_max: Count = 100
    """With matcher auto: photo sets up to this many images are matched exhaustively."""
    sequential_overlap: Count = 10
    """Sequential matching: each frame is matched with this many following frames."""
    loop_neighbors: Natural = 0
    """Sequential matching: after a first mapping, match each frame with this many nearest frames (by
    its camera centre) beyond the sequential window and map again, to close loops (0: off)."""
    spatial_neighbors: Natural = 20
    """Imports without points: match each view with this many nearest known camera centres
    (0: by matcher, as SfM)."""
    mapper: Literal["incremental", "global"] = "incremental"
    """incremental (adds views one at a time) | global (GLOMAP: all rotations, then all positions,
    then one bundle adjustment)."""
    camera_model: CameraModel = "SIMPLE_RADIAL"
    """COLMAP camera model to estimate (undistorted to PINHOLE afterwards)."""
    single_camera: bool = field(default=True, metadata={"off": "camera-per-image"})
    """All frames share one camera (a video, one phone); false: one camera per image."""
    max_num_features: Count = 8192
    """Most SIFT features kept per image."""
    min_registered: Annotated[int, Range(2)] = 3
    """Fewer registered views than this is an error."""
    mapper_attempts: Count = 3
    """Mapper runs with relaxed initialisation while the largest model stays small (1: no retry)."""
    retry_below: Fraction = 0.5
    """Retry the mapper while its largest model registers fewer than this fraction of the frames."""
    num_threads: Annotated[int, Range(-1)] = -1
    """CPU threads of feature extraction and matching (-1: all cores; the model does not depend on it)."""
    mapper_threads: Annotated[int, Range(-1)] = 1
    """CPU threads of the mapper and its bundle adjustments (1: a rerun gives the same model bit for
    bit; -1: all cores, faster on large scenes, but the points then differ from run to run in their
    last digits and a few points, so `dvc repro -f poses` retrains everything downstream)."""
    seed: Natural = 0
    """RANSAC and mapper seed (same seed, same model)."""
