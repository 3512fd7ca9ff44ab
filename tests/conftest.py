"""Test setup: offline, no analytics, the session's demo and planted scenes, and the `gpu` marker skipped without CUDA.

Shared helpers live in ``tests/helpers`` (not here); this file holds only fixtures and hooks.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_SITE_CACHE_DIR", tempfile.mkdtemp(prefix="m3-dvc-site-"))


@pytest.fixture(scope="session")
def demo_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default demo scene (36 views, 320x240, seed 0), rendered once per session.

    Returns ``<tmp>/demo/input`` (view_000.png ... + ground_truth.json); its parent is a scene
    folder. Treat it as read-only (copy it, or symlink it as another scene's ``input``).
    """
    from pipeline.demo.scene import make_demo_scene

    out = tmp_path_factory.mktemp("session") / "demo" / "input"
    make_demo_scene(out)
    return out


@pytest.fixture(scope="session")
def trained_planted(tmp_path_factory: pytest.TempPathFactory):
    """The planted demo scene (:mod:`tests.helpers.planted`) with a memory trained on it (150
    steps, about a minute on 2 cores), once per session. Treat the model as read-only."""
    from tests.helpers.planted import train_planted

    return train_planted(tmp_path_factory.mktemp("planted") / "demo")


@pytest.fixture(scope="session")
def local_ray():
    """A local Ray for the Ray tests (2 CPUs, no dashboard, 100 MiB object store), started once and
    shut down (every Ray process with it) at the end of the session. Skipped without the ray extra."""
    ray = pytest.importorskip("ray", reason='the ray extra is not installed (pip install -e ".[ray]")')
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        log_to_driver=False,
        logging_level="warning",
    )
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (gsplat's CUDA rasterizer)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
