"""LLaMAv: the image tokens a vision-language model's language model reads, dense over the image.

The reference is Llama-3.2-Vision (``meta-llama/Llama-3.2-11B-Vision-Instruct``: vision encoder +
multi-modal projector, 4096-d tokens read through cross-attention); LLaVA-style checkpoints
(``LlavaForConditionalGeneration``, e.g. ``llava-hf/llava-1.5-7b-hf``: projected patch tokens in
place of the ``<image>`` tokens) work the same way. How each family is run, and how the whole image
becomes the dense patch grid, is in :mod:`pipeline.features.vlm`.

The map is the per-patch tokens ``[h, w, D]`` at the model's own grid (llava-1.5: 24 x 24 at
336 px; Llama-3.2-Vision with 2 x 2 tiles of 560 px: 80 x 80), in the dtype the model runs in
(float16 by default, so the float16 store holds exactly the tokens the language model reads).
Tokens that are not per patch (a CLS per tile) are the view's ``global_tokens`` records
(``llamav.zarr/global_tokens.json``: view, index, token); ``m3 ask`` gives the language model
rendered patch tokens plus these, in place of its own vision tokens.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from pipeline.features.adapter_config import LlamaVConf
from pipeline.features.models import register
from pipeline.features.models.base import FeatureMap, FeatureModel
from pipeline.features.vlm import ImageTokens, VisionLanguageModel, load_vlm

log = logging.getLogger(__name__)


@register("llamav")
class LlamaV(FeatureModel):
    """Per-patch VLM image tokens ``[h, w, D]`` (all valid) plus the view's global tokens as records."""

    record_names = ("global_tokens",)
    config_class = LlamaVConf

    def __init__(self, conf: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().__init__(conf, device)
        self.vlm: VisionLanguageModel = load_vlm(conf, self.device)
        log.info(
            "llamav: %s (%s, %s, %s), grid %s, d=%d",
            conf["checkpoint"] if conf["weights"] == "pretrained" else "random",
            self.vlm.family,
            conf["weights"],
            conf["dtype"],
            self.vlm.grid,
            self.dim,
        )

    @property
    def dim(self) -> int:
        return self.vlm.dim

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The model's patch grid: the whole image is resized to the model's input, whatever its size."""
        return self.vlm.grid

    @torch.no_grad()
    def extract(self, image: torch.Tensor) -> FeatureMap:
        """``image [3, H, W]`` in [0, 1] -> image tokens ``[h, w, D]`` (all valid) + global tokens."""
        tokens = self.vlm.image_tokens(image)
        features = tokens.grid.float()
        valid = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        records = [{"index": k, "token": t.float().cpu().tolist()} for k, t in enumerate(tokens.globals)]
        return FeatureMap(features=features, valid=valid, records={"global_tokens": records})


def tokens_from_records(grid: torch.Tensor, records: list[dict[str, Any]]) -> ImageTokens:
    """:class:`ImageTokens` of one view from its patch tokens ``grid [h, w, D]`` and its
    ``global_tokens`` records (ordered by index)."""
    rows = sorted(records, key=lambda r: int(r["index"]))
    globals_ = torch.tensor([r["token"] for r in rows], dtype=torch.float32).reshape(len(rows), grid.shape[-1])
    return ImageTokens(grid, globals_)
