"""Camera poses with pycolmap: SIFT features, matching, incremental or global mapping, undistortion.

Everything runs inside a caller-given work folder (the feature database and intermediate models
live there, never in the outputs). :func:`run_sfm` returns the largest reconstruction;
:func:`triangulate_known` adds sparse points to cameras whose poses are already known (imports),
matching each view with its nearest known cameras (:func:`spatial_pairs`);
:func:`undistort` writes the final PINHOLE model (binary) and undistorted images.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import M3Error
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


def spatial_pairs(
    centers: np.ndarray, k: int, min_gap: int = 0, order: np.ndarray | None = None
) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, sorted: each of ``centers [N, 3]`` with its ``k`` nearest
    others among those whose ``order [N]`` (default ``0..N-1``) differs by more than ``min_gap``
    (equal distances: the lower index first).

    Every view gets ``min(k, available)`` partners, so there are at most ``N * k`` pairs (fewer
    where two views choose each other), against ``N (N - 1) / 2`` for exhaustive matching.
    """
    n = len(centers)
    order = np.arange(n) if order is None else np.asarray(order)
    pairs: set[tuple[int, int]] = set()
    for start in range(0, n, 256):  # blocks of rows keep the distance matrix small
        rows = np.arange(start, min(n, start + 256))
        dist = np.linalg.norm(centers[rows, None, :] - centers[None, :, :], axis=-1)
        dist[np.abs(order[rows, None] - order[None, :]) <= min_gap] = np.inf
        for i, row in zip(rows, dist):
            nearest = np.argsort(row, kind="stable")[:k]
            pairs.update((min(i, j), max(i, j)) for j in nearest[np.isfinite(row[nearest])])
    return sorted((int(i), int(j)) for i, j in pairs)


def _match_options(cfg: PosesConfig) -> dict[str, Any]:
    pycolmap = _pycolmap()
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads(cfg.num_threads)
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = cfg.seed
    return dict(matching_options=matching, verification_options=verification, device=pycolmap.Device.cpu)


def match_pairs(database: Path, names: list[str], pairs: list[tuple[int, int]], cfg: PosesConfig) -> None:
    """Verified matches of the image pairs ``pairs`` (indices into ``names``) into ``database``.

    The pairs go through a list file next to the database (pycolmap's imported-pairs matcher);
    pairs already matched are skipped.
    """
    spaced = [name for name in names if len(name.split()) != 1]
    if spaced:  # pycolmap splits the list file's lines at spaces
        raise M3Error(
            f"{spaced[0]}: image name with whitespace, which pycolmap's pair list cannot hold; rename the "
            "image, or set poses.spatial_neighbors: 0 (match by poses.matcher)"
        )
    pycolmap = _pycolmap()
    listing = database.with_name(database.stem + "-pairs.txt")
    listing.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in pairs))
    log.info("matching features (%d image pairs)", len(pairs))
    pairing = pycolmap.ImportedPairingOptions()
    pairing.match_list_path = listing
    pycolmap.match_image_pairs(database, pairing_options=pairing, **_match_options(cfg))


def extract_and_match(
    database: Path,
    images_dir: Path,
    names: list[str],
    cfg: PosesConfig,
    matcher: str,
    single_camera: bool | None = None,
) -> None:
    """SIFT features (CPU) of ``names`` in ``images_dir`` into ``database``, then verified matches
    (``matcher``: sequential | exhaustive | none, for pairs matched afterwards by :func:`match_pairs`).

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
    if matcher == "none":
        return
    log.info("matching features (%s)", matcher)
    if matcher == "sequential":
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = cfg.sequential_overlap
        pairing.num_threads = threads(cfg.num_threads)
        pycolmap.match_sequential(database, pairing_options=pairing, **_match_options(cfg))
    else:
        pycolmap.match_exhaustive(database, **_match_options(cfg))


def _mapping_options(cfg: PosesConfig) -> Any:
    pycolmap = _pycolmap()
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads(cfg.mapper_threads)
    options.random_seed = options.mapper.random_seed = options.triangulation.random_seed = cfg.seed
    return options


def _global_options(cfg: PosesConfig) -> Any:
    """GLOMAP's options on ``mapper_threads`` CPU threads, every random stage seeded with ``seed``."""
    pycolmap = _pycolmap()
    options = pycolmap.GlobalPipelineOptions()
    mapper, n = options.mapper, threads(cfg.mapper_threads)
    options.num_threads = mapper.num_threads = n
    mapper.bundle_adjustment.ceres.solver_options.num_threads = n
    options.random_seed = mapper.random_seed = cfg.seed
    mapper.rotation_averaging.random_seed = mapper.global_positioning.random_seed = cfg.seed
    mapper.retriangulation.random_seed = cfg.seed
    mapper.global_positioning.use_gpu = mapper.bundle_adjustment.ceres.use_gpu = False
    return options


def _calibrate(database: Path, cfg: PosesConfig) -> None:
    """Focal lengths from the verified two-view geometries, for cameras without a prior (no EXIF).

    GLOMAP has no initial pair to calibrate from and needs focal priors; pycolmap's view-graph
    calibration estimates them and upgrades the geometries in ``database`` to calibrated.
    """
    pycolmap = _pycolmap()
    db = pycolmap.Database.open(database)
    try:
        known = all(camera.has_prior_focal_length for camera in db.read_all_cameras())
    finally:
        db.close()
    if known:
        return
    options = pycolmap.ViewGraphCalibrationOptions()
    options.random_seed = cfg.seed
    log.info("calibrating focal lengths from the view graph (no prior focal length)")
    if not pycolmap.calibrate_view_graph(database, options):
        log.warning("view-graph calibration failed; the global mapper starts from the default focal length")


