"""A scene on disk and its posed views.

A scene is a folder ``data/<scene>/`` holding ``input/`` (a video or images, added by the user)
and everything the stages produce beside it::

    input/                      video (mp4/mov/...) or images
    frames/                     numbered frames (stage ``frames``) + frames.json
    colmap/sparse/0/            COLMAP model, binary, PINHOLE cameras (stage ``poses``)
    colmap/images/              undistorted images matching the model (RGBA inputs keep their alpha)
    colmap/split.json           views held out by the dataset's own split, when imported with one
    poses/stats.json            registered views, points, reprojection error, seconds
    features/<model>.zarr       dense features [V, h, w, d] (stage ``features``)
    bank/<model>.zarr           PSC memory bank [t, d] (stage ``bank``)
    stats/<stage>-<model>.json  run figures of features and bank (DVC metrics: seconds, counts),
                                kept out of the folders later stages depend on
    model/                      trained Gaussians + memory (stage ``train``)
    eval/                       metrics.json, renders (stage ``evaluate``)

Camera convention everywhere inside: COLMAP world-to-camera, OpenCV axes (x right, y down,
z forward). Conversions happen at the edges (``transforms.json`` import).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import M3Error

DATA_ROOT = Path("data")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLIT_FILE = "split.json"
VIDEO_EXTS = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")


@dataclass(frozen=True)
class Scene:
    """Paths of one scene; ``root`` is ``data/<name>``."""

    root: Path

    @classmethod
    def resolve(cls, name_or_path: str | Path, data_root: Path = DATA_ROOT) -> Scene:
        """``demo`` -> ``data/demo``; anything with a path separator is taken as a folder."""
        p = Path(name_or_path)
        return cls(p if len(p.parts) > 1 or p.is_absolute() else Path(data_root) / p)

    @property
    def name(self) -> str:
        return self.root.name

    input_dir = property(lambda self: self.root / "input")
    frames_dir = property(lambda self: self.root / "frames")
    colmap_dir = property(lambda self: self.root / "colmap")
    sparse_dir = property(lambda self: self.root / "colmap" / "sparse" / "0")
    images_dir = property(lambda self: self.root / "colmap" / "images")
    split_path = property(lambda self: self.root / "colmap" / SPLIT_FILE)
    poses_dir = property(lambda self: self.root / "poses")
    features_dir = property(lambda self: self.root / "features")
    bank_dir = property(lambda self: self.root / "bank")
    model_dir = property(lambda self: self.root / "model")
    eval_dir = property(lambda self: self.root / "eval")

    def features_path(self, model: str) -> Path:
        return self.features_dir / f"{model}.zarr"

    def bank_path(self, model: str) -> Path:
        return self.bank_dir / f"{model}.zarr"

    def path_of(self, path: str | Path) -> Path:
        """``path`` relative to the scene folder (``~`` expanded; an absolute path is kept)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.root / p

    def stats_path(self, stage: str, model: str) -> Path:
        """Run figures of a per-model stage (``features``, ``bank``): timings live outside the
        folders later stages depend on, so a rerun that changes only them invalidates nothing."""
        return self.root / "stats" / f"{stage}-{model}.json"


@dataclass(frozen=True)
class View:
    """One posed, undistorted (PINHOLE) view.

    ``K [3, 3]`` intrinsics in pixels, ``w2c [4, 4]`` world-to-camera (OpenCV axes).
    """

    name: str
    image_path: Path
    K: np.ndarray
    w2c: np.ndarray
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates ``[3]``."""
        R, t = self.w2c[:3, :3], self.w2c[:3, 3]
        return -R.T @ t


def import_pycolmap() -> Any:
    """The ``pycolmap`` module, imported with this process's signal handlers kept: pycolmap's glog
    installs its own for SIGTERM (a native stack trace, no Python cleanup); m3's come back."""
    import signal
    import threading

    if "pycolmap" in sys.modules:
        return sys.modules["pycolmap"]
    main = threading.current_thread() is threading.main_thread()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    import pycolmap

    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)
    return pycolmap


