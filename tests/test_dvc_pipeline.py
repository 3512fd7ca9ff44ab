"""`dvc repro` on a copy of the project: demo -> frames -> poses; nothing changed = no work;
a `poses` param change reruns only `poses@demo`."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

BIN = Path(sys.executable).parent  # the venv's bin: `dvc` and `m3` live there


def _project_copy(dest: Path) -> None:
    """The project's files (tracked plus new, not ignored) in a fresh git repo at ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


def _dvc(root: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    env.setdefault("DVC_SITE_CACHE_DIR", str(root.parent / "dvc-site"))
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _set_params(root: Path, **sections: dict) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        if isinstance(values, dict):
            params[section] = {**(params.get(section) or {}), **values}
        else:
            params[section] = values
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_repro_poses_then_nothing_then_only_poses(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _project_copy(root)
    _set_params(root, scenes=["demo"], demo={"n_views": 16})

    out = _dvc(root, "repro", "poses@demo")
    for stage in ("demo", "frames@demo", "poses@demo"):
        assert f"Running stage '{stage}'" in out, out
    scene = root / "data" / "demo"
    assert (scene / "colmap" / "sparse" / "0" / "images.bin").is_file()
    assert not list((scene / "colmap").rglob("*.db"))
    frames_before, colmap_before = _mtimes(scene / "frames"), _mtimes(scene / "colmap")

    # nothing changed: nothing runs, nothing is rewritten
    out = _dvc(root, "repro", "poses@demo")
    assert "Running stage" not in out, out
    assert "up to date" in _dvc(root, "status", "poses@demo")
    assert _mtimes(scene / "colmap") == colmap_before

    # a poses param changes: only poses@demo reruns
    _set_params(root, poses={"max_num_features": 4096})
    out = _dvc(root, "repro", "poses@demo")
    assert "Running stage 'poses@demo'" in out, out
    assert "Running stage 'frames@demo'" not in out and "Running stage 'demo'" not in out, out
    assert _mtimes(scene / "frames") == frames_before
    assert _mtimes(scene / "colmap") != colmap_before
    assert '"max_num_features": 4096' in (scene / "poses" / "stats.json").read_text()
    assert "up to date" in _dvc(root, "status", "--with-deps", "poses@demo")  # later stages are not run here
