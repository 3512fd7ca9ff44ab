"""Region-language features: SAM automatic masks, one CLIP embedding per mask.

Each view is segmented with segment-anything's automatic mask generator; every mask's bounding
box is cropped (background optionally blanked), padded to a square and encoded by the CLIP image
tower. The normalised embedding is broadcast to the mask's cells of a regular grid (the image
downscaled by ``stride``); where masks overlap the smaller one wins. Cells no mask covers are zero
and invalid. The SAM machinery lives in :mod:`pipeline.features.regions` (``llama3`` and ``seem``
use it too).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.core.errors import M3Error
from pipeline.features.adapter_config import SamClipConf
from pipeline.features.models import register
from pipeline.features.models.base import FeatureMap, FeatureModel
from pipeline.features.models.clip import load_clip
from pipeline.features.regions import (
    SamMasks,
    assign_masks,
    broadcast_regions,
    owned_masks,
    square_crops,
    stride_grid,
)

log = logging.getLogger(__name__)

__all__ = ["SamClip", "SamClipConf", "assign_masks"]


@register("sam_clip")
class SamClip(FeatureModel):
    max_text_tokens = 77  # its CLIP's
    """SAM masks + CLIP crop embeddings on a grid of ``(round(H/stride), round(W/stride))`` cells."""

    has_mask = True
    config_class = SamClipConf

    def __init__(self, conf: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().__init__(conf, device)
        # SAM is loaded on first use: encode_text (queries) needs only CLIP
        self.segment = SamMasks(conf, self.device, "features.sam_clip")
        try:
            self.clip, mean, std = load_clip(conf["clip"], self.device)
        except M3Error as exc:  # name the keys the user has to fix here
            raise M3Error(str(exc).replace("features.clip", "features.sam_clip.clip")) from exc
        self.mean, self.std = mean[None], std[None]  # [1, 3, 1, 1]
        self.crop_size = int(self.clip.native_size)
        log.info(
            "sam_clip: SAM %s (%s), CLIP %s (%s), d=%d",
            conf["sam_type"],
            conf["weights"],
            conf["clip"]["checkpoint"],
            conf["clip"]["weights"],
            self.dim,
        )

    @property
    def dim(self) -> int:
        return int(self.clip.dim)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return stride_grid(height, width, float(self.conf["stride"]))

    def crops(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """CLIP inputs ``[M, 3, S, S]`` (normalised): each mask's box, padded square, resized to S."""
        crops = square_crops(image.to(self.device, torch.float32), masks, self.crop_size, self.conf["blank_background"])
        return (crops - self.mean) / self.std

    @torch.no_grad()
    def encode_masks(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Unit CLIP embeddings ``[M, d]`` float32 of the crops of ``masks [M, H, W]``."""
        if len(masks) == 0:
            return torch.zeros(0, self.dim, device=self.device)
        embeddings = []
        for part in masks.split(int(self.conf["batch_size"])):
            embeddings.append(self.clip.encode_image(self.crops(image, part)).float())
        return F.normalize(torch.cat(embeddings), dim=-1)

    @torch.no_grad()
    def extract(self, image: torch.Tensor) -> FeatureMap:
        """``image [3, H, W]`` -> ``features [h, w, d]`` (zero where invalid), ``valid [h, w]``."""
        grid = self.grid_size(int(image.shape[1]), int(image.shape[2]))
        masks = self.segment(image)
        used, owner = owned_masks(masks, grid, float(self.conf["cell_coverage"]))  # only owners are encoded
        features, valid = broadcast_regions(owner, self.encode_masks(image, masks[used]))
        log.debug(
            "sam_clip: %d masks, %d encoded, %.0f%% cells valid", len(masks), len(used), 100 * valid.float().mean()
        )
        return FeatureMap(features=features, valid=valid)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised CLIP text embeddings ``[T, d]`` (the space of the mask embeddings)."""
        return F.normalize(self.clip.encode_text(texts).float(), dim=-1)
