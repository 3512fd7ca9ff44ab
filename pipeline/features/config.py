"""Typed configs of the feature adapters (``params.yaml: features.<model>``): the shared parts.

Each adapter declares a frozen dataclass (its ``config_class``, in
:mod:`pipeline.features.adapter_config`) whose fields carry their help as field docstrings,
exactly like the stage sections (:mod:`pipeline.core.config`): ``m3 params features <model>``
lists them and ``m3 features`` offers each scalar field as ``--<model>.<field>``. The parts
several adapters use are defined here, once: the base every adapter config extends
(:class:`AdapterConf`: ``weights``, ``seed``), the CLIP model (:class:`ClipModelConf`:
``features.clip`` and ``features.sam_clip.clip``), SAM and its automatic mask generator
(:class:`SamConf`: ``features.sam_clip`` at its top level, ``features.seem.sam``,
``features.llama3.sam``) and the region grid (:class:`RegionConf`). ``random_arch`` sections are
the small architectures ``weights: random`` builds (tests, no download).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.core.config import Checked, Count, Fraction, Natural

Weights = Literal["pretrained", "random"]
"""How an adapter's models get their weights."""
Dtype = Literal["float16", "bfloat16", "float32"]
"""Names of the torch dtypes a model can run in (:data:`pipeline.features.models.base.DTYPES`)."""
SamType = Literal["vit_h", "vit_l", "vit_b"]
"""SAM architectures (:data:`pipeline.features.regions.SAM_URLS` has their checkpoints)."""


@dataclass(frozen=True)
class AdapterConf(Checked):
    """Keys of every adapter: how its models get their weights."""

    weights: Weights = "pretrained"
    """pretrained: load the checkpoints this section names; random: the same architectures, randomly
    initialised (at their random_arch size where the section has one): for tests, no download. Applies
    to every model of the adapter, except a nested section with its own weights key (sam_clip.clip)."""
    seed: int = 0
    """Seed of the random initialisation (weights: random)."""


@dataclass(frozen=True)
class TowersArch(Checked):
    """A small two-tower (image + text transformer) architecture; the text tokenizer is open_clip's
    BPE (vocabulary 49408)."""

    image_size: Count = 56
    """Native input side in pixels (position embeddings are interpolated to other sizes)."""
    patch_size: Count = 14
    """Pixels per patch side."""
    width: Count = 64
    """Image transformer width."""
    layers: Count = 2
    """Image transformer blocks."""
    heads: Count = 2
    """Image transformer attention heads (must divide width)."""
    text_width: Count = 32
    """Text transformer width."""
    text_layers: Count = 2
    """Text transformer blocks."""
    text_heads: Count = 2
    """Text transformer attention heads (must divide text_width)."""


@dataclass(frozen=True)
class ClipArch(TowersArch):
    """The small CLIP ``weights: random`` builds."""

    embed_dim: Count = 32
    """Dimension of the joint image-text embedding: the feature dimension d."""
    context_length: Count = 77
    """Text tokens the text tower reads (CLIP's 77)."""


@dataclass(frozen=True)
class ClipModelConf(AdapterConf):
    """A CLIP model (open_clip or Hugging Face); ``features.clip`` adds its dense input size."""

    source: Literal["open_clip", "hf"] = "open_clip"
    """open_clip: checkpoint is an open_clip architecture name and pretrained its weights; hf: checkpoint
    is a Hugging Face CLIP id or a local folder saved with save_pretrained."""
    checkpoint: str = "ViT-L-14-336"
    """open_clip architecture name (source: open_clip), or Hugging Face CLIP id / local folder (source: hf)."""
    pretrained: str = "openai"
    """open_clip pretrained tag or local weights file (source: open_clip only)."""
    random_arch: ClipArch = field(default_factory=ClipArch)
    """The architecture weights: random builds (with the classes of source)."""
    mean: list[float] | None = None
    """Per-channel (RGB) normalisation mean of the input in [0, 1] (null: the checkpoint's; OpenAI's
    for random weights)."""
    std: list[float] | None = None
    """Per-channel (RGB) normalisation standard deviation (null: as mean)."""


@dataclass(frozen=True)
class SamArch(Checked):
    """A small SAM image encoder (prompt encoder and mask decoder as in every SAM)."""

    embed_dim: Count = 64
    """Image encoder width."""
    depth: Count = 2
    """Image encoder blocks."""
    num_heads: Count = 2
    """Image encoder attention heads (must divide embed_dim)."""
    global_attn_indexes: list[Natural] = field(default_factory=lambda: [1])
    """Blocks with global attention (the others attend within windows); each < depth."""
    img_size: Count = 256
    """Input side in pixels (a multiple of 16)."""


@dataclass(frozen=True)
class SamConf(Checked):
    """SAM and its automatic mask generator (the segment-anything package)."""

    sam_type: SamType = "vit_h"
    """Architecture of the SAM checkpoint: vit_h | vit_l | vit_b."""
    checkpoint: str = "sam_vit_h_4b8939.pth"
    """Local SAM checkpoint file of sam_type (download it once; the error for a missing one gives the URL)."""
    random_arch: SamArch | None = field(default_factory=SamArch)
    """The architecture weights: random builds (null: the full sam_type architecture, randomly initialised)."""
    points_per_side: Count = 32
    """Mask generator: prompts per image side (points_per_side^2 point prompts in a grid)."""
    points_per_batch: Count = 64
    """Mask generator: point prompts per SAM forward pass (memory vs speed; no effect on the masks)."""
    pred_iou_thresh: Fraction = 0.88
    """Mask generator: masks whose predicted IoU is below this are dropped."""
    stability_score_thresh: Fraction = 0.95
    """Mask generator: masks whose stability score (IoU between the mask at two thresholds) is below
    this are dropped."""
    box_nms_thresh: Fraction = 0.7
    """Mask generator: box IoU above which the lower-scored of two masks is dropped (non-maximum suppression)."""
    crop_n_layers: Natural = 0
    """Mask generator: layers of zoomed-in image crops also segmented (0: the whole image only)."""


@dataclass(frozen=True)
class RegionConf(AdapterConf):
    """Keys of the region adapters: one embedding per SAM region, on a regular grid of cells."""

    stride: Count = 4
    """Feature grid = the image downscaled by this factor (round(H / stride) x round(W / stride) cells)."""
    cell_coverage: Fraction = 0.5
    """A mask covers a grid cell when it holds this share of the cell's pixels; where masks overlap the
    smallest covering one owns the cell, and cells no mask covers are invalid."""
