"""Stage ``poses``: SfM on the demo scene and the lund photos, imports, errors, geometry helpers."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import M3Error
from pipeline.core.geometry import (
    align_cameras,
    camera_centers,
    opengl_c2w_from_w2c,
    rotation_angle_deg,
    umeyama,
    w2c_from_opengl_c2w,
)
from pipeline.core.scene import Scene, load_points, load_views
from pipeline.poses.config import PosesConfig
from pipeline.poses.sfm import choose_matcher
from stages import poses
from tests.helpers.paths import SHARED_SCENES


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_umeyama_recovers_similarity() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(50, 3))
    R, s, t = _rotation(rng), 2.5, np.array([1.0, -2.0, 0.5])
    dst = s * src @ R.T + t
    s_est, R_est, t_est = umeyama(src, dst)
    assert s_est == pytest.approx(s, rel=1e-10)
    np.testing.assert_allclose(R_est, R, atol=1e-10)
    np.testing.assert_allclose(t_est, t, atol=1e-10)
    assert np.linalg.det(R_est) == pytest.approx(1.0)
    # a reflection in the data still yields a proper rotation
    _, R_refl, _ = umeyama(src, src * np.array([1.0, 1.0, -1.0]))
    assert np.linalg.det(R_refl) == pytest.approx(1.0)
    with pytest.raises(M3Error, match="N >= 3"):
        umeyama(src[:2], dst[:2])


def test_align_cameras_and_conventions() -> None:
    rng = np.random.default_rng(1)
    w2c = np.tile(np.eye(4), (6, 1, 1))
    for m in w2c:
        m[:3, :3], m[:3, 3] = _rotation(rng), rng.normal(size=3)
    # the same cameras in a world scaled by 3, rotated and shifted: x' = s R x + t
    s, R, t = 3.0, _rotation(rng), rng.normal(size=3)
    moved = w2c.copy()
    moved[:, :3, :3] = w2c[:, :3, :3] @ R.T
    moved[:, :3, 3] = -np.einsum("nij,nj->ni", moved[:, :3, :3], s * camera_centers(w2c) @ R.T + t)
    res = align_cameras(w2c, moved)
    assert res["center_error"].max() < 1e-9
    assert res["rotation_error_deg"].max() < 1e-6
    assert res["scale"] == pytest.approx(s)
    assert rotation_angle_deg(np.eye(3), _axis_rot(30.0)) == pytest.approx(30.0)
    # OpenGL c2w <-> OpenCV w2c round trip; an OpenGL camera looks down -z
    gl = opengl_c2w_from_w2c(w2c[0])
    np.testing.assert_allclose(w2c_from_opengl_c2w(gl), w2c[0], atol=1e-12)
    np.testing.assert_allclose(gl[:3, 2], -w2c[0][2, :3], atol=1e-12)


def _axis_rot(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def test_choose_matcher() -> None:
    cfg = PosesConfig()
    assert choose_matcher(cfg, "video", 10) == "sequential"
    assert choose_matcher(cfg, "images", 100) == "exhaustive"
    assert choose_matcher(cfg, "images", 101) == "sequential"
    assert choose_matcher(dataclasses.replace(cfg, matcher="exhaustive"), "video", 500) == "exhaustive"


class FakeModel:
    """A reconstruction of ``n`` registered images, as the mappers return."""

    def __init__(self, n: int) -> None:
        self.n = n

    def num_reg_images(self) -> int:
        return self.n


def test_mapper_retries_with_relaxed_initialisation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import pycolmap

    from pipeline.poses import sfm

    calls = []

    def mapping(database, images, out, options):  # a stalled first model, then a good one
        calls.append(options.mapper.init_max_forward_motion)
        return {0: FakeModel(2)} if len(calls) == 1 else {0: FakeModel(9), 1: FakeModel(1)}

    monkeypatch.setattr(sfm, "extract_and_match", lambda *args, **kwargs: None)
    monkeypatch.setattr(pycolmap, "incremental_mapping", mapping)
    names = [f"{i}.png" for i in range(10)]
    assert sfm.run_sfm(tmp_path, names, tmp_path, PosesConfig(), "exhaustive").n == 9
    assert calls == [pytest.approx(0.95), 0.99]  # default, then more forward motion allowed; 9/10 stops
    calls.clear()
    assert sfm.run_sfm(tmp_path, names, tmp_path, PosesConfig(mapper_attempts=1), "exhaustive").n == 2
    assert len(calls) == 1


def _write_frames(frames_dir: Path, images: list[Path], kind: str = "images") -> list[str]:
    frames_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i, src in enumerate(images):
        name = f"{i:05d}{src.suffix}"
        shutil.copy(src, frames_dir / name)
        names.append(name)
    meta = {
        "source_kind": kind,
        "frames": [{"name": n, "source": s.name, "time": None, "sharpness": 1.0} for n, s in zip(names, images)],
        "provenance": {},
    }
    (frames_dir / "frames.json").write_text(json.dumps(meta))
    return names


@pytest.fixture(scope="module")
def demo(demo_input: Path) -> dict:
    """The built-in demo scene as users get it (36 views): its folder, ground truth, view names."""
    gt = json.loads((demo_input / "ground_truth.json").read_text())
    return {"dir": demo_input, "gt": gt, "names": sorted(gt["views"])}


def _gt_w2c(demo: dict) -> np.ndarray:
    return np.array([demo["gt"]["views"][n]["w2c"] for n in demo["names"]], dtype=np.float64)


def test_sfm_on_demo_scene_matches_ground_truth(demo: dict, tmp_path: Path) -> None:
    scene = Scene(tmp_path / "demo")
    frames = _write_frames(scene.frames_dir, [demo["dir"] / n for n in demo["names"]])
    stats = poses.run(PosesConfig(), scene)
    views = load_views(scene)
    assert [v.name for v in views] == frames
    assert stats["registered_views"] == stats["total_views"] == len(demo["names"])
    prov = json.loads((scene.colmap_dir / "provenance.json").read_text())
    assert prov["source"] == "sfm (images, exhaustive matching)" and "provenance" not in stats
    est = np.array([v.w2c for v in views])
    res = align_cameras(est, _gt_w2c(demo))
    extent = demo["gt"]["extent"]
    print(
        f"demo: centre error max {res['center_error'].max() / extent:.4%} of extent, "
        f"rotation error max {res['rotation_error_deg'].max():.3f} deg, stats {stats}"
    )
    assert res["center_error"].max() < 0.01 * extent
    assert res["rotation_error_deg"].max() < 1.0
    assert stats["mean_reprojection_error_px"] < 1.0
    xyz, rgb = load_points(scene)
    assert len(xyz) == stats["points"] > 100 and rgb.dtype == np.uint8
    for v in views:  # undistorted PINHOLE images exist with the model's size
        from PIL import Image

        with Image.open(v.image_path) as im:
            assert im.size == (v.width, v.height)
        assert v.K[0, 1] == 0 and v.K[2, 2] == 1
    assert prov["config"]["seed"] == 0 and len(prov["code_hash"]) == 16
    assert not list(scene.root.glob(".poses-work-*")) and not list(scene.colmap_dir.rglob("*.db"))
    # reruns with the default threads (parallel extraction and matching) give the same folder, bit for bit
    first = {p.relative_to(scene.colmap_dir): p.read_bytes() for p in scene.colmap_dir.rglob("*") if p.is_file()}
    for _ in range(2):
        poses.run(PosesConfig(), scene)
        again = {p.relative_to(scene.colmap_dir): p.read_bytes() for p in scene.colmap_dir.rglob("*") if p.is_file()}
        assert again.keys() == first.keys() and all(again[k] == first[k] for k in first), "poses rerun differs"


@pytest.mark.slow
def test_video_input_is_matched_sequentially(demo: dict, tmp_path: Path) -> None:
    from PIL import Image

    from pipeline.poses.config import FramesConfig
    from stages import frames as frames_stage
    from tests.helpers.data import write_video

    fps = 10
    scene = Scene(tmp_path / "video")
    scene.input_dir.mkdir(parents=True)
    ring = [np.asarray(Image.open(demo["dir"] / n).convert("RGB")) for n in demo["names"]]
    write_video(scene.input_dir / "ring.mp4", ring, fps=fps)
    frames_stage.run(FramesConfig(), scene)
    meta = json.loads((scene.frames_dir / "frames.json").read_text())
    assert meta["source_kind"] == "video"
    stats = poses.run(PosesConfig(), scene)
    prov = json.loads((scene.colmap_dir / "provenance.json").read_text())
    assert prov["source"] == "sfm (video, sequential matching)"
    assert stats["registered_views"] == stats["total_views"] == len(meta["frames"]) >= 30
    views = {v.name: v for v in load_views(scene)}
    gt = _gt_w2c(demo)
    index = [round(f["time"] * fps) for f in meta["frames"]]  # frame i of the video is view i
    res = align_cameras(np.array([views[f["name"]].w2c for f in meta["frames"]]), gt[index])
    print(
        f"video: {stats['registered_views']} views, centre error max "
        f"{res['center_error'].max() / demo['gt']['extent']:.4%}, "
        f"rotation max {res['rotation_error_deg'].max():.3f} deg"
    )
    assert res["center_error"].max() < 0.01 * demo["gt"]["extent"]
    assert res["rotation_error_deg"].max() < 1.0


def _check_imported(scene: Scene, demo: dict) -> None:
    views = load_views(scene)
    assert [v.name for v in views] == demo["names"]
    np.testing.assert_allclose(np.array([v.w2c for v in views]), _gt_w2c(demo), atol=1e-9)
    for v in views:
        np.testing.assert_allclose(v.K, np.array(demo["gt"]["views"][v.name]["K"]), atol=1e-9)
        assert v.image_path.is_file()
    stats = json.loads((scene.poses_dir / "stats.json").read_text())
    assert stats["registered_views"] == len(demo["names"])
    assert stats["points"] > 100 and stats["mean_reprojection_error_px"] < 1.0


def test_import_transforms_json(demo: dict, tmp_path: Path) -> None:
    scene = Scene(tmp_path / "imp")
    shutil.copytree(demo["dir"], scene.root / "input" / "images")
    K0 = np.array(demo["gt"]["views"][demo["names"][0]]["K"])
    frames = [
        {"file_path": f"images/{Path(n).stem}", "transform_matrix": opengl_c2w_from_w2c(w2c).tolist()}
        for n, w2c in zip(demo["names"], _gt_w2c(demo))
    ]
    meta = {"fl_x": K0[0, 0], "fl_y": K0[1, 1], "cx": K0[0, 2], "cy": K0[1, 2], "frames": frames}
    (scene.root / "input" / "transforms.json").write_text(json.dumps(meta))
    poses.run(PosesConfig(source="transforms", import_path="input/transforms.json"), scene)
    _check_imported(scene, demo)


def _qvec(R: np.ndarray) -> list[float]:
    import pycolmap

    x, y, z, w = pycolmap.Rotation3d(R).quat
    return [w, x, y, z]


def test_import_colmap_text_model(demo: dict, tmp_path: Path) -> None:
    scene = Scene(tmp_path / "imp")
    project = scene.root / "input" / "colmap_project"
    shutil.copytree(demo["dir"], project / "images")
    model = project / "sparse" / "0"
    model.mkdir(parents=True)
    K0 = np.array(demo["gt"]["views"][demo["names"][0]]["K"])
    w, h = 320, 240
    # the classic three-file text format written by COLMAP 3.x and most exporters
    intrinsics = " ".join(repr(float(x)) for x in (K0[0, 0], K0[1, 1], K0[0, 2], K0[1, 2]))
    (model / "cameras.txt").write_text(f"1 PINHOLE {w} {h} {intrinsics}\n")
    lines = []
    for i, (name, w2c) in enumerate(zip(demo["names"], _gt_w2c(demo)), start=1):
        q, t = _qvec(w2c[:3, :3]), w2c[:3, 3]
        pose = " ".join(repr(float(x)) for x in [*q, *t])
        lines += [f"{i} {pose} 1 {name}", ""]  # second line: no 2D points
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    (model / "points3D.txt").write_text("")
    poses.run(PosesConfig(source="colmap", import_path="input/colmap_project"), scene)
    _check_imported(scene, demo)


def test_too_few_registered_views_is_an_error(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    noise = []
    for i in range(4):
        path = tmp_path / f"noise{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)).save(path)
        noise.append(path)
    scene = Scene(tmp_path / "noise")
    _write_frames(scene.frames_dir, noise)
    with pytest.raises(M3Error, match=r"only \d of 4 views registered \(need >= 3\).*overlap"):
        poses.run(PosesConfig(max_num_features=1024), scene)
    assert not scene.colmap_dir.exists() and not (scene.poses_dir / "stats.json").exists()
    assert not list(scene.root.glob(".*"))


def test_missing_frames_is_an_error(tmp_path: Path) -> None:
    scene = Scene(tmp_path / "empty")
    with pytest.raises(M3Error, match=r"frames\.json missing.*run `m3 frames empty` first"):
        poses.run(PosesConfig(), scene)


def test_bad_import_path_is_an_error(tmp_path: Path) -> None:
    scene = Scene(tmp_path / "imp")
    scene.root.mkdir()
    with pytest.raises(M3Error, match=r"nope/transforms\.json: transforms\.json not found; fix poses\.import_path"):
        poses.run(PosesConfig(source="transforms", import_path="nope/transforms.json"), scene)
    with pytest.raises(M3Error, match=r"import_path is empty"):
        poses.run(PosesConfig(source="colmap"), scene)
    (scene.root / "model").mkdir()
    with pytest.raises(M3Error, match=r"no COLMAP model"):
        poses.run(PosesConfig(source="colmap", import_path="model"), scene)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_SCENES / "lund").is_dir(), reason="shared lund photo set not present")
def test_lund_photo_set(tmp_path: Path) -> None:
    from pipeline.poses.config import FramesConfig
    from stages import frames as frames_stage

    scene = Scene(tmp_path / "lund")
    (scene.root).mkdir()
    (scene.root / "input").symlink_to((SHARED_SCENES / "lund" / "images").resolve())
    frames_cfg = dataclasses.replace(FramesConfig(), max_side=1024, target_count=100)
    frames_stage.run(frames_cfg, scene)
    stats = poses.run(PosesConfig(), scene)
    print(f"lund: {stats}")
    assert stats["total_views"] >= 25
    assert stats["registered_views"] >= 25
    assert stats["mean_reprojection_error_px"] < 1.5


def test_spatial_pairs_and_pair_list_names(tmp_path: Path) -> None:
    from pipeline.poses.sfm import match_pairs, spatial_pairs

    angle = np.linspace(0.0, 2.0 * np.pi, 12, endpoint=False)
    ring = np.stack([np.cos(angle), np.sin(angle), np.zeros(12)], axis=1)
    # each view's 2 nearest are its ring neighbours: the 12 edges of the ring, the last one closing it
    assert spatial_pairs(ring, 2) == sorted([(i, i + 1) for i in range(11)] + [(0, 11)])
    assert len(spatial_pairs(ring, 20)) == 66  # k >= N - 1: every pair, as exhaustive matching
    # beyond a window of 3 indices, the nearest are across the seam of the ring (indices 0 and 11)
    far = spatial_pairs(ring, 1, min_gap=3)
    assert all(j - i > 3 for i, j in far) and (0, 11) in far and (1, 11) in far
    # the window is measured on the given order, not on the row index
    assert spatial_pairs(ring[[0, 1, 11]], 1, min_gap=3, order=np.array([0, 1, 11])) == [(0, 2), (1, 2)]
    with pytest.raises(M3Error, match=r"my view\.png: image name with whitespace.*spatial_neighbors: 0"):
        match_pairs(tmp_path / "database.db", ["a.png", "my view.png"], [(0, 1)], PosesConfig())
    assert not list(tmp_path.iterdir())


def test_global_mapper_retries_incrementally(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import pycolmap

    from pipeline.poses import sfm

    calls = []

    def global_mapping(database, images, out, options):  # a stalled global model
        calls.append(("global", options.num_threads, options.mapper.global_positioning.random_seed))
        return {0: FakeModel(3)}

    def incremental_mapping(database, images, out, options):
        calls.append(("incremental", options.mapper.init_max_forward_motion))
        return {0: FakeModel(8)}

    monkeypatch.setattr(sfm, "extract_and_match", lambda *args, **kwargs: None)
    monkeypatch.setattr(sfm, "_calibrate", lambda *args: None)
    monkeypatch.setattr(pycolmap, "global_mapping", global_mapping)
    monkeypatch.setattr(pycolmap, "incremental_mapping", incremental_mapping)
    names = [f"{i}.png" for i in range(10)]
    cfg = PosesConfig(mapper="global", seed=7)
    assert sfm.run_sfm(tmp_path, names, tmp_path, cfg, "exhaustive").n == 8
    assert calls == [("global", 1, 7), ("incremental", pytest.approx(0.95))]
    calls.clear()
    assert sfm.run_sfm(tmp_path, names, tmp_path, dataclasses.replace(cfg, mapper_attempts=1), "exhaustive").n == 3
    assert calls == [("global", 1, 7)]


def test_global_mapper_on_demo_scene(demo: dict, tmp_path: Path) -> None:
    scene = Scene(tmp_path / "demo")
    _write_frames(scene.frames_dir, [demo["dir"] / n for n in demo["names"]])
    cfg = PosesConfig(mapper="global")
    stats = poses.run(cfg, scene)
    assert stats["registered_views"] == stats["total_views"] == len(demo["names"])
    res = align_cameras(np.array([v.w2c for v in load_views(scene)]), _gt_w2c(demo))
    extent = demo["gt"]["extent"]
    print(
        f"global mapper: centre error max {res['center_error'].max() / extent:.4%} of extent, "
        f"rotation error max {res['rotation_error_deg'].max():.3f} deg, stats {stats}"
    )
    # the bounds of the incremental mapper's test
    assert res["center_error"].max() < 0.01 * extent
    assert res["rotation_error_deg"].max() < 1.0
    assert stats["mean_reprojection_error_px"] < 1.0 and stats["points"] > 100
    # seeded, on one mapper thread: a rerun gives the same cameras (to 1e-6 of the extent; not compared
    # bit for bit: the view-graph calibration's solver runs on every core)
    first = np.array([v.w2c for v in load_views(scene)])
    assert poses.run(cfg, scene)["registered_views"] == stats["registered_views"]
    again = np.array([v.w2c for v in load_views(scene)])
    np.testing.assert_allclose(again, first, rtol=0, atol=1e-6 * extent)


def _triangulated(demo: dict, root: Path, cfg: PosesConfig) -> tuple[int, int]:
    """Points and matched pairs of triangulating the demo's ground-truth cameras under ``cfg``."""
    import pycolmap

    from pipeline.poses.sfm import triangulate_known
    from tests.helpers.scenes import posed_scene

    scene = posed_scene(root, demo["dir"], len(demo["names"]))
    work = root / "work"
    work.mkdir()
    rec = triangulate_known(pycolmap.Reconstruction(str(scene.sparse_dir)), scene.images_dir, work, cfg)
    assert rec.num_reg_images() == len(demo["names"]) and rec.compute_mean_reprojection_error() < 1.0
    db = pycolmap.Database.open(work / "database.db")
    try:
        return rec.num_points3D(), db.num_matched_image_pairs()
    finally:
        db.close()


