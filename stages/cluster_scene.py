"""One scene on a cluster node: every stage of the scene, in order, in a clone of its own.

Nodes share the git checkout and the DVC remote, not a disk, and DVC allows one ``dvc repro`` per
repository at a time. So each scene task (:func:`run_scene`, run by Ray on some node) clones the
project at the driver's commit into a fresh folder, applies the driver's uncommitted changes,
points the clone at the driver's DVC remote, pulls the scene's input and every run-cache entry
(``m3 share pull``: stages anyone computed before are restored, not rerun), runs ``dvc repro`` of
the scene's stages (in pipeline order, each reported as it starts), and pushes outputs and run-cache
(``m3 share push``). It returns the scene's ``dvc.lock`` entries and its small uncached outputs
(metrics, plots), and deletes the clone. The driver (:mod:`stages.cluster`) records them.

Each command runs the clone's own code (``PYTHONPATH``), so what runs is what DVC hashed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.errors import M3Error

_STAGE_LINE = re.compile(r"(?P<what>Running stage|Stage) '(?P<stage>[^']+)'")
PIPELINE_ORDER = ("demo", "frames", "poses", "features", "bank", "train", "evaluate")
"""Stage kinds in the order they depend on each other (dvc.yaml)."""


@dataclass(frozen=True)
class SceneJob:
    """What a node needs to run one scene (sent by the driver; plain data)."""

    scene: str
    stages: list[str]
    """DVC stage names of the scene in pipeline order (``demo``, ``frames@s``, ...)."""
    inputs: list[str]
    """``.dvc`` files of the scene's added inputs, pulled from the remote before the stages run."""
    source: str
    """``git clone`` source: the project folder on every node, or a git URL."""
    commit: str
    changes: dict[str, bytes | None]
    """The driver's uncommitted files (``None``: deleted), relative to the project root."""
    remote: str
    remote_conf: dict[str, Any]
    workdir: str | None
    ray_address: str
    """The cluster's address: a stage using the Ray executor joins it."""


class Board:
    """A Ray actor the scene tasks report to and the driver reads: scene -> (stages done, stage)."""

    def __init__(self) -> None:
        self.state: dict[str, tuple[int, str]] = {}

    def report(self, scene: str, done: int, stage: str) -> None:
        self.state[scene] = (done, stage)

    def snapshot(self) -> dict[str, tuple[int, str]]:
        return dict(self.state)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], what: str) -> None:
    """Run ``cmd``; an :class:`M3Error` naming ``what`` and the command's last words when it fails."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(("error:", "ERROR:"))]
        raise M3Error(f"{what} failed (exit {proc.returncode}): {' | '.join((errors or lines)[-3:])}")


def _environment(clone: Path, ray_address: str) -> dict[str, str]:
    """Environment of the commands in ``clone``: this venv's tools, the clone's code, the cluster (the
    compiled CPU rasterizer is built once per source, in a folder that clones share)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(clone)
    env["RAY_ADDRESS"] = ray_address
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def _checkout(job: SceneJob, clone: Path, node: str) -> None:
    """``clone``: the project at the driver's commit with its uncommitted changes and remote."""
    from dvc.repo import Repo

    env = dict(os.environ)
    what = f"{job.scene}: git clone of {job.source} on node {node}"
    _run(["git", "clone", "-q", "--no-checkout", job.source, str(clone)], clone.parent, env, what)
    try:
        _run(["git", "checkout", "-q", job.commit], clone, env, "git checkout")
    except M3Error as exc:
        raise M3Error(
            f"{job.scene}: commit {job.commit[:12]} is not in {job.source} on node {node} ({exc}); "
            "bring that checkout up to date (git pull) or set cluster.source to a git URL holding it"
        ) from None
    for rel, data in job.changes.items():
        path = clone / rel
        if data is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    with Repo(str(clone)) as repo:
        local = Path(repo.config.files["local"])
        with repo.config.edit("local") as conf:
            conf["remote"][job.remote] = dict(job.remote_conf)
            conf["core"]["remote"] = job.remote
        local.chmod(0o600)  # the remote's section can hold its password