def _read_model(scene: Scene):
    pycolmap = import_pycolmap()
    if not (scene.sparse_dir / "images.bin").is_file():
        raise M3Error(f"{scene.sparse_dir}: no COLMAP model; run `m3 poses {scene.name}` first")
    return pycolmap.Reconstruction(str(scene.sparse_dir))


def load_views(scene: Scene) -> list[View]:
    """All registered views of the scene's undistorted model, sorted by image name."""
    rec = _read_model(scene)
    views = []
    for image in rec.images.values():
        if not image.has_pose:
            continue
        cam = image.camera
        w2c = np.eye(4)
        w2c[:3, :4] = image.cam_from_world().matrix()
        views.append(
            View(
                name=image.name,
                image_path=scene.images_dir / image.name,
                K=np.asarray(cam.calibration_matrix(), dtype=np.float64),
                w2c=w2c,
                width=int(cam.width),
                height=int(cam.height),
            )
        )
    return sorted(views, key=lambda v: v.name)


def load_points(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Sparse points of the scene: ``xyz [P, 3] float64``, ``rgb [P, 3] uint8``."""
    rec = _read_model(scene)
    pts = list(rec.points3D.values())
    xyz = np.array([p.xyz for p in pts], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([p.color for p in pts], dtype=np.uint8).reshape(-1, 3)
    return xyz, rgb


def views_named(views: list[View], names: list[str], where: str) -> list[View]:
    """The views called ``names`` (image names), in that order; :class:`M3Error` naming ``where``
    (the option or setting that named them) and a few valid names for one that is not registered."""
    by_name = {v.name: v for v in views}
    missing = [n for n in names if n not in by_name]
    if missing:
        some = ", ".join(list(by_name)[:3])
        raise M3Error(
            f"{where}: '{missing[0]}' is not a registered view; use an image name of colmap/images ({some}, ...)"
        )
    return [by_name[n] for n in names]


def split_views(views: list[View], test_every: int, held_out: list[str] | None = None) -> tuple[list[View], list[View]]:
    """Train/test split: the views named in ``held_out`` (a dataset's own split, :func:`load_split`)
    when given, else every ``test_every``-th view (0, 8, 16, ...: LLFF's protocol with 8; 0: none)."""
    if held_out is not None:
        names = set(held_out)
        return [v for v in views if v.name not in names], [v for v in views if v.name in names]
    if test_every <= 0:
        return list(views), []
    test = [v for i, v in enumerate(views) if i % test_every == 0]
    train = [v for i, v in enumerate(views) if i % test_every != 0]
    return train, test


def load_split(scene: Scene) -> list[str] | None:
    """The image names the poses stage recorded as held out (``colmap/split.json``, written when an
    import brings the dataset's own test split), or None when the scene has no such split."""
    path = scene.split_path
    if not path.is_file():
        return None
    try:
        test = json.loads(path.read_text())["test"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise M3Error(f"{path}: not a readable split file ({exc}); rerun `m3 poses {scene.name}`") from exc
    if not isinstance(test, list) or not all(isinstance(n, str) for n in test):
        raise M3Error(f"{path}: 'test' must be a list of image names; rerun `m3 poses {scene.name}`")
    return test


def resampled_views(views: list[View], max_side: int) -> list[View]:
    """``views`` with size and intrinsics scaled so the longer side is at most ``max_side`` (0: unchanged)."""
    out = []
    for v in views:
        s = max_side / max(v.width, v.height) if max_side > 0 else 1.0
        if s >= 1.0:
            out.append(v)
            continue
        w, h = max(1, round(v.width * s)), max(1, round(v.height * s))
        K = v.K * np.array([[w / v.width], [h / v.height], [1.0]])
        out.append(dataclasses.replace(v, K=K, width=w, height=h))
    return out
