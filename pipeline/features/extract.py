"""Extracting a scene's views with one model: the per-view computation and the local executor.

:func:`extract_view` is the whole computation of one view (decode, resize, forward pass, cast to
the store's float16). :class:`LocalExtractor` runs it in the stage's process; Ray actors run the
same function (:class:`pipeline.features.pool.RayExtractor`). Both yield ``(i, features, valid,
seconds)`` in view order and the stage writes them into the store, so a store is byte-identical
whichever executor made it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.core.images import load_image, to_float
from pipeline.features.models import FeatureModel

Job = tuple[int, Path]
"""A view to extract: its index in the store and its image file."""
Records = dict[str, list[dict[str, Any]]]
"""A view's records by name (:attr:`pipeline.features.models.base.FeatureMap.records`)."""
Result = tuple[int, np.ndarray, np.ndarray, Records, float]
"""``(i, features [h, w, d] float16, valid [h, w] bool, records, seconds of compute)``."""


def extract_view(
    model: FeatureModel, path: Path, width: int, height: int, data: bytes | None = None
) -> tuple[np.ndarray, np.ndarray, Records]:
    """Features of the image at ``path`` (or its bytes ``data``) at ``width x height``:
    ``(features [h, w, d] float16, valid [h, w] bool, records)``."""
    pixels = to_float(load_image(path, width, height, data))
    fm = model.extract(torch.from_numpy(pixels).permute(2, 0, 1).contiguous())
    features = fm.features.detach().cpu().numpy().astype(np.float16)
    return features, fm.valid.detach().cpu().numpy().astype(bool), fm.records


class Extractor(Protocol):
    """An executor: extracts views and yields them in the order given."""

    def layout(self, height: int, width: int) -> tuple[int, int, int, bool]:
        """``(h, w, d, has_mask)`` of the feature map of a ``height x width`` view."""
        ...

    def extract(
        self, jobs: list[Job], width: int, height: int, waiting: Callable[[], None] | None = None
    ) -> Iterator[Result]:
        """Extract ``jobs`` and yield their results in the order of ``jobs``; ``waiting()`` is called
        every second spent waiting for a result (remote executors)."""
        ...

    def live_workers(self) -> int:
        """Workers extracting right now (for the progress bar)."""
        ...


class LocalExtractor:
    """The local executor: one loaded model in this process."""

    def __init__(self, model: FeatureModel) -> None:
        self.model = model

    def layout(self, height: int, width: int) -> tuple[int, int, int, bool]:
        h, w = self.model.grid_size(height, width)
        return h, w, self.model.dim, bool(self.model.has_mask)

    def extract(
        self, jobs: list[Job], width: int, height: int, waiting: Callable[[], None] | None = None
    ) -> Iterator[Result]:
        for i, path in jobs:
            t0 = time.perf_counter()
            features, valid, records = extract_view(self.model, path, width, height)
            yield i, features, valid, records, time.perf_counter() - t0

    def live_workers(self) -> int:
        return 1
