"""`m3 ask`: cameras, regions, and the VLM reading stored or rendered image tokens in place of its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.errors import M3Error
from pipeline.core.scene import Scene, View, load_views
from pipeline.query import ask as A
from tests.helpers.scenes import gt_scene

LLAMAV = {
    "llava": {"weights": "random", "family": "llava", "random_arch": {"image_size": 112}},  # 8 x 8 patches
    "mllama": {"weights": "random", "family": "mllama"},  # 2 x 2 tiles of 4 x 4 patches
}
QUESTION = "What is on the table?"


def _view(name: str, center: list[float], forward: list[float]) -> View:
    z = np.asarray(forward, float) / np.linalg.norm(forward)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, -R @ np.asarray(center, float)
    return View(
        name, Path(name), np.diag([100.0, 100.0, 1.0]) + np.array([[0, 0, 64], [0, 0, 48], [0, 0, 0]]), w2c, 128, 96
    )


def test_pose_file_nearest_view_and_box_cells(tmp_path: Path) -> None:
    views = [
        _view("a.png", [0, 0, 0], [0, 0, 1]),
        _view("b.png", [1, 0, 0], [0, 0, 1]),
        _view("c.png", [1, 0, 0], [1, 0, 0]),
    ]
    pose = tmp_path / "novel.json"
    pose.write_text(json.dumps({"w2c": views[2].w2c[:3].tolist(), "width": 64}))
    cam = A.read_pose(pose, views[1])
    assert cam.name == "novel" and cam.width == 64 and cam.height == 96 and np.allclose(cam.K, views[1].K)
    assert np.allclose(cam.center, [1, 0, 0])
    assert A.nearest_view(cam, views).name == "c.png"  # same centre as b, but c looks the same way
    pose.write_text(json.dumps({"K": np.eye(3).tolist()}))
    with pytest.raises(M3Error, match="novel.json: not a pose"):
        A.read_pose(pose, views[0])
    with pytest.raises(M3Error, match="pose file not found"):
        A.read_pose(tmp_path / "absent.json", views[0])
    for bad, why in (
        ({"width": "wide"}, "must be whole pixels"),
        ({"width": -5}, "must be whole pixels"),
        ({"height": 10.5}, "must be whole pixels"),
        ({"width": 10**9, "height": 10**9}, "must be whole pixels in 1..8192"),
        ({"w2c": [[float("nan")] * 4] * 4}, "must be finite"),
        ({"K": [[0, 0, 1], [0, 0, 1], [0, 0, 1]]}, "positive focal lengths"),
    ):
        pose.write_text(json.dumps({"w2c": views[2].w2c[:3].tolist(), **bad}))
        with pytest.raises(M3Error, match=f"novel.json: .*{why}"):
            A.read_pose(pose, views[0])
    pose.write_text("[1, 2]")
    with pytest.raises(M3Error, match="novel.json: not a pose"):
        A.read_pose(pose, views[0])
    assert A.parse_box("10, 20,30.5,40") == (10.0, 20.0, 30.5, 40.0) and A.parse_box("a red box") is None
    with pytest.raises(M3Error, match="is empty"):
        A.parse_box("30,20,10,40")
    keep = A.box_cells((0, 0, 64, 48), (4, 8), 128, 96)  # the top-left quarter of a 128 x 96 view
    assert keep.shape == (4, 8) and keep[:2, :4].all() and int(keep.sum()) == 8


def test_text_region_is_where_the_text_is_found() -> None:
    """A text region keeps the cells whose relevance to the text (the region model's text tower) is
    high: cells holding the text's own embedding are kept, the others not."""
    from pipeline.features.models import build_model

    clip = build_model("clip", {"weights": "random"})
    attrs = {"provenance": {"config": {"model": "clip", "weights": "random"}}}
    text, other = clip.encode_text(["a red box", "the floor"])
    feats = other.expand(6, 8, -1).clone()
    feats[1:3, 2:5] = text
    keep = A.text_cells(feats, "clip", attrs, "a red box", (6, 8), 0.5, "cpu")
    expect = torch.zeros(6, 8, dtype=torch.bool)
    expect[1:3, 2:5] = True
    assert torch.equal(keep, expect)


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scene, object]:
    from pipeline.demo.scene import build_demo_scene

    demo = build_demo_scene(12, 128, 96, seed=0)
    return gt_scene(tmp_path_factory.mktemp("ask") / "demo", demo, 128, 96, 1500, stride=11), demo


