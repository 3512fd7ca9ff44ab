"""Stage ``poses``: frames -> COLMAP model (binary, PINHOLE) + undistorted images + stats.

Reads ``params.yaml: poses``. ``source: sfm`` runs pycolmap on ``data/<scene>/frames``;
``source: colmap`` / ``transforms`` import known cameras from ``import_path`` (relative to the
scene folder) and triangulate sparse points when the import has none. Outputs::

    data/<scene>/colmap/sparse/0/{cameras,images,points3D}.bin   PINHOLE, undistorted
    data/<scene>/colmap/images/<frame name>                      undistorted images
    data/<scene>/colmap/provenance.json                          config, inputs and code hashes, source
    data/<scene>/poses/stats.json                                registered views, points, errors, seconds
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.core.code import code_hash
from pipeline.core.errors import M3Error
from pipeline.core.io import atomic_dir, hash_files, provenance, read_json, write_json
from pipeline.core.scene import Scene
from pipeline.poses.colmap_import import Imported, load_colmap, load_transforms
from pipeline.poses.config import PosesConfig
from pipeline.poses.sfm import choose_matcher, model_stats, run_sfm, triangulate_known, undistort
from stages.command import PARAMS, SCENE, Options, command, resolve_scene

log = logging.getLogger(__name__)


def _frames(scene: Scene) -> tuple[list[str], str, list[Path]]:
    """Frame names, ``source_kind`` (video|images) and the files that identify the frames."""
    meta_path = scene.frames_dir / "frames.json"
    if not meta_path.is_file():
        raise M3Error(f"{scene.frames_dir}: no frames (frames.json missing); run `m3 frames {scene.name}` first")
    meta = read_json(meta_path)
    names = [f["name"] for f in meta.get("frames", [])]
    missing = [n for n in names if not (scene.frames_dir / n).is_file()]
    if missing:
        raise M3Error(
            f"{scene.frames_dir / missing[0]}: frame listed in frames.json is missing; rerun `m3 frames {scene.name}`"
        )
    return names, str(meta.get("source_kind", "images")), [meta_path, *(scene.frames_dir / n for n in names)]


def _sfm(config: PosesConfig, scene: Scene, work: Path) -> tuple[Imported, int, str]:
    names, kind, files = _frames(scene)
    if len(names) < config.min_registered:
        raise M3Error(
            f"{scene.frames_dir}: only {len(names)} frame(s), need at least {config.min_registered}; "
            "add more images/video or lower frames.blur_ratio / raise frames.target_count"
        )
    matcher = choose_matcher(config, kind, len(names))
    rec = run_sfm(scene.frames_dir, names, work, config, matcher)
    registered = rec.num_reg_images() if rec is not None else 0
    if registered < config.min_registered:
        raise M3Error(
            f"{scene.frames_dir}: only {registered} of {len(names)} views registered (need >= "
            f"{config.min_registered}); the frames do not overlap enough - capture more overlapping views of the "
            "scene, or try poses.matcher: exhaustive and a higher poses.max_num_features"
        )
    return Imported(rec, scene.frames_dir, files), len(names), f"sfm ({kind}, {matcher} matching)"


def _import(config: PosesConfig, scene: Scene, work: Path) -> tuple[Imported, int, str]:
    if config.source == "colmap":
        imported = load_colmap(scene.root, config.import_path, config.import_images)
    else:
        imported = load_transforms(scene.root, config.import_path)
    total = imported.rec.num_reg_images()
    if imported.rec.num_points3D() == 0:
        imported.rec = triangulate_known(imported.rec, imported.images_dir, work, config)
    return imported, total, f"{config.source} ({config.import_path})"


def run(config: PosesConfig, scene: Scene) -> dict[str, Any]:
    """Poses of ``scene``; writes ``colmap/`` atomically and ``poses/stats.json``; returns the stats."""
    start = time.perf_counter()
    scene.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scene.root, prefix=".poses-work-") as tmp:
        work = Path(tmp)
        result, total, source = (_sfm if config.source == "sfm" else _import)(config, scene, work)
        stats = model_stats(result.rec, total)
        prov = provenance("poses", config, hash_files(result.files), code_hash(__name__), source=source)
        with atomic_dir(scene.colmap_dir) as out:
            undistort(result.rec, result.images_dir, work, out)
            write_json(out / "provenance.json", prov)
    stats["seconds"] = round(time.perf_counter() - start, 2)
    write_json(scene.poses_dir / "stats.json", stats)
    log.info(
        "%s: %d/%d views registered, %d points, reprojection error %.3f px, %.1f s",
        scene.name,
        stats["registered_views"],
        total,
        stats["points"],
        stats["mean_reprojection_error_px"],
        stats["seconds"],
    )
    return stats


@command(PosesConfig)
def cli(options: Options[PosesConfig], scene: str = SCENE, params: Path = PARAMS) -> None:
    """Estimate camera poses (pycolmap SfM) or import them (COLMAP model / transforms.json).

    Writes data/<scene>/colmap/ (PINHOLE model + undistorted images) and data/<scene>/poses/stats.json.
    """
    run(options.load("poses", params), resolve_scene(scene))