def _uncached_outputs(clone: Path, stages: list[str]) -> dict[str, bytes]:
    """Bytes of the stages' outputs kept out of the DVC cache (metrics, plots), by relative path."""
    from dvc.repo import Repo

    files: dict[str, bytes] = {}
    with contextlib.chdir(clone), Repo(".") as repo:  # stage addresses are relative to the working directory
        for stage in repo.index.stages:
            if stage.addressing not in stages:
                continue
            for out in stage.outs:
                path = clone / out.def_path
                if not out.use_cache and path.exists():
                    for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
                        files[f.relative_to(clone).as_posix()] = f.read_bytes()
    return files


def _repro(job: SceneJob, clone: Path, env: dict[str, str], node: str, board: Any) -> tuple[list[str], list[str]]:
    """``dvc repro`` of the scene's stages (one process: DVC runs them in pipeline order), reporting
    each stage to ``board`` as DVC starts it; returns the stages run and those restored from the
    run-cache."""
    ran, restored, tail = [], [], []
    current = job.stages[0]
    cmd = ["dvc", "repro", *job.stages]
    with subprocess.Popen(cmd, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout or []:
            tail = (tail + [line.strip()])[-200:]
            found = _STAGE_LINE.match(line.strip())
            if not found:
                continue
            current = found["stage"]
            if found["what"] == "Running stage":
                ran.append(current)
                board.report.remote(job.scene, job.stages.index(current), current)
            elif "is cached" in line:
                restored.append(current)
    if proc.returncode != 0:
        errors = [line for line in tail if line.startswith(("error:", "ERROR:"))] or [x for x in tail if x][-3:]
        raise M3Error(
            f"{job.scene}: stage {current} failed on node {node} (dvc repro exit {proc.returncode}): "
            + " | ".join(errors[-3:])
        )
    return ran, restored


def run_scene(job: SceneJob, board: Any) -> dict[str, Any]:
    """Run every stage of ``job.scene`` in a clone on this node (see the module docstring).

    Returns ``{scene, node, ran, restored, lock, files, gitignore, seconds}``: ``lock`` the scene's
    ``dvc.lock`` entries, ``files`` its uncached outputs, ``gitignore`` the lines of the scene's
    ``.gitignore`` files, ``ran``/``restored`` the stages run here and those restored from the
    run-cache. Failures are :class:`M3Error` naming scene, stage and node.
    """
    import ray

    start = time.perf_counter()
    node = ray.util.get_node_ip_address()
    root = Path(job.workdir or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    clone = Path(tempfile.mkdtemp(prefix=f"m3-{job.scene}-", dir=root))  # git clones into an empty folder
    env = _environment(clone, job.ray_address)
    kinds = ",".join(dict.fromkeys(s.partition("@")[0] for s in job.stages))
    try:
        board.report.remote(job.scene, 0, "clone")
        _checkout(job, clone, node)
        if job.inputs:
            _run(["dvc", "pull", *job.inputs], clone, env, f"{job.scene}: dvc pull of its input on node {node}")
        _run(["m3", "share", "pull", job.scene, "--stages", kinds], clone, env, f"{job.scene}: m3 share pull")
        ran, restored = _repro(job, clone, env, node, board)
        board.report.remote(job.scene, len(job.stages), "push")
        _run(["m3", "share", "push", job.scene, "--stages", kinds], clone, env, f"{job.scene}: m3 share push")
        lock = (yaml.safe_load((clone / "dvc.lock").read_text()) or {}).get("stages", {})
        return {
            "scene": job.scene,
            "node": node,
            "ran": ran,
            "restored": restored,
            "lock": {name: lock[name] for name in job.stages},
            "files": _uncached_outputs(clone, job.stages),
            "gitignore": {
                p.relative_to(clone).as_posix(): p.read_text().splitlines()
                for p in sorted((clone / "data" / job.scene).rglob(".gitignore"))
            },
            "seconds": round(time.perf_counter() - start, 1),
        }
    finally:
        shutil.rmtree(clone, ignore_errors=True)
