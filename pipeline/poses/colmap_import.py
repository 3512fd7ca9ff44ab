"""Import known cameras instead of running SfM: a COLMAP model, a NeRF ``transforms.json`` or LLFF's
``poses_bounds.npy``.

Both return an in-memory ``pycolmap.Reconstruction`` (ids from 1, one trivial rig/frame per
image), the folder its image names are relative to, and the input files (for provenance).
``transforms.json`` (instant-ngp / nerfstudio / Blender) stores camera-to-world with OpenGL
axes; it is converted to COLMAP world-to-camera with OpenCV axes (flip y and z). With
``poses.split: dataset`` the held-out file beside it (``transforms_test.json``) is imported too:
its views are posed, and recorded as held out by the poses stage. ``poses_bounds.npy`` stores
camera-to-world with [down, right, back] axes (:func:`load_llff`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.core.errors import M3Error
from pipeline.core.geometry import w2c_from_opengl_c2w
from pipeline.core.scene import IMAGE_EXTS, import_pycolmap

log = logging.getLogger(__name__)
MODEL_FILES = ("cameras", "images", "points3D")


@dataclass(frozen=True)
class KnownView:
    """A view with known camera: image ``name``, COLMAP camera ``model``, size, ``params`` and
    world-to-camera ``w2c [4, 4]`` (OpenCV axes)."""

    name: str
    model: str
    width: int
    height: int
    params: list[float]
    w2c: np.ndarray


@dataclass
class Imported:
    """A model with known poses: ``rec`` (pycolmap.Reconstruction), its images and input files;
    ``held_out``: views of the dataset's test split, posed but not in ``rec`` (added after the
    points are triangulated from the training views, :func:`add_views`)."""

    rec: Any
    images_dir: Path
    files: list[Path]
    held_out: list[KnownView] = field(default_factory=list)


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


def _read_frames(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The top-level keys and the frames of the transforms file ``path`` (untrusted: checked)."""
    try:
        data = json.loads(path.read_text())
        frames = data["frames"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise M3Error(f"{path}: not a readable transforms.json with a 'frames' list ({exc}); fix the file") from exc
    if not isinstance(frames, list) or not frames or not all(isinstance(f, dict) for f in frames):
        raise M3Error(f"{path}: 'frames' is empty or not a list of frames; add the views")
    return {k: v for k, v in data.items() if k != "frames"}, frames


def held_out_file(train_file: Path) -> Path:
    """The dataset's held-out split next to ``train_file``: ``transforms_test.json``, or
    ``transforms_val.json`` when there is no test file (NeRF-synthetic layout)."""
    for name in ("transforms_test.json", "transforms_val.json"):
        if (train_file.parent / name).is_file():
            return train_file.parent / name
    raise M3Error(
        f"{train_file.parent}: no transforms_test.json or transforms_val.json beside {train_file.name}; "
        "add the held-out split or set poses.split: none"
    )


def add_views(rec: Any, views: list[KnownView]) -> None:
    """Add ``views`` to ``rec`` (ids after its largest), one trivial rig/frame per image, a camera
    per distinct intrinsics (reused when ``rec`` has an equal one)."""
    pycolmap = import_pycolmap()
    cameras = {(c.model.name, c.width, c.height, *c.params): cid for cid, c in rec.cameras.items()}
    image_id = max(rec.images, default=0)
    for v in views:
        key = (v.model, v.width, v.height, *v.params)
        if key not in cameras:
            cameras[key] = max(cameras.values(), default=0) + 1
            camera = pycolmap.Camera(
                model=v.model, width=v.width, height=v.height, params=v.params, camera_id=cameras[key]
            )
            rec.add_camera_with_trivial_rig(camera)
        image_id += 1
        image = pycolmap.Image(name=v.name, camera_id=cameras[key], image_id=image_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(v.w2c[:3, :4]))


def load_transforms(root: Path, import_path: str | None, split: str = "none") -> Imported:
    """A NeRF ``transforms.json`` at ``root/import_path`` as a reconstruction without points.

    Intrinsics come from ``fl_x/fl_y/cx/cy`` (or ``camera_angle_x``), per frame or top level;
    nonzero ``k1,k2,p1,p2`` give an OPENCV camera (undistorted later). Image names are the files'
    paths relative to their common folder. ``split: dataset`` also reads the held-out file beside
    it (:func:`held_out_file`): those views come back in ``held_out``, outside ``rec``, so that
    points are triangulated from the training views only.
    """
    pycolmap = import_pycolmap()
    path = _resolve(root, import_path, "transforms.json")
    if path.is_dir():
        path = path / "transforms.json"
    sources = [path, held_out_file(path)] if split == "dataset" else [path]
    parts = [(src, *_read_frames(src)) for src in sources]
    files = [[_image_file(src.parent, str(f.get("file_path", ""))) for f in frames] for src, _, frames in parts]
    images_dir = Path(os.path.commonpath([str(f.parent) for group in files for f in group]))
    known: list[list[KnownView]] = []
    for (src, top, frames), group in zip(parts, files):
        views = []
        for frame, file in zip(frames, group):
            model, w, h, params = _intrinsics(top | frame, file)
            try:
                c2w = np.asarray(frame["transform_matrix"], dtype=np.float64).reshape(4, 4)
            except (KeyError, ValueError, TypeError) as exc:
                raise M3Error(f"{src}: {file.name} has no 4x4 transform_matrix ({exc}); fix the frame") from exc
            name = file.relative_to(images_dir).as_posix()
            views.append(KnownView(name, model, w, h, params, w2c_from_opengl_c2w(c2w)))
        known.append(views)
    names = [v.name for views in known for v in views]
    if len(set(names)) != len(names):
        raise M3Error(f"{path}: the same image is listed twice; remove the duplicate frame")
    rec = pycolmap.Reconstruction()
    add_views(rec, known[0])
    held_out = known[1] if len(known) > 1 else []
    log.info("imported %s: %d views (+%d held out), %d camera(s)", path, len(names) - len(held_out), len(held_out),
             rec.num_cameras())  # fmt: skip
    return Imported(rec, images_dir, [*sources, *(f for group in files for f in group)], held_out)


def _llff_c2w(pose: np.ndarray, where: str) -> np.ndarray:
    """OpenGL camera-to-world ``[4, 4]`` of an LLFF ``[3, 4]`` pose (rotation columns: the camera's
    down, right and back axes in the world)."""
    rot = np.stack([pose[:, 1], -pose[:, 0], pose[:, 2]], axis=1)
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-4) or np.linalg.det(rot) < 0:
        raise M3Error(f"{where}: the pose's rotation is not orthonormal; fix or regenerate poses_bounds.npy")
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = rot, pose[:, 3]
    return c2w


