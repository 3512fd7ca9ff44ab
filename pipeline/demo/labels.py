"""LERF-OVS-style annotations of the demo scene, from its per-pixel object ids.

One JSON file per annotated view, in LangSplat's layout (what
:func:`pipeline.evaluate.lerf.read_labels` reads, like the LERF-OVS ``label/<scene>/`` folders)::

    {"info": {"name": "view_008.png", "height": 240, "width": 320},
     "objects": [{"category": "blue sphere", "bbox": [x1, y1, x2, y2], "segmentation": [[x, y], ...]}]}

Each visible part (connected component of at least ``min_pixels`` pixels) of an object is one
entry: its outer contour as the polygon and its pixel extent as the box.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.core.io import write_json


def frame_labels(name: str, object_id: np.ndarray, names: list[str], min_pixels: int = 20) -> dict[str, Any]:
    """The annotation record of one view: ``object_id [H, W]`` (index into ``names``, -1: none)."""
    h, w = object_id.shape
    objects = []
    for i, category in enumerate(names):
        count, comp = cv2.connectedComponents((object_id == i).astype(np.uint8), connectivity=8)
        for c in range(1, count):
            part = (comp == c).astype(np.uint8)
            if part.sum() < min_pixels:
                continue
            contours, _ = cv2.findContours(part, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            polygon = max(contours, key=len).reshape(-1, 2)
            ys, xs = np.nonzero(part)
            objects.append(
                {
                    "category": category,
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())],
                    "segmentation": polygon.tolist(),
                }
            )
    return {"info": {"name": name, "height": int(h), "width": int(w)}, "objects": objects}


def write_frame_labels(folder: Path, name: str, object_id: np.ndarray, names: list[str]) -> Path:
    """Write ``folder/<stem>.json`` for view ``name`` (see :func:`frame_labels`); returns the file."""
    path = Path(folder) / f"{Path(name).stem}.json"
    write_json(path, frame_labels(name, object_id, names))
    return path