def test_known_poses_triangulate_from_spatial_pairs(demo: dict, tmp_path: Path) -> None:
    n = len(demo["names"])
    points_all, pairs_all = _triangulated(demo, tmp_path / "all", PosesConfig(spatial_neighbors=0))
    points, pairs = _triangulated(demo, tmp_path / "near", PosesConfig(spatial_neighbors=8))
    print(f"known poses, {n} views: exhaustive {pairs_all} pairs, {points_all} points; 8 nearest {pairs}, {points}")
    assert pairs_all == n * (n - 1) // 2
    assert pairs <= n * 8 and pairs < 0.25 * pairs_all
    assert points >= 0.9 * points_all


@pytest.mark.slow
def test_video_loop_closure_pairs(demo: dict, tmp_path: Path) -> None:
    import pycolmap

    from pipeline.poses import sfm

    # the demo's views go once round the scene: as a video, its last frames meet its first ones
    names = _write_frames(tmp_path / "frames", [demo["dir"] / n for n in demo["names"]], kind="video")
    counts = {}
    for k in (0, 4):
        work = tmp_path / f"work{k}"
        work.mkdir()
        cfg = PosesConfig(loop_neighbors=k)
        rec = sfm.run_sfm(tmp_path / "frames", names, work, cfg, "sequential")
        db = pycolmap.Database.open(work / "database.db")
        counts[k] = db.num_matched_image_pairs()
        db.close()
        assert rec.num_reg_images() == len(names)
        by_name = {im.name: im for im in rec.images.values()}
        est = np.array([np.vstack([by_name[n].cam_from_world().matrix(), [0, 0, 0, 1]]) for n in names])
        error = align_cameras(est, _gt_w2c(demo))["center_error"].max() / demo["gt"]["extent"]
        print(f"loop_neighbors {k}: {counts[k]} pairs, centre error max {error:.4%} of extent")
        assert error < 0.01
    pairs = sfm.loop_pairs(rec, names, PosesConfig(loop_neighbors=4))
    assert 0 < len(pairs) <= 4 * len(names) and all(j - i > 10 for i, j in pairs)
    assert any(i < 5 and j >= len(names) - 5 for i, j in pairs)  # the seam of the ring is closed
    assert counts[4] > counts[0]
