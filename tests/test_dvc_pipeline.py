"""`dvc repro` on a copy of the project: demo -> frames -> poses; nothing changed = no work;
a `poses` param change reruns only `poses@demo`."""
from __future__ import annotations

from pathlib import Path

import pytest

from project import dvc, mtimes, project_copy, set_params


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
    assert '"max_num_features": 4096' in (scene / "poses" / "stats.json").read_text()
    assert "up to date" in dvc(root, "status", "--with-deps", "poses@demo")  # later stages are not run here