def load_llff(root: Path, import_path: str | None, import_images: str | None = None) -> Imported:
    """LLFF's ``poses_bounds.npy`` at ``root/import_path`` (the file or its folder) as a
    reconstruction without points.

    Each of its ``[N, 17]`` rows is a ``3x5`` matrix (camera-to-world ``[3, 4]`` with axes [down,
    right, back], then the full-size images' ``H, W, focal``) and near/far bounds (unused). The
    images are those of ``import_images`` (default: ``images/`` beside it; ``images_8`` for LLFF's
    504x378 protocol) in name order, as LLFF pairs them; the focal length is scaled to their size.
    """
    pycolmap = import_pycolmap()
    path = _resolve(root, import_path, "poses_bounds.npy")
    if path.is_dir():
        path = path / "poses_bounds.npy"
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise M3Error(f"{path}: not a readable poses_bounds.npy ({exc}); fix poses.import_path") from exc
    if rows.ndim != 2 or rows.shape[1] != 17 or not rows.size or not np.isfinite(rows).all():
        raise M3Error(f"{path}: expected an [N, 17] array of finite numbers (LLFF), got shape {rows.shape}")
    images_dir = root / import_images if import_images else path.parent / "images"
    if not images_dir.is_dir():
        raise M3Error(f"{images_dir}: images folder not found; set poses.import_images (e.g. input/images_8)")
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
    if len(files) != len(rows):
        raise M3Error(
            f"{images_dir}: {len(files)} images for the {len(rows)} poses of {path.name}; point "
            "poses.import_images at the folder of the posed images"
        )
    views = []
    for row, file in zip(rows.astype(np.float64), files):
        pose = row[:15].reshape(3, 5)
        h, w, focal = pose[:, 4]
        with Image.open(file) as im:
            iw, ih = im.size
        c2w = _llff_c2w(pose[:, :4], f"{path} ({file.name})")
        params = [focal * iw / w, focal * ih / h, iw / 2.0, ih / 2.0]
        views.append(KnownView(file.name, "PINHOLE", iw, ih, params, w2c_from_opengl_c2w(c2w)))
    rec = pycolmap.Reconstruction()
    add_views(rec, views)
    log.info("imported %s: %d views from %s", path, len(views), images_dir)
    return Imported(rec, images_dir, [path, *files])
