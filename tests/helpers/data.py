"""Small data helpers: exact best cosines and videos from frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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


def smooth_image(height: int, width: int, seed: int = 0):
    """A smooth random test image ``[3, H, W]`` float in [0, 1] (blobs, so masks and features vary)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(2, height // 24), max(2, width // 24), generator=g)
    image = torch.nn.functional.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
    return image[0].clamp(0, 1)
