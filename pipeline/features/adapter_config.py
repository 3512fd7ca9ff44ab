"""The adapters' own ``params.yaml: features.<model>`` sections, apart from the adapters' code.

Each adapter's ``config_class`` (:mod:`pipeline.features.models`) is defined here, with the
architecture its ``weights: random`` builds, on the shared parts of :mod:`pipeline.features.config`;
:data:`ADAPTER_CONFIGS` maps every adapter name to it. No model library is imported, so ``m3
features --help`` and ``m3 params features`` list every ``--<model>.<key>`` option without loading
torch; registering an adapter whose ``config_class`` is not listed here is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.core.config import Checked, Count
from pipeline.features.config import AdapterConf, ClipModelConf, Dtype, RegionConf, SamConf, TowersArch


@dataclass(frozen=True)
class FlorenceArch(Checked):
    """The small Florence-2 ``weights: random`` builds (DaViT image encoder, BART text model)."""

    image_size: Count = 64
    """Input side in pixels of each crop."""
    vision_width: Count = 16
    """Width of the image encoder's first stage (the later stages have 2x and 4x)."""
    text_width: Count = 64
    """Width of the text encoder-decoder."""
    text_layers: Count = 1
    """Blocks of the text encoder and of the decoder, each."""
    text_heads: Count = 2
    """Attention heads of the text model (must divide text_width)."""


@dataclass(frozen=True)
class CaptionerConf(Checked):
    """``params.yaml: features.llama3.captioner`` (weights and seed are the adapter's own keys)."""

    checkpoint: str = "florence-community/Florence-2-large"
    """Hugging Face id or local folder of a Florence2ForConditionalGeneration (with its processor)."""
    task: Literal["<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>"] = "<DETAILED_CAPTION>"
    """Florence-2 task token: how long a description each region gets."""
    max_new_tokens: Count = 48
    """Most tokens generated per caption (a longer caption is cut there)."""
    num_beams: Count = 3
    """Beam search width (1: greedy decoding)."""
    batch_size: Count = 8
    """Crops per generate call (memory vs speed; no effect on the captions)."""
    random_arch: FlorenceArch = field(default_factory=FlorenceArch)
    """The architecture weights: random builds (its captions are noise, but they depend on the crop)."""


@dataclass(frozen=True)
class ClipConf(ClipModelConf):
    """``params.yaml: features.clip``: the CLIP model and the size of its dense input."""

    input_size: Count | None = None
    """Short side in pixels of the whole image fed to the model (rounded to whole patches; the long
    side follows the aspect ratio); null: the checkpoint's native size."""


@dataclass(frozen=True)
class Dinov2Arch(Checked):
    """The small DINOv2 ``weights: random`` builds (the feature dimension d is ``hidden_size``)."""

    hidden_size: Count = 64
    """Transformer width."""
    num_hidden_layers: Count = 2
    """Transformer blocks."""
    num_attention_heads: Count = 2
    """Attention heads (must divide hidden_size)."""


@dataclass(frozen=True)
class Dinov2Conf(AdapterConf):
    """``params.yaml: features.dinov2``."""

    checkpoint: str = "facebook/dinov2-giant"
    """Hugging Face id (facebook/dinov2-small, -base, -large, -giant) or local folder of a Dinov2Model."""
    input_size: Count = 448
    """Short side in pixels of the whole image fed to the model (rounded to whole patches; the long
    side follows the aspect ratio)."""
    patch_size: Count = 14
    """Pixels per patch side of random_arch (a checkpoint has its own)."""
    random_arch: Dinov2Arch | None = field(default_factory=Dinov2Arch)
    """The architecture weights: random builds (null: the checkpoint's config, randomly initialised)."""
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    """Per-channel (RGB) normalisation mean of the input in [0, 1] (ImageNet's, as DINOv2 was trained)."""
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    """Per-channel (RGB) normalisation standard deviation (ImageNet's)."""


@dataclass(frozen=True)
class LlamaArch(Checked):
    """The small LLaMA ``weights: random`` builds (open_clip's BPE vocabulary; d is ``width``)."""

    width: Count = 64
    """Hidden size: the feature dimension d."""
    layers: Count = 2
    """Decoder blocks."""
    heads: Count = 2
    """Attention heads (must divide width)."""


