"""`dvc repro` on a copy of the project: demo -> frames -> poses; nothing changed = no work;
a `poses` param change reruns only `poses@demo`; the whole pipeline on the demo scene with a
random-weight CLIP, for both training methods."""

from __future__ import annotations

import json
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
    """Issues 5 and 6 through `dvc repro` on the demo scene: random-weight CLIP (224 px input,
    16 x 21 feature maps), default train and evaluate params, CPU. The memory reaches 25 dB
    held-out PSNR and features at least 2x closer than the constant mean feature; switching
    `train.method` to distill reruns only train and evaluate, and reports the same metrics."""
    root = tmp_path / "proj"
    project_copy(root)
    set_params(root, scenes=["demo"], models=["clip"], features={"clip": {"weights": "random", "input_size": 224}})
    metrics = root / "data" / "demo" / "eval" / "metrics.json"

    dvc(root, "repro", "evaluate@demo")
    memory = json.loads(metrics.read_text())
    clip = memory["features"]["clip"]
    print(
        f"memory: PSNR {memory['psnr']:.2f} SSIM {memory['ssim']:.4f} clip cos {clip['cosine']:.4f} "
        f"(mean feature {clip['baseline_cosine']:.4f}) L2 {clip['l2']:.4f}, {memory['gaussians']} Gaussians"
    )
    method = root / "data" / "demo" / "eval" / "per_view.json"
    assert json.loads(method.read_text())["method"] == "memory" and memory["test_views"] == 5
    assert memory["psnr"] >= 25.0
    assert 2 * clip["cosine"] <= clip["baseline_cosine"]

    set_params(root, train={"method": "distill"})
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
