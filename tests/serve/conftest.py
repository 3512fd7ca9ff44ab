"""``m3 serve`` as a real process on 127.0.0.1: two tiny trained scenes and the params it reads.

The scenes (``alpha``, and ``beta`` a copy that the reload test retrains) are the training
helpers' small demo scene with one model (``clip``, 32 dims, no text tower to load: phrases are
queried through ``vectors.json``), trained for 4 CPU steps.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.core.io import write_json
from pipeline.core.scene import Scene
from stages.server.client import M3Client, M3ServerError
from tests.helpers.paths import REPO

DIM = 32
PHRASES = ("red thing", "blue thing")
SETTINGS = {"mode": "cosine", "vectors": "vectors.json", "device": "cpu"}


@dataclass
class Served:
    """A running server: its client, URL, process, the scenes it serves and its params file."""

    client: M3Client
    url: str
    process: subprocess.Popen
    scenes: dict[str, Scene]
    params: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train_scene(scene: Scene, seed: int) -> None:
    """Train ``scene``'s memory (4 CPU steps, ``seed``) and write its model folder."""
    from pipeline.splat.train import train
    from pipeline.splat.trained import write_model
    from tests.helpers.training import quick_config

    tr = train(scene, quick_config(seed=seed, query_dims={"clip": 8}), ["clip"], progress=False)
    write_model(scene.model_dir, tr, {"steps": tr.step})


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "stages.cli", "serve", *args]


@contextmanager
def running(args: list[str], log: Path, url: str, token: str | None = None) -> Iterator[subprocess.Popen]:
    """Start ``m3 serve args`` (stderr to ``log``), wait for ``/health``, stop it (SIGTERM) at the end."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as err:
        proc = subprocess.Popen(serve_command(*args), cwd=REPO, env=env, stdout=err, stderr=subprocess.STDOUT)
    try:
        client, deadline = M3Client(url, token, timeout=10), time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"m3 serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if client.health() == {"status": "ok"}:
                    break
            except (OSError, M3ServerError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"m3 serve did not answer /health in 180 s:\n{log.read_text()}")
            time.sleep(0.3)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server of scenes ``alpha`` and ``beta`` on a free port of 127.0.0.1."""
    from tests.helpers.training import build_scene

    root = tmp_path_factory.mktemp("serve")
    alpha = build_scene(root / "alpha", n_views=10, width=64, height=48, n_points=300, models={"clip": (DIM, 4)})
    rng = np.random.default_rng(5)
    write_json(alpha.root / "vectors.json", {p: rng.normal(size=DIM).tolist() for p in PHRASES})
    train_scene(alpha, seed=0)
    shutil.copytree(alpha.root, root / "beta")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"query": {**SETTINGS, "n_views": 2}, "export": SETTINGS}))
    scenes = {"alpha": alpha, "beta": Scene(root / "beta")}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [str(alpha.root), str(scenes["beta"].root), "--port", str(port), "--params", str(params)]
    with running(args, root / "server.log", url) as proc:
        yield Served(M3Client(url), url, proc, scenes, params)
