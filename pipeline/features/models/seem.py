"""SEEM stand-in: open-vocabulary, language-aligned region embeddings (OWLv2 inside SAM regions).

SEEM (X-Decoder) cannot be installed: the registry's ``seem`` package is an empty placeholder and
X-Decoder/SEEM is not packaged. Its role in M3 is one embedding per segmented region, from a
segmentation/detection decoder, aligned with a text tower so regions can be found by name. This
adapter gives that with OWLv2 (``Owlv2ForObjectDetection``, shipped by transformers; reference
``google/owlv2-base-patch16-ensemble``, 512-d like SEEM's): the view is padded to a square
(bottom/right, black) and resized to OWLv2's input as its processor does; for every patch OWLv2
predicts a box and a class embedding (the embedding its detection head compares with text
queries). Each SAM region that owns a grid cell (:mod:`pipeline.features.regions`) takes the
class embedding of the predicted box that best matches the region (IoU of the box and the mask's
pixels), L2-normalised,
broadcast over the region's cells; cells no mask covers are zero and invalid. ``encode_text`` is
OWLv2's own text tower (normalised), the space its detector scores boxes in, so ``m3 query`` works.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.features.adapter_config import SeemConf
from pipeline.features.models import register
from pipeline.features.models.base import OPENAI_MEAN, OPENAI_STD, FeatureMap, FeatureModel, hub_load_error
from pipeline.features.regions import broadcast_regions, nested_sam, owned_masks, stride_grid
from pipeline.features.tokenizers import BpeTokenizer, HfTokenizer, Tokenizer

log = logging.getLogger(__name__)


def load_owlv2(conf: dict[str, Any]) -> tuple[Any, Tokenizer, int]:
    """``(Owlv2ForObjectDetection, tokenizer, text length)`` of ``features.seem`` ``conf``."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection

    if conf["weights"] == "random":
        a = conf["random_arch"]
        config = Owlv2Config(
            text_config={
                "hidden_size": int(a["text_width"]),
                "intermediate_size": 2 * int(a["text_width"]),
                "num_hidden_layers": int(a["layers"]),
                "num_attention_heads": int(a["heads"]),
                "vocab_size": 49408,
                "max_position_embeddings": 16,
            },
            vision_config={
                "hidden_size": int(a["width"]),
                "intermediate_size": 2 * int(a["width"]),
                "num_hidden_layers": int(a["layers"]),
                "num_attention_heads": int(a["heads"]),
                "image_size": int(a["image_size"]),
                "patch_size": int(a["patch_size"]),
            },
            projection_dim=int(a["text_width"]),
            # unset, the detection heads init at std 1 and every box saturates; not a declared field of
            # Owlv2Config, which keeps it as an extra key all the same
            initializer_range=0.02,  # type: ignore[call-arg]
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(conf["seed"]))
            model: Any = Owlv2ForObjectDetection(config)  # or from_pretrained's: a Hugging Face model
        return model, BpeTokenizer(add_eos=True), 16
    from transformers import AutoProcessor

    checkpoint = str(conf["checkpoint"])
    local = Path(checkpoint).expanduser()
    source = str(local) if local.is_dir() else checkpoint
    try:
        model = Owlv2ForObjectDetection.from_pretrained(source)
        tok = AutoProcessor.from_pretrained(source).tokenizer
    except OSError as exc:
        raise hub_load_error("seem", checkpoint, "the OWLv2 model", exc, "model and processor files") from exc
    return model, HfTokenizer(tok), int(model.config.text_config.max_position_embeddings)


