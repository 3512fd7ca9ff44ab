"""Camera poses with pycolmap: SIFT features, matching, incremental mapping, undistortion.

Everything runs inside a caller-given work folder (the feature database and intermediate models
live there, never in the outputs). :func:`run_sfm` returns the largest reconstruction;
:func:`triangulate_known` adds sparse points to cameras whose poses are already known (imports);
:func:`undistort` writes the final PINHOLE model (binary) and undistorted images.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from pipeline.core.scene import import_pycolmap
from pipeline.poses.config import PosesConfig

log = logging.getLogger(__name__)

# Mapper initialisation tried in turn while the largest model stays small: the defaults, then
# initial pairs with more forward motion, then pairs with a smaller triangulation angle. Without
# EXIF focal lengths a poor initial pair can collapse the focal length and stall the model.
INIT_FALLBACKS: tuple[dict[str, float], ...] = (
    {},
    {"init_max_forward_motion": 0.99},
    {"init_min_tri_angle": 4.0},
)


def choose_matcher(cfg: PosesConfig, source_kind: str, n_images: int) -> str:
    """``sequential`` or ``exhaustive`` for ``n_images`` frames of a ``video``/``images`` input.

    ``auto``: videos are matched sequentially (neighbours in time overlap); photo sets of at most
    ``exhaustive_max`` images exhaustively; larger photo sets fall back to sequential matching
    in frame order (with quadratic overlap), since vocabulary-tree retrieval needs a vocabulary
    file that m3 does not download. Set ``matcher: exhaustive`` for large unordered sets.
    """
    if cfg.matcher != "auto":
        return cfg.matcher
    if source_kind == "video" or n_images > cfg.exhaustive_max:
        return "sequential"
    return "exhaustive"


def threads(n: int) -> int:
    """CPU threads for pycolmap: ``n``, or every core when it is -1."""
    return n if n > 0 else max(1, os.cpu_count() or 1)


def _pycolmap() -> Any:
    pycolmap = import_pycolmap()
    pycolmap.logging.minloglevel = 0 if log.isEnabledFor(logging.DEBUG) else 1
    return pycolmap


def extract_and_match(
    database: Path,
    images_dir: Path,
    names: list[str],
    cfg: PosesConfig,
    matcher: str,
    single_camera: bool | None = None,
) -> None:
    """SIFT features (CPU) of ``names`` in ``images_dir`` into ``database``, then verified matches.

    Images already in the database (with their cameras) are reused; new ones get a
    ``cfg.camera_model`` camera, one shared camera when ``single_camera``. An empty database first
    gets the images in the order of ``names`` (image ids 1, 2, ...): parallel extraction would
    otherwise number them in the order its threads finish, and the mapper's result depends on ids.
    """
    pycolmap = _pycolmap()
    single = cfg.single_camera if single_camera is None else single_camera
    mode = pycolmap.CameraMode.SINGLE if single else pycolmap.CameraMode.PER_IMAGE
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg.camera_model
    db = pycolmap.Database.open(database)
    try:
        empty = db.num_images() == 0
    finally:
        db.close()
    if empty:
        pycolmap.import_images(database, images_dir, camera_mode=mode, image_names=names, options=reader)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = threads(cfg.num_threads)
    extraction.sift.max_num_features = cfg.max_num_features
    log.info("extracting SIFT features of %d images", len(names))
    pycolmap.extract_features(
        database,
        images_dir,
        image_names=names,
        camera_mode=mode,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cpu,
    )
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads(cfg.num_threads)
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = cfg.seed
    common = dict(matching_options=matching, verification_options=verification, device=pycolmap.Device.cpu)
    log.info("matching features (%s)", matcher)
    if matcher == "sequential":
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = cfg.sequential_overlap
        pairing.num_threads = threads(cfg.num_threads)
        pycolmap.match_sequential(database, pairing_options=pairing, **common)
    else:
        pycolmap.match_exhaustive(database, **common)


def _mapping_options(cfg: PosesConfig) -> Any:
    pycolmap = _pycolmap()
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads(cfg.mapper_threads)
    options.random_seed = options.mapper.random_seed = options.triangulation.random_seed = cfg.seed
    return options


def run_sfm(images_dir: Path, names: list[str], work: Path, cfg: PosesConfig, matcher: str) -> Any:
    """Incremental SfM over ``names`` (``matcher``: sequential|exhaustive); the largest
    ``pycolmap.Reconstruction``, or None when nothing could be reconstructed.

    ``work`` receives ``database.db`` and the mapper's models; nothing is written elsewhere.
    """
    pycolmap = _pycolmap()
    pycolmap.set_random_seed(cfg.seed)
    database = work / "database.db"
    extract_and_match(database, images_dir, names, cfg, matcher)
    best = None
    for attempt, init in enumerate(INIT_FALLBACKS[: max(1, cfg.mapper_attempts)]):
        pycolmap.set_random_seed(cfg.seed)
        options = _mapping_options(cfg)
        for key, value in init.items():
            setattr(options.mapper, key, value)
        log.info("incremental mapping%s", f" (retry {attempt}: {init})" if init else "")
        models = pycolmap.incremental_mapping(database, images_dir, work / f"sparse{attempt}", options=options)
        for rec in models.values():
            if best is None or rec.num_reg_images() > best.num_reg_images():
                best = rec
        registered = best.num_reg_images() if best is not None else 0
        log.info("%d model(s); the largest so far has %d of %d views", len(models), registered, len(names))
        if registered >= cfg.retry_below * len(names):
            break
    return best


def triangulate_known(rec: Any, images_dir: Path, work: Path, cfg: PosesConfig) -> Any:
    """Sparse points for ``rec`` (cameras and poses known, kept fixed): extract, match, triangulate.

    The database is seeded with ``rec``'s cameras, rigs, frames and images (same ids), so the
    extracted features attach to the known views. Returns the triangulated reconstruction.
    """
    pycolmap = _pycolmap()
    pycolmap.set_random_seed(cfg.seed)
    database = work / "database.db"
    db = pycolmap.Database.open(database)
    try:
        for camera in rec.cameras.values():
            db.write_camera(camera, use_camera_id=True)
        for rig in rec.rigs.values():
            db.write_rig(rig, use_rig_id=True)
        for frame in rec.frames.values():
            db.write_frame(frame, use_frame_id=True)
        for image in rec.images.values():
            db.write_image(image, use_image_id=True)
    finally:
        db.close()
    names = sorted(image.name for image in rec.images.values())
    extract_and_match(database, images_dir, names, cfg, choose_matcher(cfg, "images", len(names)))
    out = work / "triangulated"
    out.mkdir(parents=True, exist_ok=True)
    log.info("triangulating points with known poses")
    return pycolmap.triangulate_points(rec, database, images_dir, out, options=_mapping_options(cfg))


def undistort(rec: Any, images_dir: Path, work: Path, out_dir: Path) -> None:
    """Write ``rec`` undistorted to PINHOLE: ``out_dir/sparse/0/*.bin`` and ``out_dir/images/``.

    Only registered views are written; image names stay as in ``rec``.
    """
    pycolmap = _pycolmap()
    model = work / "model"
    model.mkdir(parents=True, exist_ok=True)
    rec.write_binary(str(model))
    staging = work / "undistorted"
    log.info("undistorting %d views to PINHOLE", rec.num_reg_images())
    pycolmap.undistort_images(staging, model, images_dir, output_type="COLMAP")
    (out_dir / "sparse").mkdir(parents=True, exist_ok=True)
    shutil.move(staging / "sparse", out_dir / "sparse" / "0")
    shutil.move(staging / "images", out_dir / "images")


def model_stats(rec: Any, n_total: int) -> dict[str, Any]:
    """Summary numbers of a reconstruction: registered views, points, reprojection error, tracks."""
    return {
        "registered_views": int(rec.num_reg_images()),
        "total_views": int(n_total),
        "points": int(rec.num_points3D()),
        "mean_reprojection_error_px": float(rec.compute_mean_reprojection_error()),
        "mean_track_length": float(rec.compute_mean_track_length()),
        "cameras": int(rec.num_cameras()),
    }