@pytest.mark.parametrize("family", list(LLAMAV))
def test_stored_tokens_of_a_training_view_give_exactly_the_vlms_own_logits(small_scene, family, tmp_path) -> None:
    """What `m3 ask` does with a view, with the *stored* llamav features in place of rendered ones:
    the VLM built from the store's recorded conf, fed the view's float16 patch tokens and its
    global-token records in place of its own vision tokens, gives exactly the logits of its own
    forward on the view's image; the tokens of another view do not."""
    import shutil

    from pipeline.core.images import load_image, to_float
    from pipeline.features.store import FeatureStore
    from pipeline.features.vlm import ImageTokens
    from pipeline.query.encode import load_adapter
    from stages.features import run as features_run

    scene = Scene(tmp_path / "demo")
    shutil.copytree(small_scene[0].root / "colmap", scene.colmap_dir)
    views = load_views(scene)[:4]
    features_run(LLAMAV[family], scene, "llamav", views=views)
    store = FeatureStore.open(scene.features_path("llamav"))
    adapter = load_adapter("llamav", store.attrs, "cpu")  # as m3 ask builds it
    vlm = adapter.vlm
    stored, _ = store.read(2)
    tokens = ImageTokens(torch.from_numpy(stored), A.global_tokens(store, views[2].name, vlm.dim))
    assert len(tokens.globals) == {"llava": 0, "mllama": 4}[family]
    image = torch.from_numpy(to_float(load_image(views[2].image_path, 128, 96))).permute(2, 0, 1)
    own = vlm.own_logits(image, QUESTION)
    assert torch.equal(vlm.logits(QUESTION, tokens), own)
    other = ImageTokens(torch.from_numpy(store.read(1)[0]), A.global_tokens(store, views[1].name, vlm.dim))
    assert (vlm.logits(QUESTION, other) - own).abs().max() > 1e-3


@pytest.mark.slow
def test_m3_ask_renders_the_memory_and_answers(small_scene, tmp_path) -> None:
    """`m3 ask` end to end on a memory trained with llamav (Llama-3.2-Vision family) and clip (random
    weights): a registered view, a pixel-box region, a text region and a novel camera; each prints
    the answer and saves it with the render."""
    import shutil

    from typer.testing import CliRunner

    from pipeline.bank.config import BankConfig
    from pipeline.splat.config import TrainConfig
    from stages.bank import run as bank_run
    from stages.cli import app
    from stages.features import run as features_run
    from stages.train import run as train_run

    scene = Scene(tmp_path / "demo")
    shutil.copytree(small_scene[0].root / "colmap", scene.colmap_dir)
    features_run(LLAMAV["mllama"], scene, "llamav")
    features_run({"weights": "random", "input_size": 112}, scene, "clip")
    bank_run(BankConfig(threshold=0.6), scene, "llamav")
    bank_run(BankConfig(threshold=0.8), scene, "clip")
    cfg = TrainConfig(
        query_dims={"llamav": 8, "clip": 8}, pixels=300, device="cpu", backend="torch", checkpoint_every=1000
    ).with_schedule("cpu", iterations=60, densify_start=1000)
    train_run(cfg, scene, ["llamav", "clip"], progress=False)
    view = load_views(scene)[3]
    pose = tmp_path / "novel.json"
    w2c = view.w2c.copy()
    w2c[0, 3] += 0.05
    pose.write_text(json.dumps({"w2c": w2c.tolist()}))
    params = tmp_path / "params.yaml"
    params.write_text("ask: {max_new_tokens: 6, device: cpu}\n")
    runner = CliRunner()
    cases = {
        "view": ["--view", view.name],
        "box": ["--view", view.name, "--region", "0,0,64,48"],
        "text": ["--view", view.name, "--region", "a yellow box"],
        "pose": ["--pose", str(pose)],
    }
    results = {}
    for case, args in cases.items():
        out = tmp_path / case
        res = runner.invoke(app, ["ask", str(scene.root), QUESTION, *args, "--out", str(out), "--params", str(params)])
        assert res.exit_code == 0, res.output
        results[case] = json.loads((out / "answer.json").read_text())
        assert f"A: {results[case]['answer']}" in res.output and (out / "render.png").is_file()
        assert (out / "region.png").is_file() == (case in ("box", "text"))
        print(f"{case}: {results[case]['answer']!r} ({results[case]['image_tokens']} tokens)")
    assert results["view"]["image_tokens"] == 64 and results["view"]["global_tokens"] == 4
    assert results["box"]["image_tokens"] == 16  # the top-left quarter of the 8 x 8 grid
    assert results["text"]["region_model"] == "clip" and 0 < results["text"]["image_tokens"] < 64
    assert results["pose"]["camera"] == {"view": "novel", "pose": str(pose), "global_tokens_from": view.name}
    assert all(r["answer"] for r in results.values())  # noise from random weights, but generated
    res = runner.invoke(app, ["ask", str(scene.root), QUESTION, "--view", "nope.png", "--params", str(params)])
    assert res.exit_code == 2 and "'nope.png' is not a registered view" in res.output
    keep = tmp_path / "keep"  # --out never replaces a folder m3 ask did not write
    keep.mkdir()
    (keep / "keep.txt").write_text("p")
    res = runner.invoke(app, ["ask", str(scene.root), QUESTION, "--out", str(keep), "--params", str(params)])
    assert res.exit_code == 2 and "not an earlier output of `m3 ask`" in res.output
    assert [p.name for p in keep.iterdir()] == ["keep.txt"] and (keep / "keep.txt").read_text() == "p"