def mask_box_iou(masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU ``[M, N]`` of the pixel sets of ``masks [M, H, W]`` bool and ``boxes [N, 4]`` (x0, y0, x1,
    y1 in pixels, rounded and clipped to the image), by summed-area tables of the masks."""
    m, h, w = masks.shape
    table = F.pad(masks.double().cumsum(1).cumsum(2), (1, 0, 1, 0))  # [M, H + 1, W + 1]
    limit = torch.tensor([w, h, w, h], device=boxes.device)
    x0, y0, x1, y1 = boxes.round().clamp(min=0).minimum(limit).long().to(masks.device).unbind(-1)  # [N] each
    inter = table[:, y1, x1] - table[:, y0, x1] - table[:, y1, x0] + table[:, y0, x0]  # [M, N]
    box_area = ((x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)).double()
    union = masks.flatten(1).sum(1).double()[:, None] + box_area[None] - inter
    return (inter / union.clamp(min=1.0)).float()


@register("seem")
class Seem(FeatureModel):
    """OWLv2 class embeddings of SAM regions on a grid of ``(round(H/stride), round(W/stride))`` cells."""

    has_mask = True
    config_class = SeemConf

    def __init__(self, conf: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().__init__(conf, device)
        self.segment = nested_sam(conf, self.device, "seem")  # SAM loads on first use
        model, self.tokenizer, self.text_length = load_owlv2(conf)
        self.max_text_tokens = self.text_length
        self.owl = model.to(self.device).eval()
        self.size = int(self.owl.config.vision_config.image_size)
        self.mean = torch.tensor(OPENAI_MEAN, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(OPENAI_STD, device=self.device).view(3, 1, 1)
        log.info("seem (OWLv2 stand-in): %s (%s), d=%d", conf["checkpoint"], conf["weights"], self.dim)

    @property
    def dim(self) -> int:
        return int(self.owl.config.text_config.hidden_size)  # the class head's output = text embedding size

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return stride_grid(height, width, float(self.conf["stride"]))

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """``image [3, H, W]`` in [0, 1] -> OWLv2 input ``[1, 3, S, S]``: padded square (bottom/right), resized."""
        h, w = int(image.shape[1]), int(image.shape[2])
        side = max(h, w)
        square = F.pad(image.to(self.device, torch.float32), (0, side - w, 0, side - h))
        x = F.interpolate(square[None], (self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def boxes_and_embeddings(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """OWLv2's per-patch predictions: ``boxes [N, 4]`` (x0, y0, x1, y1 in image pixels) and unit
        class embeddings ``[N, d]``."""
        feature_map, _ = self.owl.image_embedder(pixel_values=self.preprocess(image))  # [1, g, g, D]
        feats = feature_map.reshape(1, -1, feature_map.shape[-1])
        cxcywh = self.owl.box_predictor(feats, feature_map)[0]  # [N, 4] in [0, 1] of the padded square
        _, class_embeds = self.owl.class_predictor(feats)  # [1, N, d], unnormalised
        side = float(max(image.shape[1], image.shape[2]))
        xy, wh = cxcywh[:, :2], cxcywh[:, 2:]
        boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1) * side
        return boxes, F.normalize(class_embeds[0].float(), dim=-1)

    @torch.no_grad()
    def extract(self, image: torch.Tensor) -> FeatureMap:
        """``image [3, H, W]`` -> region embeddings ``[h, w, d]`` (zero where invalid), ``valid [h, w]``."""
        grid = self.grid_size(int(image.shape[1]), int(image.shape[2]))
        masks = self.segment(image)
        used, owner = owned_masks(masks, grid, float(self.conf["cell_coverage"]))
        embeddings = torch.zeros(0, self.dim, device=self.device)
        if len(used):
            boxes, class_embeds = self.boxes_and_embeddings(image)
            best = mask_box_iou(masks[used], boxes).argmax(1)  # [K] the box matching each region best
            embeddings = class_embeds[best.to(self.device)]
        features, valid = broadcast_regions(owner, embeddings)
        return FeatureMap(features=features, valid=valid)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Unit OWLv2 text embeddings ``[T, d]`` (what its detector compares class embeddings with)."""
        ids, mask = self.tokenizer.batch(texts, self.text_length)
        out = self.owl.owlv2.get_text_features(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        return F.normalize(out.pooler_output.float(), dim=-1)
