"""Test setup: offline, no analytics, and the `gpu` marker skipped without CUDA."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_SITE_CACHE_DIR", tempfile.mkdtemp(prefix="m3-dvc-site-"))

REPO = Path(__file__).resolve().parents[1]
SHARED_SCENES = REPO.parent / "shared" / "scenes"


@pytest.fixture(scope="session")
def demo_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default demo scene (36 views, 320x240, seed 0), rendered once per session.

    Returns ``<tmp>/demo/input`` (view_000.png ... + ground_truth.json); its parent is a scene
    folder. Treat it as read-only (copy it, or symlink it as another scene's ``input``).
    """
    from pipeline.demo import make_demo_scene

    out = tmp_path_factory.mktemp("session") / "demo" / "input"
    make_demo_scene(out)
    return out


def best_cos64(bank: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Exact best cosine ``[n]`` of every row against the bank, in float64."""
    b = bank.astype(np.float64)
    r = rows.astype(np.float64)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    return (r @ b.T).max(axis=1)


def write_video(path: Path, frames: list, fps: int = 10, codec: str = "mpeg4") -> Path:
    """Encode ``frames`` (``[H, W, 3] uint8`` arrays, even H and W) into a video file at ``path``."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 8_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (gsplat's CUDA rasterizer)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
