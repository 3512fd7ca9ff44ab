"""`dvc repro` on a copy of the project: demo -> frames -> poses; nothing changed = no work;
a `poses` param change reruns only `poses@demo`; the whole pipeline on the demo scene with a
random-weight CLIP, for both training methods."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.helpers.project import dvc, git, mtimes, project_copy, run_tool, set_params, tool_env


@pytest.mark.slow
def test_repro_poses_then_nothing_then_only_poses(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    project_copy(root)
    set_params(root, scenes=["demo"], demo={"n_views": 16})

    out = dvc(root, "repro", "poses@demo")
    for stage in ("demo", "frames@demo", "poses@demo"):
        assert f"Running stage '{stage}'" in out, out
    scene = root / "data" / "demo"
    assert (scene / "colmap" / "sparse" / "0" / "images.bin").is_file()
    assert not list((scene / "colmap").rglob("*.db"))
    frames_before, colmap_before = mtimes(scene / "frames"), mtimes(scene / "colmap")

    # nothing changed: nothing runs, nothing is rewritten
    out = dvc(root, "repro", "poses@demo")
    assert "Running stage" not in out, out
    assert "up to date" in dvc(root, "status", "poses@demo")
    assert mtimes(scene / "colmap") == colmap_before

    # a poses param changes: only poses@demo reruns
    set_params(root, poses={"max_num_features": 4096})
    out = dvc(root, "repro", "poses@demo")
    assert "Running stage 'poses@demo'" in out, out
    assert "Running stage 'frames@demo'" not in out and "Running stage 'demo'" not in out, out
    assert mtimes(scene / "frames") == frames_before
    assert mtimes(scene / "colmap") != colmap_before
    assert json.loads((scene / "colmap" / "provenance.json").read_text())["config"]["max_num_features"] == 4096
    assert "up to date" in dvc(root, "status", "--with-deps", "poses@demo")  # later stages are not run here


@pytest.mark.slow
def test_demo_pipeline_random_weights_memory_then_distill(tmp_path: Path) -> None:
    """Issues 5, 6 and 16 through `dvc repro` on the demo scene: random-weight CLIP (224 px input,
    16 x 21 feature maps), default train and evaluate params (the CPU schedule: 320 px), CPU. The
    memory reaches 23.5 dB held-out PSNR at 320 px (the 80 px schedule's memory gave 22.3 there)
    and features at least 2x closer than the constant mean feature; switching `train.method` to
    distill (a shorter run: its first 800 steps, at 80 and 160 px) reruns only train and evaluate,
    and reports the same metrics. Prints the wall time of the whole pipeline."""
    root = tmp_path / "proj"
    project_copy(root)
    set_params(root, scenes=["demo"], models=["clip"], features={"clip": {"weights": "random", "input_size": 224}})
    metrics = root / "data" / "demo" / "eval" / "metrics.json"

    start = time.perf_counter()
    dvc(root, "repro", "evaluate@demo")
    print(f"dvc repro (demo, every stage): {time.perf_counter() - start:.0f} s")
    memory = json.loads(metrics.read_text())
    clip = memory["features"]["clip"]
    print(
        f"memory: PSNR {memory['psnr']:.2f} SSIM {memory['ssim']:.4f} clip cos {clip['cosine']:.4f} "
        f"(mean feature {clip['baseline_cosine']:.4f}) L2 {clip['l2']:.4f}, {memory['gaussians']} Gaussians"
    )
    method = root / "data" / "demo" / "eval" / "per_view.json"
    details = json.loads(method.read_text())
    assert details["method"] == "memory" and memory["test_views"] == 5
    assert max(details["image_size"]) >= 300 and memory["psnr"] >= 23.5  # 318 x 238: the undistorted views
    assert 2 * clip["cosine"] <= clip["baseline_cosine"]
    lerf = memory["lerf_ovs"]  # the demo's annotations of views 0, 8, ..., 32, text queries (random CLIP)
    print(f"memory: lerf-ovs {json.dumps(lerf)}")
    assert lerf["frames"] == 5 and lerf["queries"] >= 15 and 0.0 <= lerf["mIoU"] <= 1.0

    set_params(root, train={"method": "distill", "cpu": {"iterations": 800}})
    out = dvc(root, "repro", "evaluate@demo")
    assert "Running stage 'train@demo'" in out and "Running stage 'evaluate@demo'" in out, out
    for stage in ("demo", "frames@demo", "poses@demo", "features@demo-clip", "bank@demo-clip"):
        assert f"Running stage '{stage}'" not in out, out
    distill = json.loads(metrics.read_text())
    clip = distill["features"]["clip"]
    print(
        f"distill: PSNR {distill['psnr']:.2f} SSIM {distill['ssim']:.4f} clip cos {clip['cosine']:.4f} "
        f"(mean feature {clip['baseline_cosine']:.4f}) L2 {clip['l2']:.4f}, {distill['gaussians']} Gaussians"
    )
    assert json.loads(method.read_text())["method"] == "distill" and distill["psnr"] >= 20.0
    assert clip["cosine"] < clip["baseline_cosine"]
    assert distill["lerf_ovs"]["queries"] == lerf["queries"]  # the decoder's direct path


@pytest.mark.slow
def test_make_demo_random_weights_leaves_the_workspace_clean(tmp_path: Path) -> None:
    """`make demo WEIGHTS=random` runs the pipeline as an experiment outside the workspace: afterwards
    `git status` shows no modified tracked file, and the experiment holds the metrics (a small demo:
    16 views, 100 steps)."""
    import subprocess
    import sys

    root = tmp_path / "proj"
    project_copy(root)
    set_params(root, scenes=["demo"], demo={"n_views": 16}, train={"cpu": {"iterations": 100, "densify_start": 1000}})
    git(root, "add", "-A")
    git(root, "commit", "-qm", "small demo")
    venv = Path(sys.executable).parent.parent
    make = ["make", "-o", f"{venv}/bin/m3", "demo", "WEIGHTS=random", f"VENV={venv}"]
    proc = subprocess.run(make, cwd=root, env=tool_env(root), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "psnr" in proc.stdout and "features.clip.cosine" in proc.stdout  # the metrics table
    status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    assert not [line for line in status.splitlines() if not line.startswith("??")], status
    baseline = json.loads(run_tool(root, "dvc", "exp", "show", "--json").stdout)[1]  # [workspace, HEAD]
    (exp,) = baseline["experiments"]
    metrics = exp["revs"][0]["data"]["metrics"]["data/demo/eval/metrics.json"]["data"]
    params = exp["revs"][0]["data"]["params"]["params.yaml"]["data"]
    assert params["features"]["clip"]["weights"] == "random" and metrics["psnr"] > 15.0


REGION_SAM = {"points_per_side": 1, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}  # one SAM prompt: fast
NEW_ADAPTERS = {  # small random-weight configs of the adapters of issue 13
    "llamav": {"weights": "random", "family": "mllama"},
    "llama3": {"weights": "random", "sam": REGION_SAM, "captioner": {"num_beams": 1, "max_new_tokens": 6}},
    "seem": {"weights": "random", "sam": REGION_SAM},
}


@pytest.mark.slow
def test_seem_llama3_llamav_through_dvc_repro(tmp_path: Path) -> None:
    """The three adapters of issue 13 (random weights) through `dvc repro` on a 16-view demo: map
    shapes, float16, attrs, validity masks, records (llama3 captions, llamav CLS tokens), view i
    equal to a direct forward pass, nothing rerun when nothing changed, text queries built from the
    stores' recorded confs, and a killed llamav run resuming to the same store and records."""
    import numpy as np
    import torch

    from pipeline.core.images import load_image, to_float
    from pipeline.core.scene import Scene, load_views
    from pipeline.features.models import build_model
    from pipeline.features.store import FeatureStore
    from pipeline.query.encode import Encoder
    from stages.features import run as features_run

    root = tmp_path / "proj"
    project_copy(root)
    set_params(root, scenes=["demo"], models=list(NEW_ADAPTERS), demo={"n_views": 16}, features=NEW_ADAPTERS)
    out = dvc(root, "repro", *(f"features@demo-{m}" for m in NEW_ADAPTERS))
    scene = Scene(root / "data" / "demo")
    views = load_views(scene)
    expected = {"llamav": (8, 8, 64), "llama3": (60, 80, 64), "seem": (60, 80, 32)}
    for name, conf in NEW_ADAPTERS.items():
        assert f"Running stage 'features@demo-{name}'" in out, out
        store = FeatureStore.open(scene.features_path(name))
        assert store.names == [v.name for v in views] and store.shape == expected[name]
        a = store.attrs
        assert a["model"] == name and a["weights"] == "random" and a["grid"] == list(expected[name][:2])
        assert a["provenance"]["config"]["model"] == name and len(a["provenance"]["code_hash"]) == 16
        assert store.has_mask == (name != "llamav")
        model = build_model(name, conf)
        feats, valid = store.read(5)
        assert feats.dtype == np.float16 and valid.dtype == np.bool_
        assert 0.2 < valid.mean() <= 1.0 and not feats[~valid].any()
        pixels = to_float(load_image(views[5].image_path, views[5].width, views[5].height))
        direct = model.extract(torch.from_numpy(pixels).permute(2, 0, 1))
        np.testing.assert_allclose(feats.astype(np.float32), direct.features.numpy(), rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(valid, direct.valid.numpy())
        if name != "llamav":
            query = Encoder(name, a, mode="cosine").text("a yellow box")
            assert torch.allclose(query.query, model.encode_text(["a yellow box"])[0], atol=1e-6)
    captions = FeatureStore.open(scene.features_path("llama3")).records("captions")
    assert {r["view"] for r in captions} == {v.name for v in views}
    assert all(set(r) == {"view", "region", "box", "caption", "cells"} and r["caption"] for r in captions)
    cls = FeatureStore.open(scene.features_path("llamav")).records("global_tokens")
    assert len(cls) == 4 * len(views) and all(len(r["token"]) == 64 for r in cls)
    print(f"llama3 captions: {len(captions)} regions in {len(views)} views, e.g. {captions[0]}")

    out = dvc(root, "repro", *(f"features@demo-{m}" for m in NEW_ADAPTERS))
    assert "Running stage" not in out, out

    killed = Scene(tmp_path / "killed")  # same views, a run killed after 3 views, then resumed
    import shutil

    shutil.copytree(scene.colmap_dir, killed.colmap_dir)

    def stop(i: int) -> None:
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        features_run(NEW_ADAPTERS["llamav"], killed, "llamav", on_view=stop)
    stats = features_run(NEW_ADAPTERS["llamav"], killed, "llamav")
    assert stats["computed_views"] == len(views) - 3
    resumed, reference = (
        FeatureStore.open(killed.features_path("llamav")),
        FeatureStore.open(scene.features_path("llamav")),
    )
    for i in range(len(views)):
        np.testing.assert_array_equal(resumed.read(i)[0], reference.read(i)[0])
    assert resumed.records("global_tokens") == reference.records("global_tokens")


@pytest.mark.parametrize("name", ["x; touch INJECTED #", "x'; touch INJECTED; '", "my scene"])
def test_scene_names_never_reach_a_shell(tmp_path: Path, name: str) -> None:
    """A scene name from params.yaml is never parsed by the shell that runs a stage's command: the
    command gets the stage's address (``"$DVC_STAGE"``) and refuses the name with one line."""
    root = project_copy(tmp_path / "proj")
    set_params(root, scenes=[name])
    (root / "data" / name / "input").mkdir(parents=True)
    (root / "data" / name / "input" / "a.png").write_bytes(b"x")
    proc = run_tool(root, "dvc", "repro", "--single-item", f"frames@{name}", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and not (root / "INJECTED").exists(), out
    assert f"scene name {name!r} is not allowed" in out, out
