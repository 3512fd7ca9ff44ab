"""Stage ``frames``: videos and photo sets -> filtered, downscaled frames; bad input errors."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from pipeline.core.errors import M3Error
from pipeline.core.scene import Scene
from pipeline.poses.config import FramesConfig
from pipeline.poses.frames import select_frames
from stages import frames
from stages.cli import app
from tests.helpers.data import write_video

CFG = FramesConfig()


def _views(demo_input: Path, n: int) -> list[np.ndarray]:
    return [np.asarray(Image.open(demo_input / f"view_{i:03d}.png").convert("RGB")) for i in range(n)]


def _blur(frame: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(frame).filter(ImageFilter.GaussianBlur(3)))


@pytest.fixture(scope="module")
def video_scene(demo_input: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Scene, list[float], int]:
    """A video of 12 demo views with 2 blurred frames and 2 repeats of a frame.

    Returns the scene, the times of the frames that must survive, and the frame count.
    """
    views = _views(demo_input, 12)
    seq, expected, t = [], [], 0
    for i, v in enumerate(views):
        blurred = i in (3, 8)
        repeats = 3 if i == 5 else 1
        for r in range(repeats):
            seq.append(_blur(v) if blurred else v)
            if not blurred and r == 0:
                expected.append(t / 10)
            t += 1
    scene = Scene(tmp_path_factory.mktemp("video") / "vid")
    scene.input_dir.mkdir(parents=True)
    write_video(scene.input_dir / "walk.mp4", seq, fps=10)
    return scene, expected, len(seq)


def _meta(scene: Scene) -> dict:
    return json.loads((scene.frames_dir / "frames.json").read_text())


def test_video_drops_blurred_and_duplicate_frames(video_scene) -> None:
    scene, expected, n = video_scene
    meta = frames.run(dataclasses.replace(CFG, max_side=160), scene)
    assert meta == _meta(scene)
    assert meta["source_kind"] == "video"
    st = meta["stats"]
    assert (st["candidates"], st["dropped_blur"], st["dropped_duplicate"], st["kept"]) == (n, 2, 2, n - 4)
    assert [f["time"] for f in meta["frames"]] == pytest.approx(expected)
    assert [f["name"] for f in meta["frames"]] == [f"{i:05d}.png" for i in range(n - 4)]
    assert {f["source"] for f in meta["frames"]} == {"walk.mp4"}
    for f in meta["frames"]:
        with Image.open(scene.frames_dir / f["name"]) as im:
            assert im.size == (160, 120)  # 320x240 downscaled, aspect kept
    prov = meta["provenance"]
    assert prov["stage"] == "frames" and prov["config"]["max_side"] == 160 and len(prov["inputs_hash"]) == 16
    assert sorted(p.name for p in scene.frames_dir.iterdir()) == sorted(
        [*(f["name"] for f in meta["frames"]), "frames.json"]
    )


def test_video_target_count_and_candidates(video_scene) -> None:
    scene, _, n = video_scene
    meta = frames.run(dataclasses.replace(CFG, target_count=4, video_candidates=8), scene)
    st = meta["stats"]
    assert st["candidates"] == 8 and st["kept"] == 4 == len(meta["frames"])
    times = [f["time"] for f in meta["frames"]]
    assert times == sorted(times) and times[0] < 0.5 * (n - 1) / 10 < times[-1]  # spread over the video
    with Image.open(scene.frames_dir / "00000.png") as im:
        assert im.size == (320, 240)  # never upscaled


def test_select_frames_values() -> None:
    sharp = np.array([1.0, 1.1, 0.2, 1.0, 1.2, 0.9, 1.0, 1.3])
    thumbs = np.stack([np.full((4, 4), v) for v in (0.0, 0.1, 0.2, 0.3, 0.305, 0.5, 0.6, 0.7)])
    kept, counts = select_frames(sharp, thumbs, CFG)
    assert kept == [0, 1, 3, 5, 6, 7]  # 2 blurred (0.2 < 0.35 x median 1.0), 4 duplicates 3
    assert counts == {"dropped_blur": 1, "dropped_duplicate": 1, "dropped_target": 0}
    kept, counts = select_frames(sharp, thumbs, dataclasses.replace(CFG, target_count=3))
    assert kept == [1, 3, 7]  # sharpest of [0, 1], [3, 5], [6, 7]
    assert counts["dropped_target"] == 3
    # a local median keeps a frame that is only blurred relative to a sharper part of the input
    ramp = np.array([10.0, 10, 10, 10, 10, 1, 0.3, 1, 1])
    flat = np.stack([np.full((4, 4), i / 10) for i in range(9)])
    assert select_frames(ramp, flat, CFG)[1]["dropped_blur"] == 4
    assert select_frames(ramp, flat, dataclasses.replace(CFG, blur_window=3))[0] == [0, 1, 2, 3, 4, 5, 7, 8]


def test_select_frames_photo_sets_drop_only_exact_duplicates() -> None:
    sharp = np.ones(5)
    thumbs = np.stack([np.full((4, 4), v) for v in (0.0, 0.001, 0.002, 0.0, 0.003)])  # all "near-duplicates"
    digests = [b"a", b"b", b"c", b"a", b"d"]  # frame 3 repeats frame 0's pixels
    assert select_frames(sharp, thumbs, CFG)[0] == [0]  # the video rule
    kept, counts = select_frames(sharp, thumbs, CFG, digests)
    assert kept == [0, 1, 2, 4] and counts["dropped_duplicate"] == 1


def test_photo_set_of_nearby_views_keeps_every_distinct_photo(tmp_path: Path) -> None:
    """A turntable-like set: a small textured object on a dark background moving a few pixels per
    photo (thumbnails differ by far less than dedup_threshold), plus one copied file."""
    scene = Scene(tmp_path / "ring")
    scene.input_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    patch = rng.integers(60, 255, size=(24, 24, 3), dtype=np.uint8)
    for i in range(12):
        img = np.zeros((120, 160, 3), np.uint8)
        img[48:72, 40 + 3 * i : 64 + 3 * i] = patch
        Image.fromarray(img).save(scene.input_dir / f"ring_{i:02d}.png")
    (scene.input_dir / "ring_99.png").write_bytes((scene.input_dir / "ring_05.png").read_bytes())
    meta = frames.run(CFG, scene)
    thumbs = [
        np.asarray(Image.open(scene.frames_dir / f["name"]).convert("L").resize((32, 32), Image.BOX), dtype=np.float32)
        / 255
        for f in meta["frames"]
    ]
    assert (
        max(np.abs(a - b).mean() for a, b in zip(thumbs, thumbs[1:])) < CFG.dedup_threshold
    )  # a video would lose them
    assert [f["source"] for f in meta["frames"]] == [f"ring_{i:02d}.png" for i in range(12)]
    assert meta["stats"]["dropped_duplicate"] == 1 and meta["stats"]["kept"] == 12


def _photo(seed: int, size: tuple[int, int] = (60, 40)) -> Image.Image:
    """A textured photo: red left half, blue right half, noise on top, brightness by seed."""
    w, h = size
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.int16)
    img[:, : w // 2] = (200, 30, 30)
    img[:, w // 2 :] = (30, 30, 200)
    img += rng.integers(-25, 25, size=(h, w, 1)) + 35 * seed  # distinct photos, not duplicates
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    scene = Scene(tmp_path / "rot")
    scene.input_dir.mkdir(parents=True)
    for i in range(3):
        exif = Image.Exif()
        exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise
        _photo(i).save(scene.input_dir / f"img{i}.jpg", quality=95, exif=exif)
    meta = frames.run(CFG, scene)
    assert [f["source"] for f in meta["frames"]] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    for f in meta["frames"]:
        img = np.asarray(Image.open(scene.frames_dir / f["name"]), dtype=np.float64)
        assert img.shape == (60, 40, 3)  # portrait now
        top, bottom = img[:25].mean(axis=(0, 1)), img[35:].mean(axis=(0, 1))
        assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]  # the left (red) half is on top


def test_large_photos_are_downscaled_keeping_aspect(tmp_path: Path) -> None:
    scene = Scene(tmp_path / "big")
    scene.input_dir.mkdir(parents=True)
    for i in range(3):
        _photo(i, size=(1001, 500)).save(scene.input_dir / f"p{i}.jpg", quality=90)
    meta = frames.run(dataclasses.replace(CFG, max_side=200), scene)
    assert meta["stats"]["kept"] == 3
    for f in meta["frames"]:
        with Image.open(scene.frames_dir / f["name"]) as im:
            assert im.size == (200, 100)


def test_rgba_photos_keep_their_alpha_and_rgb_photos_stay_rgb(tmp_path: Path) -> None:
    """A transparent photo set (NeRF-synthetic's PNGs) keeps its alpha through the frames stage (the
    background is chosen at training); opaque photos stay RGB."""
    scene = Scene(tmp_path / "rgba")
    scene.input_dir.mkdir(parents=True)
    for i in range(3):
        rgba = _photo(i, size=(200, 100)).convert("RGBA")
        alpha = np.zeros((100, 200), np.uint8)
        alpha[20:80, 50:150] = 255
        rgba.putalpha(Image.fromarray(alpha))
        rgba.save(scene.input_dir / f"t{i}.png")
    _photo(3, size=(200, 100)).save(scene.input_dir / "t3.png")
    meta = frames.run(dataclasses.replace(CFG, max_side=100, blur_ratio=0.0), scene)
    assert meta["stats"]["kept"] == 4
    modes = {}
    for f in meta["frames"]:
        with Image.open(scene.frames_dir / f["name"]) as im:
            modes[f["source"]] = im.mode
            if im.mode == "RGBA":
                a = np.asarray(im)[..., 3]
                assert a.shape == (50, 100) and a[0, 0] == 0 and a[25, 50] == 255  # downscaled with the image
    assert modes == {"t0.png": "RGBA", "t1.png": "RGBA", "t2.png": "RGBA", "t3.png": "RGB"}


def test_image_folder_keeps_all_demo_views(demo_input: Path, tmp_path: Path) -> None:
    scene = Scene(tmp_path / "demo")
    scene.root.mkdir()
    scene.input_dir.symlink_to(demo_input)
    meta = frames.run(CFG, scene)
    names = sorted(p.name for p in demo_input.glob("view_*.png"))
    assert meta["source_kind"] == "images" and len(names) == 36
    assert [f["source"] for f in meta["frames"]] == names  # ground_truth.json is not an image
    for f in meta["frames"][::7]:  # 320x240 is below max_side: the pixels pass through
        a = np.asarray(Image.open(scene.frames_dir / f["name"]))
        np.testing.assert_array_equal(a, np.asarray(Image.open(demo_input / f["source"])))
    # a rerun writes the same frames folder, byte for byte: no timings in what poses depends on
    before = {p.name: p.read_bytes() for p in scene.frames_dir.iterdir()}
    frames.run(CFG, scene)
    assert {p.name: p.read_bytes() for p in scene.frames_dir.iterdir()} == before
    assert "seconds" not in json.dumps(meta)


def test_missing_and_empty_input(tmp_path: Path) -> None:
    scene = Scene(tmp_path / "none")
    with pytest.raises(M3Error, match=r"input: input not found; put a video .* or photos there"):
        frames.run(CFG, scene)
    scene.input_dir.mkdir(parents=True)
    (scene.input_dir / "notes.txt").write_text("hi")
    with pytest.raises(M3Error, match=r"input: no images or video found .*; add a video or photos"):
        frames.run(CFG, scene)
    (scene.input_dir / "a.mp4").write_bytes(b"")
    (scene.input_dir / "b.MOV").write_bytes(b"")
    with pytest.raises(M3Error, match=r"input: holds 2 videos \(a\.mp4, b\.MOV\); keep one video per scene"):
        frames.run(CFG, scene)
    (scene.input_dir / "b.MOV").unlink()
    _photo(0).save(scene.input_dir / "c.png")
    with pytest.raises(M3Error, match=r"input: holds both videos and images; keep either one video or"):
        frames.run(CFG, scene)
    assert not scene.frames_dir.exists() and [p.name for p in scene.root.iterdir()] == ["input"]


def test_corrupt_images_are_skipped_or_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scene = Scene(tmp_path / "bad")
    scene.input_dir.mkdir(parents=True)
    for i in range(3):
        _photo(i).save(scene.input_dir / f"ok{i}.png")
    (scene.input_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    m3_log = logging.getLogger("pipeline")
    m3_log.addHandler(caplog.handler)  # the CLI turns off propagation to the root logger
    try:
        meta = frames.run(CFG, scene)
    finally:
        m3_log.removeHandler(caplog.handler)
    assert meta["stats"]["unreadable"] == 1 and meta["stats"]["kept"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("skipping ") and "broken.jpg: unreadable image" in w for w in warnings)
    (scene.input_dir / "ok2.png").write_bytes(b"garbage")
    with pytest.raises(M3Error, match=r"only 2 of 4 images readable, need at least 3; add more"):
        frames.run(CFG, scene)
    assert len(_meta(scene)["frames"]) == 3  # the previous output is untouched


def test_undecodable_videos(tmp_path: Path) -> None:
    scene = Scene(tmp_path / "vid")
    scene.input_dir.mkdir(parents=True)
    (scene.input_dir / "clip.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(M3Error, match=r"clip\.mp4: not a readable video .*; re-encode it \(e\.g\. `ffmpeg"):
        frames.run(CFG, scene)
    # a valid AVI container whose codec tag no decoder knows
    frames_ = [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(4)]
    avi = write_video(tmp_path / "ok.avi", frames_)
    (scene.input_dir / "clip.mp4").unlink()
    (scene.input_dir / "clip.avi").write_bytes(avi.read_bytes().replace(b"FMP4", b"ZZZZ"))
    with pytest.raises(M3Error, match=r"clip\.avi: its video codec is unknown .*; re-encode it"):
        frames.run(CFG, scene)
    assert not scene.frames_dir.exists()


def test_params_typo_through_cli(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("frames:\n  max_sid: 100\n")
    result = CliRunner().invoke(app, ["frames", str(tmp_path / "scene"), "--params", str(params)])
    assert result.exit_code == 2
    assert "error: params.yaml: frames: unknown key 'max_sid'; did you mean 'max_side'?" in result.output


def test_cli_options_override_params(demo_input: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("frames:\n  max_side: 640\n  target_count: 60\n")
    scene = Scene(tmp_path / "demo")
    scene.root.mkdir()
    scene.input_dir.symlink_to(demo_input)
    args = ["frames", str(scene.root), "--max-side", "100", "--target-count", "6", "--params", str(params)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = _meta(scene)
    assert len(meta["frames"]) == 6 and meta["stats"]["dropped_target"] == 30
    assert meta["provenance"]["config"]["max_side"] == 100 and meta["provenance"]["config"]["target_count"] == 6
    # the sharpest view of each window of six consecutive views
    sources = [f["source"] for f in meta["frames"]]
    assert [int(s[5:8]) // 6 for s in sources] == list(range(6))
    with Image.open(scene.frames_dir / "00000.png") as im:
        assert im.size == (100, 75)
