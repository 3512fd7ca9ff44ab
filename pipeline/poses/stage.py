"""The ``frames`` and ``poses`` stages' work on one scene.

:func:`make_frames`: ``input/`` (a video or photos) -> ``frames/`` (+ ``frames.json``).
:func:`estimate_poses`: ``frames/`` -> ``colmap/`` by SfM (``source: sfm``), or an import of known
cameras (``colmap`` / ``transforms`` / ``llff``, triangulated when the import has no points), undistorted to
PINHOLE (RGBA inputs keep their alpha, :func:`undistort_alpha`); ``colmap/split.json`` with the
held-out views when the import brings a split (``poses.split`` / ``held_out``); ``poses/stats.json``
with the registered views, points, reprojection error and seconds.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.core.code import code_hash
from pipeline.core.errors import M3Error
from pipeline.core.images import has_alpha
from pipeline.core.io import atomic_dir, hash_files, provenance, read_json, write_json
from pipeline.core.scene import SPLIT_FILE, Scene
from pipeline.poses.colmap_import import Imported, add_views, load_colmap, load_llff, load_transforms
from pipeline.poses.config import FramesConfig, PosesConfig
from pipeline.poses.frames import extract_frames, find_input
from pipeline.poses.sfm import choose_matcher, model_stats, run_sfm, triangulate_known, undistort

log = logging.getLogger(__name__)


def make_frames(config: FramesConfig, scene: Scene) -> dict[str, Any]:
    """Frames of ``scene`` from its ``input/`` into ``frames/`` (atomically); returns the
    ``frames.json`` record."""
    root = scene.input_dir
    kind, paths = find_input(root)
    prov = provenance("frames", config, hash_files(paths, root), code_hash(__name__))
    with atomic_dir(scene.frames_dir) as out:
        meta = extract_frames(kind, paths, root, out, config)
        meta["provenance"] = prov
        write_json(out / "frames.json", meta)
    return meta


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
    elif config.source == "llff":
        imported = load_llff(scene.root, config.import_path, config.import_images)
    else:
        imported = load_transforms(scene.root, config.import_path, config.split)
    if imported.rec.num_points3D() == 0:  # from the training views only: the held-out ones come after
        imported.rec = triangulate_known(imported.rec, imported.images_dir, work, config)
    add_views(imported.rec, imported.held_out)
    return imported, imported.rec.num_reg_images(), f"{config.source} ({config.import_path})"


def held_out_names(config: PosesConfig, result: Imported) -> list[str] | None:
    """The registered views held out (the dataset's split and ``held_out``, sorted), or None when
    neither is set (train and evaluate then hold out every ``test_every``-th view)."""
    if config.split == "none" and not config.held_out:
        return None
    registered = {im.name for im in result.rec.images.values() if im.has_pose}
    unknown = [n for n in config.held_out if n not in registered]
    if unknown:
        raise M3Error(f"params.yaml: poses.held_out names '{unknown[0]}', not a registered view; use an image name")
    return sorted({v.name for v in result.held_out} | set(config.held_out))


def undistort_alpha(rec: Any, images_dir: Path, work: Path, out: Path) -> int:
    """Give the undistorted images of RGBA inputs their alpha back; returns how many.

    COLMAP's undistorter writes RGB only, so the alpha channels are undistorted by the same
    camera model in a second pass (as grey images, opaque for views without alpha) and attached
    to the undistorted colours in ``out/images``. The alpha is kept, not composited here, so the
    background stays a training choice (``train.background``: a fixed colour, or a random one each
    step): images are composited where the colour is known, when they are read
    (:func:`pipeline.core.images.load_image`: white for the feature extractors; the training step;
    evaluation). RGB inputs are untouched.
    """
    names = [im.name for im in rec.images.values() if im.has_pose]
    alpha = [n for n in names if has_alpha(images_dir / n)]
    if not alpha:
        return 0
    mattes = work / "alpha"
    for name in names:
        with Image.open(images_dir / name) as im:
            matte = im.convert("RGBA").getchannel("A") if name in alpha else Image.new("L", im.size, 255)
        (mattes / name).parent.mkdir(parents=True, exist_ok=True)
        matte.save(mattes / name, format="PNG")
    undistort(rec, mattes, work / "alpha-work", work / "alpha-out")
    for name in alpha:
        with Image.open(out / "images" / name) as im, Image.open(work / "alpha-out" / "images" / name) as a:
            rgba = im.convert("RGB")
            rgba.putalpha(a.convert("L"))
        rgba.save(out / "images" / name)
    log.info("kept the alpha of %d RGBA view(s)", len(alpha))
    return len(alpha)


def estimate_poses(config: PosesConfig, scene: Scene) -> dict[str, Any]:
    """Poses of ``scene`` (SfM or an import); writes ``colmap/`` atomically and ``poses/stats.json``;
    returns the stats."""
    start = time.perf_counter()
    if config.split == "dataset" and config.source != "transforms":
        raise M3Error("params.yaml: poses.split: dataset needs poses.source: transforms; use poses.held_out instead")
    scene.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scene.root, prefix=".poses-work-") as tmp:
        work = Path(tmp)
        result, total, source = (_sfm if config.source == "sfm" else _import)(config, scene, work)
        stats = model_stats(result.rec, total)
        prov = provenance("poses", config, hash_files(result.files), code_hash(__name__), source=source)
        held_out = held_out_names(config, result)
        with atomic_dir(scene.colmap_dir) as out:
            undistort(result.rec, result.images_dir, work, out)
            undistort_alpha(result.rec, result.images_dir, work, out)
            if held_out is not None:
                write_json(out / SPLIT_FILE, {"test": held_out})
            write_json(out / "provenance.json", prov)
    if held_out is not None:
        stats["held_out_views"] = len(held_out)
    stats["seconds"] = round(time.perf_counter() - start, 2)
    write_json(scene.poses_dir / "stats.json", stats)
    return stats
