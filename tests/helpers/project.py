"""Helpers for tests that run real DVC on a copy of the project (no mocks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers.paths import REPO

BIN = Path(sys.executable).parent  # the venv's bin: `dvc` and `m3` live there


def project_copy(dest: Path, commit: bool = False) -> Path:
    """The project's files (tracked plus new, not ignored) in a fresh git repo at ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git(dest, "init", "-q")
    if commit:
        git(dest, "add", "-A")
        git(dest, "commit", "-qm", "project copy")
    return dest


def git(root: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(["git", *args], cwd=root, check=True, env=env, capture_output=True)


def tool_env(root: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1", **extra}
    env.setdefault("DVC_SITE_CACHE_DIR", str(root.parent / "dvc-site"))
    return env


def run_tool(root: Path, tool: str, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run ``dvc`` or ``m3`` from the venv in ``root``; with ``check`` a failure shows its output."""
    proc = subprocess.run([str(BIN / tool), *args], cwd=root, env=tool_env(root, **env), capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"{tool} {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def dvc(root: Path, *args: str, **env: str) -> str:
    proc = run_tool(root, "dvc", *args, **env)
    return proc.stdout + proc.stderr


def set_params(root: Path, **sections: object) -> None:
    """Merge ``sections`` into ``root/params.yaml`` (dict sections merge one level deep)."""
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        if isinstance(values, dict):
            merged = dict(params.get(section) or {})
            for key, value in values.items():
                if isinstance(value, dict) and isinstance(merged.get(key), dict):
                    merged[key] = {**merged[key], **value}
                else:
                    merged[key] = value
            params[section] = merged
        else:
            params[section] = values
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def mtimes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