def _attempts(cfg: PosesConfig) -> list[tuple[str, dict[str, float]]]:
    """The mapper runs tried in turn: ``(incremental|global, initialisation)``, ``mapper_attempts`` at most.

    The global mapper has no initial pair to relax: when its largest model is too small, the
    retries are incremental runs (defaults, then the first fallback), on the database as the
    view-graph calibration left it.
    """
    incremental = [("incremental", init) for init in INIT_FALLBACKS]
    runs = incremental if cfg.mapper == "incremental" else [("global", {}), *incremental]
    return runs[: max(1, cfg.mapper_attempts)]


def _map(database: Path, images_dir: Path, n_images: int, out: Path, cfg: PosesConfig) -> Any:
    """The largest model of the mapper runs of :func:`_attempts` over ``database`` (None when empty)."""
    pycolmap = _pycolmap()
    best = None
    for attempt, (kind, init) in enumerate(_attempts(cfg)):
        pycolmap.set_random_seed(cfg.seed)
        log.info("%s mapping%s", kind, f" (retry {attempt}: {init})" if attempt else "")
        (out / str(attempt)).mkdir(parents=True, exist_ok=True)
        if kind == "global":
            _calibrate(database, cfg)
            models = pycolmap.global_mapping(database, images_dir, out / str(attempt), options=_global_options(cfg))
        else:
            options = _mapping_options(cfg)
            for key, value in init.items():
                setattr(options.mapper, key, value)
            models = pycolmap.incremental_mapping(database, images_dir, out / str(attempt), options=options)
        for rec in models.values():
            if best is None or rec.num_reg_images() > best.num_reg_images():
                best = rec
        registered = best.num_reg_images() if best is not None else 0
        log.info("%d model(s); the largest so far has %d of %d views", len(models), registered, n_images)
        if registered >= cfg.retry_below * n_images:
            break
    return best


def loop_pairs(rec: Any, names: list[str], cfg: PosesConfig) -> list[tuple[int, int]]:
    """Loop-closure pairs of a sequentially matched model ``rec``: each registered frame with its
    ``loop_neighbors`` nearest registered frames (camera centres) beyond the sequential window.

    Indices into ``names`` (frame order). Retrieval by a vocabulary tree (pycolmap's
    ``loop_detection``) would find loops the drifted first model hides, but needs a vocabulary
    file that m3 does not download; the spatial pairs need none.
    """
    index = {name: i for i, name in enumerate(names)}
    images = sorted((index[im.name], im) for im in rec.images.values() if im.has_pose and im.name in index)
    if not images:
        return []
    frames = np.array([i for i, _ in images])
    centers = np.array([im.projection_center() for _, im in images])
    pairs = spatial_pairs(centers, cfg.loop_neighbors, cfg.sequential_overlap, frames)
    return [(int(frames[a]), int(frames[b])) for a, b in pairs]


def run_sfm(images_dir: Path, names: list[str], work: Path, cfg: PosesConfig, matcher: str) -> Any:
    """SfM over ``names`` (``matcher``: sequential|exhaustive; ``cfg.mapper``: incremental|global);
    the largest ``pycolmap.Reconstruction``, or None when nothing could be reconstructed.

    Sequential matching with ``loop_neighbors`` maps twice: the first model's camera centres
    give the loop-closure pairs (:func:`loop_pairs`), matched before the second mapping; the
    larger model wins (the second on a tie). ``work`` receives ``database.db`` and the mapper's
    models; nothing is written elsewhere.
    """
    pycolmap = _pycolmap()
    pycolmap.set_random_seed(cfg.seed)
    database = work / "database.db"
    extract_and_match(database, images_dir, names, cfg, matcher)
    best = _map(database, images_dir, len(names), work / "sparse", cfg)
    if best is None or matcher != "sequential" or not cfg.loop_neighbors:
        return best
    pairs = loop_pairs(best, names, cfg)
    if not pairs:
        return best
    log.info("loop closure: %d spatially near pairs beyond the sequential window", len(pairs))
    match_pairs(database, names, pairs, cfg)
    closed = _map(database, images_dir, len(names), work / "loop", cfg)
    return closed if closed is not None and closed.num_reg_images() >= best.num_reg_images() else best


def triangulate_known(rec: Any, images_dir: Path, work: Path, cfg: PosesConfig) -> Any:
    """Sparse points for ``rec`` (cameras and poses known, kept fixed): extract, match, triangulate.

    The database is seeded with ``rec``'s cameras, rigs, frames and images (same ids), so the
    extracted features attach to the known views. With ``spatial_neighbors`` each view is matched
    with that many nearest known camera centres (:func:`spatial_pairs`, matched as a pair list),
    else by the matcher SfM would use. Returns the triangulated reconstruction.
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
    images = sorted(rec.images.values(), key=lambda im: im.name)
    names = [image.name for image in images]
    if cfg.spatial_neighbors:
        extract_and_match(database, images_dir, names, cfg, "none")
        centers = np.array([image.projection_center() for image in images])
        match_pairs(database, names, spatial_pairs(centers, cfg.spatial_neighbors), cfg)
    else:
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
