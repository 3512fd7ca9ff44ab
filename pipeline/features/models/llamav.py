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
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from pipeline.core.config import Checked, Count
from pipeline.features.config import AdapterConf, Dtype
from pipeline.features.models import register
from pipeline.features.models.base import FeatureMap, FeatureModel
from pipeline.features.vlm import ImageTokens, VisionLanguageModel, load_vlm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VlmArch(Checked):
    """The small VLM ``weights: random`` builds (family's classes, open_clip's BPE vocabulary)."""

    image_size: Count = 56
    """Input side in pixels (of each tile for mllama)."""
    patch_size: Count = 14
    """Pixels per patch side."""
    vision_width: Count = 32
    """Vision encoder width."""
    vision_layers: Count = 2
    """Vision encoder blocks."""
    vision_heads: Count = 2
    """Vision encoder attention heads (must divide vision_width)."""
    text_width: Count = 64
    """Language model hidden size: the feature dimension d."""
    text_layers: Count = 2
    """Language model blocks (mllama: the last one cross-attends to the image)."""
    text_heads: Count = 2
    """Language model attention heads (must divide text_width)."""
    select_strategy: Literal["default", "full"] = "default"
    """llava only: default drops the vision CLS token, full keeps it (as a global token)."""


@dataclass(frozen=True)
class LlamaVConf(AdapterConf):
    """``params.yaml: features.llamav``."""

    checkpoint: str = "meta-llama/Llama-3.2-11B-Vision-Instruct"
    """Hugging Face id or local folder of a llava or mllama checkpoint (its model_type picks the family)."""
    family: Literal["llava", "mllama"] = "mllama"
    """The model family weights: random builds (a checkpoint names its own): llava (LLaVA-1.5 style) |
    mllama (Llama-3.2-Vision)."""
    dtype: Dtype = "float16"
    """The dtype the VLM runs in (and its tokens are stored from): float16 | bfloat16 | float32."""
    tiles: list[Count] = field(default_factory=lambda: [2, 2])
    """mllama: tile rows and columns the whole image is resized to (their product must be the model's
    max_num_tiles)."""
    prompt: str | None = None
    """Prompt template of the language model (m3 ask): text holding <image> where the image goes and
    {question}; null: the checkpoint's chat template."""
    mean: list[float] | None = None
    """Per-channel (RGB) normalisation mean of the input in [0, 1] (null: the checkpoint processor's;
    OpenAI CLIP's for random weights)."""
    std: list[float] | None = None
    """Per-channel (RGB) normalisation standard deviation (null: as mean)."""
    random_arch: VlmArch = field(default_factory=VlmArch)
    """The architecture weights: random builds (with the classes of family)."""


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
