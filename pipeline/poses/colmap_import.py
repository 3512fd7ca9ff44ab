"""Import known cameras instead of running SfM: an existing COLMAP model or a NeRF ``transforms.json``.

Both return an in-memory ``pycolmap.Reconstruction`` (ids from 1, one trivial rig/frame per
image), the folder its image names are relative to, and the input files (for provenance).
``transforms.json`` (instant-ngp / nerfstudio / Blender) stores camera-to-world with OpenGL
axes; it is converted to COLMAP world-to-camera with OpenCV axes (flip y and z).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import M3Error
from pipeline.core.geometry import w2c_from_opengl_c2w
from pipeline.core.scene import IMAGE_EXTS, import_pycolmap

log = logging.getLogger(__name__)
MODEL_FILES = ("cameras", "images", "points3D")


@dataclass
class Imported:
    """A model with known poses: ``rec`` (pycolmap.Reconstruction), its images and input files."""

    rec: Any
    images_dir: Path
    files: list[Path]


def _resolve(root: Path, rel: str | None, what: str) -> Path:
    if not rel:
        raise M3Error(f"params.yaml: poses.import_path is empty; set it to the {what} (relative to {root})")
    path = root / rel
    if not path.exists():
        raise M3Error(f"{path}: {what} not found; fix poses.import_path (relative to the scene folder {root})")
    return path


def _model_dir(path: Path) -> Path:
    for cand in (path, path / "sparse" / "0", path / "sparse"):
        if any((cand / f"cameras{ext}").is_file() for ext in (".bin", ".txt")):
            return cand
    raise M3Error(
        f"{path}: no COLMAP model (cameras.bin/.txt, images.bin/.txt, points3D.bin/.txt) here or in "
        "sparse/0; point poses.import_path at the model folder"
    )


def _images_dir(root: Path, given: str | None, candidates: list[Path], first_name: str) -> Path:
    if given:
        images = root / given
        if not images.is_dir():
            raise M3Error(f"{images}: images folder not found; fix poses.import_images (relative to {root})")
        candidates = [images]
    for cand in candidates:
        if (cand / first_name).is_file():
            return cand
    tried = ", ".join(str(c) for c in candidates)
    raise M3Error(f"{first_name}: image of the imported model not found in {tried}; set poses.import_images")


def load_colmap(root: Path, import_path: str | None, import_images: str | None = None) -> Imported:
    """An existing COLMAP model (text or binary) at ``root/import_path`` and its images.

    ``import_path`` is the model folder or a COLMAP project holding ``sparse/0``; images are
    taken from ``import_images`` or the first ``images/`` folder found next to the model.
    """
    pycolmap = import_pycolmap()
    model = _model_dir(_resolve(root, import_path, "COLMAP model"))
    try:
        rec = pycolmap.Reconstruction(str(model))
    except Exception as exc:  # pycolmap raises plain RuntimeError/ValueError on malformed files
        raise M3Error(f"{model}: cannot read the COLMAP model ({exc}); export it again as text or binary") from exc
    images = [im for im in rec.images.values() if im.has_pose]
    if not images:
        raise M3Error(f"{model}: the COLMAP model has no registered images; export a model with poses")
    candidates = [
        model / "images",
        model.parent / "images",
        model.parent.parent / "images",
        model.parent.parent.parent / "images",
    ]
    images_dir = _images_dir(root, import_images, candidates, images[0].name)
    files = [p for p in model.iterdir() if p.stem in MODEL_FILES or p.stem in ("rigs", "frames")]
    files += [images_dir / im.name for im in images]
    _check_images(images_dir, [im.name for im in images])
    log.info("imported COLMAP model %s: %d views, %d points", model, len(images), rec.num_points3D())
    return Imported(rec, images_dir, files)


def _check_images(images_dir: Path, names: list[str]) -> None:
    missing = [n for n in names if not (images_dir / n).is_file()]
    if missing:
        raise M3Error(
            f"{images_dir}: {len(missing)} image(s) of the imported model missing (e.g. {missing[0]}); "
            "copy them there or set poses.import_images"
        )


def _image_file(base: Path, file_path: str) -> Path:
    path = (base / file_path).resolve()
    if path.suffix.lower() in IMAGE_EXTS and path.is_file():
        return path
    for ext in IMAGE_EXTS:  # Blender datasets omit the extension
        cand = path.with_name(path.name + ext)
        if cand.is_file():
            return cand
    raise M3Error(f"{base / file_path}: image listed in transforms.json not found; fix its file_path or add the image")


def _intrinsics(meta: dict[str, Any], image: Path) -> tuple[str, int, int, list[float]]:
    """COLMAP camera ``(model, width, height, params)`` from transforms.json keys (frame over top level)."""
    w, h = meta.get("w"), meta.get("h")
    if w is None or h is None:
        from PIL import Image

        with Image.open(image) as im:
            w, h = im.size
    w, h = int(w), int(h)
    if "fl_x" in meta:
        fx = float(meta["fl_x"])
    elif "camera_angle_x" in meta:
        fx = 0.5 * w / math.tan(0.5 * float(meta["camera_angle_x"]))
    else:
        raise M3Error(f"{image.name}: transforms.json has no focal length (fl_x or camera_angle_x); add one")
    if "fl_y" in meta:
        fy = float(meta["fl_y"])
    elif "camera_angle_y" in meta:
        fy = 0.5 * h / math.tan(0.5 * float(meta["camera_angle_y"]))
    else:
        fy = fx
    cx, cy = float(meta.get("cx", w / 2.0)), float(meta.get("cy", h / 2.0))
    dist = [float(meta.get(k, 0.0)) for k in ("k1", "k2", "p1", "p2")]
    if any(dist):
        return "OPENCV", w, h, [fx, fy, cx, cy, *dist]
    return "PINHOLE", w, h, [fx, fy, cx, cy]


def load_transforms(root: Path, import_path: str | None) -> Imported:
    """A NeRF ``transforms.json`` at ``root/import_path`` as a reconstruction without points.

    Intrinsics come from ``fl_x/fl_y/cx/cy`` (or ``camera_angle_x``), per frame or top level;
    nonzero ``k1,k2,p1,p2`` give an OPENCV camera (undistorted later). Image names are the files'
    paths relative to their common folder.
    """
    pycolmap = import_pycolmap()
    path = _resolve(root, import_path, "transforms.json")
    if path.is_dir():
        path = path / "transforms.json"
    try:
        data = json.loads(path.read_text())
        frames = data["frames"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise M3Error(f"{path}: not a readable transforms.json with a 'frames' list ({exc}); fix the file") from exc
    if not frames:
        raise M3Error(f"{path}: 'frames' is empty; add the views")
    files = [_image_file(path.parent, str(f.get("file_path", ""))) for f in frames]
    images_dir = Path(os.path.commonpath([str(f.parent) for f in files]))
    names = [f.relative_to(images_dir).as_posix() for f in files]
    if len(set(names)) != len(names):
        raise M3Error(f"{path}: the same image is listed twice; remove the duplicate frame")
    rec = pycolmap.Reconstruction()
    cameras: dict[tuple, int] = {}
    for image_id, (frame, file, name) in enumerate(zip(frames, files, names), start=1):
        meta = {k: v for k, v in data.items() if k != "frames"} | frame
        model, w, h, params = _intrinsics(meta, file)
        key = (model, w, h, *params)
        if key not in cameras:
            cameras[key] = len(cameras) + 1
            camera = pycolmap.Camera(model=model, width=w, height=h, params=params, camera_id=cameras[key])
            rec.add_camera_with_trivial_rig(camera)
        w2c = w2c_from_opengl_c2w(np.asarray(frame["transform_matrix"], dtype=np.float64))
        image = pycolmap.Image(name=name, camera_id=cameras[key], image_id=image_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(w2c[:3, :4]))
    log.info("imported %s: %d views, %d camera(s)", path, len(frames), len(cameras))
    return Imported(rec, images_dir, [path, *files])
