"""The interface every foundation-model adapter implements.

An adapter turns one RGB view into a dense feature map covering the **whole** image (no crop):
``features [h, w, d]`` on a regular grid, cell (i, j) covering pixels
``[i*H/h, (i+1)*H/h) x [j*W/w, (j+1)*W/w)``, plus an optional validity mask ``[h, w]``.
"""

from __future__ import annotations

import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from pipeline.core.errors import M3Error
from pipeline.features.config import AdapterConf, Dtype

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""CLIP's (OpenAI's) image normalisation mean per RGB channel, used by its descendants too."""
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
"""CLIP's (OpenAI's) image normalisation standard deviation per RGB channel."""

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in typing.get_args(Dtype)}
"""torch dtypes by the names adapters' ``dtype`` keys take."""


def hub_load_error(model: str, checkpoint: str, what: str, exc: Exception, local: str) -> M3Error:
    """The error for ``what`` of a Hugging Face ``checkpoint`` of adapter ``model`` that could not be
    loaded: names the cause (first line of ``exc``), the download command and the local alternative
    (a folder holding ``local``)."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return M3Error(
        f"features.{model}: cannot load {what} of checkpoint '{checkpoint}': not a local folder, and not "
        f"on the Hugging Face hub or in its cache ({first}); download it once online "
        f"(`hf download {checkpoint}`) or set features.{model}.checkpoint to a local folder holding {local}"
    )


@dataclass
class FeatureMap:
    """``features [h, w, d] float32`` and ``valid [h, w] bool`` (all True when the model has no mask).

    ``records`` holds what else a model knows about the view, as JSON-serialisable lists by name
    (e.g. ``{"captions": [{"region": 0, "box": [...], "caption": "..."}]}``); the features stage
    stores them beside the maps, one ``<name>.json`` per store listing every view's records
    (:meth:`pipeline.features.store.FeatureStore.records`).
    """

    features: torch.Tensor
    valid: torch.Tensor
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class FeatureModel(ABC):
    """A registered foundation-model adapter.

    ``config_class`` is the frozen dataclass of its ``params.yaml: features.<name>`` section (every
    key, with its type, range, default and help; see :mod:`pipeline.features.config`). The adapter
    receives the section checked and completed by it as a plain dict (``conf``, the
    :func:`dataclasses.asdict` of the config; :func:`pipeline.features.models.resolve_conf`).
    Common keys: ``checkpoint`` (HF hub id, open_clip name or local path), ``weights``
    (``pretrained`` | ``random``: same architecture, random init, for tests), ``input_size``.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[AdapterConf]]
    default_conf: ClassVar[dict[str, Any]]
    """The defaults of ``config_class`` as a dict, every key the adapter accepts (set by ``register``)."""
    has_mask: ClassVar[bool] = False
    record_names: ClassVar[tuple[str, ...]] = ()
    """Names of the per-view records ``extract`` returns (:attr:`FeatureMap.records`)."""

    def __init__(self, conf: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.conf = conf
        self.device = torch.device(device)

    @property
    @abstractmethod
    def dim(self) -> int:
        """Feature dimension ``d``."""

    @abstractmethod
    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Feature map size ``(h, w)`` produced for an image of ``height x width``."""

    @abstractmethod
    def extract(self, image: torch.Tensor) -> FeatureMap:
        """Dense features of one view: ``image [3, H, W] float32 in [0, 1]`` -> :class:`FeatureMap`."""

    max_text_tokens: int | None = None
    """Tokens the text tower reads (a longer text is cut there; None: no limit known)."""

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings ``[T, d]`` in the same space as the features (language models only)."""
        raise NotImplementedError(f"model '{self.name}' has no text encoder")


def resize_to_grid(image: torch.Tensor, h: int, w: int, patch: int) -> torch.Tensor:
    """``image [3, H, W]`` -> ``[1, 3, h*patch, w*patch]`` (bilinear, antialiased)."""
    return F.interpolate(
        image[None].float(), size=(h * patch, w * patch), mode="bilinear", align_corners=False, antialias=True
    )


def grid_for(height: int, width: int, short: int, patch: int) -> tuple[int, int]:
    """Grid ``(h, w)``: short side ``short / patch`` cells, long side by aspect ratio."""
    scale = float(short) / min(height, width)
    return max(1, round(height * scale / patch)), max(1, round(width * scale / patch))


def hf_tower_configs(arch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Hugging Face vision and text tower configs of a small random architecture ``arch`` (keys
    image_size, patch_size, width, layers, heads, text_width, text_layers, text_heads,
    context_length; open_clip's BPE vocabulary of 49408)."""
    vision = {
        "image_size": arch["image_size"], "patch_size": arch["patch_size"], "hidden_size": arch["width"],
        "intermediate_size": 4 * arch["width"], "num_hidden_layers": arch["layers"],
        "num_attention_heads": arch["heads"],
    }  # fmt: skip
    text = {
        "hidden_size": arch["text_width"], "intermediate_size": 4 * arch["text_width"],
        "num_hidden_layers": arch["text_layers"], "num_attention_heads": arch["text_heads"],
        "max_position_embeddings": arch["context_length"], "vocab_size": 49408,
    }  # fmt: skip
    return vision, text
