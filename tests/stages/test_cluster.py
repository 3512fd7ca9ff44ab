"""`m3 cluster repro`: the plan of a scene, what travels to the nodes, the remote the scene tasks
use, a failing stage's error, and two scenes (the demo at seeds 0 and 1) run on a local Ray after
which a plain `dvc status` / `dvc repro` finds everything up to date."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipeline.cluster.config import ClusterConfig
from pipeline.core.errors import M3Error
from tests.helpers.project import dvc, git, project_copy, run_tool, set_params

SMALL = {
    "models": ["clip"],
    "demo": {"n_views": 16},  # the fewest views SfM registers on the demo room
    "features": {"clip": {"weights": "random"}},
    "train": {"cpu": {"iterations": 30, "densify_start": 1000}, "checkpoint_every": 1000},
    "evaluate": {"lpips": False, "n_renders": 1},
}


def _add_scene(root: Path, scene: str, seed: int) -> None:
    """``data/<scene>/input``: the demo room rendered with another seed, added to DVC like a user's photos."""
    run_tool(root, "m3", "demo-scene", f"data/{scene}", "--seed", str(seed), "--n-views", "16")
    dvc(root, "add", f"data/{scene}/input")


def test_scene_plan_and_what_travels_to_the_nodes(tmp_path: Path) -> None:
    from dvc.repo import Repo

    from stages.cluster import git_state, scene_plan

    root = project_copy(tmp_path / "proj")
    set_params(root, scenes=["demo", "kitchen"], models=["clip", "dinov2"])
    (root / "data/kitchen/input").mkdir(parents=True)
    (root / "data/kitchen/input/a.png").write_bytes(b"photo")
    dvc(root, "add", "data/kitchen/input")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "two scenes")
    with contextlib.chdir(root), Repo(".") as repo:
        assert scene_plan(repo, "demo") == (
            ["demo", "frames@demo", "poses@demo", "features@demo-clip", "features@demo-dinov2", "bank@demo-clip"]
            + ["bank@demo-dinov2", "train@demo", "evaluate@demo"],
            [],
        )
        stages, inputs = scene_plan(repo, "kitchen")
        assert stages[:3] == ["frames@kitchen", "poses@kitchen", "features@kitchen-clip"] and len(stages) == 8
        assert inputs == ["data/kitchen/input.dvc"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert git_state(root) == (head, {})
    set_params(root, train={"seed": 1})
    (root / "notes.txt").write_text("new")
    (root / "Makefile").unlink()
    commit, changes = git_state(root)
    assert commit == head
    assert changes == {"Makefile": None, "notes.txt": b"new", "params.yaml": (root / "params.yaml").read_bytes()}


def test_remote_is_the_configured_one_or_a_scratch_folder_on_one_machine(tmp_path: Path) -> None:
    from dvc.repo import Repo

    from stages.cluster import SCRATCH_REMOTE, choose_remote

    def cluster(*ips: str) -> SimpleNamespace:  # what choose_remote reads of Ray: nodes and this node's IP
        nodes = [{"Alive": True, "NodeManagerAddress": ip} for ip in ips]
        return SimpleNamespace(nodes=lambda: nodes, util=SimpleNamespace(get_node_ip_address=lambda: "10.0.0.1"))

    root = project_copy(tmp_path / "proj")
    with contextlib.chdir(root), Repo(".") as repo:
        name, conf = choose_remote(repo, cluster("10.0.0.1"), root)
        assert (name, conf) == (SCRATCH_REMOTE, {"url": str(root.resolve() / ".dvc/tmp/cluster-remote")})
        with pytest.raises(M3Error, match=r"no DVC remote configured.*2 node\(s\).*m3 share remote NAME URL"):
            choose_remote(repo, cluster("10.0.0.1", "10.0.0.2"), root)
    run_tool(root, "m3", "share", "remote", "lab", "ssh://me@nas/srv/m3")
    with contextlib.chdir(root), Repo(".") as repo:
        name, conf = choose_remote(repo, cluster("10.0.0.1", "10.0.0.2"), root)
    assert name == "lab" and conf["url"] == "ssh://me@nas/srv/m3" and conf["verify"] is True


@pytest.mark.slow
def test_a_failing_stage_names_scene_stage_and_node(local_ray, tmp_path: Path) -> None:
    from stages.cluster import repro

    root = project_copy(tmp_path / "proj")
    set_params(root, scenes=["demo", "broken"], **SMALL)
    (root / "data/broken/input").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        (root / "data/broken/input" / name).write_bytes(b"not an image")
    dvc(root, "add", "data/broken/input")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "a broken scene")
    node = local_ray.util.get_node_ip_address()
    with pytest.raises(M3Error) as err:
        repro(root, ClusterConfig(), ["broken"])  # no remote configured: a scratch one (one machine)
    assert str(err.value) == (
        f"cluster: 1 scene(s) failed: broken: stage frames@broken failed on node {node} (dvc repro exit 255): "
        "error: data/broken/input: only 0 of 3 images readable, need at least 3; add more (readable) images "
        "or a longer video | ERROR: failed to reproduce 'frames@broken': "
        'failed to run: m3 frames "$DVC_STAGE", exited with 2'
    )
    assert "frames@broken" not in (
        yaml.safe_load((root / "dvc.lock").read_text()) if (root / "dvc.lock").exists() else {}
    ).get("stages", {})


@pytest.mark.slow
def test_two_scenes_on_a_local_ray_then_dvc_finds_everything_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    root = project_copy(tmp_path / "proj")
    set_params(root, scenes=["demo", "demo2"], cluster={"local_cpus": 2, "object_store_mb": 100}, **SMALL)
    _add_scene(root, "demo2", seed=1)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "the demo room at seeds 0 and 1")
    remote = tmp_path / "remote"
    remote.mkdir()
    run_tool(root, "m3", "share", "remote", "lab", str(remote))

    bars = run_tool(root, "m3", "--progress", "cluster", "repro").stderr  # a private Ray with 2 CPUs, stopped
    assert "demo: 100%" in bars and "7/7" in bars and "demo2: 100%" in bars and "6/6" in bars, bars
    assert "workers 1" in bars  # live nodes on each scene's bar

    # outputs where `dvc repro` puts them, recorded: nothing to do for DVC
    assert "Data and pipelines are up to date." in dvc(root, "status")
    out = dvc(root, "repro")
    assert "Running stage" not in out and "is cached" not in out, out
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert len(lock) == 13  # 7 stages of demo, 6 of demo2 (its input has its .dvc file)
    metrics = {s: json.loads((root / f"data/{s}/eval/metrics.json").read_text()) for s in ("demo", "demo2")}
    assert all(m["psnr"] > 10 and m["test_views"] == 2 for m in metrics.values())
    assert metrics["demo"]["psnr"] != metrics["demo2"]["psnr"]  # two different scenes
    # pushed with their run-cache: another clone restores them (`m3 share pull`)
    runs = [p for p in remote.rglob("runs/*/*/*") if p.is_file()]
    assert len(runs) >= 9  # demo, frames, poses, features, bank of both scenes

    # nothing changed: the command runs nothing (and starts no Ray)
    again = run_tool(root, "m3", "cluster", "repro")
    again = again.stdout + again.stderr
    assert "every stage of demo, demo2 is up to date" in again, again