@dataclass(frozen=True)
class EmbedderConf(Checked):
    """``params.yaml: features.llama3.embedder``: the language model embedding each caption."""

    checkpoint: str = "meta-llama/Meta-Llama-3-8B"
    """Hugging Face id or local folder of any causal LM or text encoder (with its tokenizer)."""
    dtype: Dtype = "bfloat16"
    """The dtype the language model runs in: float16 | bfloat16 | float32."""
    batch_size: Count = 16
    """Captions per forward pass (memory vs speed)."""
    random_arch: LlamaArch = field(default_factory=LlamaArch)
    """The architecture weights: random builds."""


@dataclass(frozen=True)
class Llama3Conf(RegionConf):
    """``params.yaml: features.llama3``: SAM, the captioner, the language model, the region grid.
    ``weights`` and ``seed`` apply to all three models alike."""

    blank_background: bool = True
    """Black out the pixels of a mask's box outside the mask before the captioner sees the crop."""
    sam: SamConf = field(default_factory=SamConf)
    """SAM checkpoint and automatic mask generator settings (keys as features.sam_clip)."""
    captioner: CaptionerConf = field(default_factory=CaptionerConf)
    """The local captioning model describing each region's crop (Florence-2)."""
    embedder: EmbedderConf = field(default_factory=EmbedderConf)
    """The language model embedding each caption (and query texts)."""


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


@dataclass(frozen=True)
class SamClipConf(RegionConf, SamConf):
    """``params.yaml: features.sam_clip``: SAM's keys at the top level (weights and seed are SAM's),
    the region grid, and the CLIP that encodes each mask's crop."""

    blank_background: bool = True
    """Black out the pixels of a mask's box outside the mask before CLIP sees the crop."""
    batch_size: Count = 32
    """Mask crops per CLIP forward pass (memory vs speed; no effect on the features)."""
    clip: ClipModelConf = field(default_factory=ClipModelConf)
    """The CLIP encoding each mask crop, at its native input size (keys as features.clip, without
    input_size); its text tower embeds queries, so the regions and texts share its space."""


@dataclass(frozen=True)
class OwlArch(Checked):
    """The small OWLv2 ``weights: random`` builds (the feature dimension d is ``text_width``)."""

    image_size: Count = 128
    """Input side in pixels (the view is padded square and resized to it)."""
    patch_size: Count = 16
    """Pixels per patch side: one predicted box and class embedding per patch."""
    width: Count = 48
    """Image transformer width."""
    text_width: Count = 32
    """Text transformer width, also the class embedding dimension."""
    layers: Count = 2
    """Blocks of each transformer."""
    heads: Count = 2
    """Attention heads of each transformer (must divide width and text_width)."""


@dataclass(frozen=True)
class SeemConf(RegionConf):
    """``params.yaml: features.seem``: the OWLv2 detector, SAM, the region grid. ``weights`` and
    ``seed`` apply to SAM and OWLv2 alike."""

    checkpoint: str = "google/owlv2-base-patch16-ensemble"
    """Hugging Face id or local folder of an Owlv2ForObjectDetection (with its processor)."""
    sam: SamConf = field(default_factory=SamConf)
    """SAM checkpoint and automatic mask generator settings (keys as features.sam_clip)."""
    random_arch: OwlArch = field(default_factory=OwlArch)
    """The OWLv2 architecture weights: random builds."""


@dataclass(frozen=True)
class SiglipArch(TowersArch):
    """The small SigLIP ``weights: random`` builds (the feature dimension d is ``width``)."""

    context_length: Count = 64
    """Text tokens the text tower reads (SigLIP's 64)."""


@dataclass(frozen=True)
class SiglipConf(AdapterConf):
    """``params.yaml: features.siglip``."""

    checkpoint: str = "google/siglip-so400m-patch14-384"
    """Hugging Face id or local folder of a SiglipModel with an attention-pooling head."""
    input_size: Count | None = None
    """Short side in pixels of the whole image fed to the model (rounded to whole patches; the long
    side follows the aspect ratio); null: the checkpoint's image_size."""
    random_arch: SiglipArch = field(default_factory=SiglipArch)
    """The architecture weights: random builds."""
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    """Per-channel (RGB) normalisation mean of the input in [0, 1] (SigLIP's)."""
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    """Per-channel (RGB) normalisation standard deviation (SigLIP's)."""


ADAPTER_CONFIGS: dict[str, type[AdapterConf]] = {
    "clip": ClipConf,
    "dinov2": Dinov2Conf,
    "llama3": Llama3Conf,
    "llamav": LlamaVConf,
    "sam_clip": SamClipConf,
    "seem": SeemConf,
    "siglip": SiglipConf,
}
"""Adapter name -> the class of its ``features.<name>`` section (its ``config_class``)."""
