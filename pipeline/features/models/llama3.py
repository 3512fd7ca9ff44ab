"""LLaMA3 region language: SAM regions, a local caption each, a language model's embedding of it.

Each view is segmented by SAM's automatic mask generator; each mask that owns a cell of the grid
(the image downscaled by ``stride``; the smallest covering mask wins, see
:mod:`pipeline.features.regions`) is cropped (padded square, background blanked) and described by a
local captioning model (Florence-2, :mod:`pipeline.features.captioner`). A language model (the
reference LLaMA-3 8B, 4096-d; any Hugging Face causal LM or text encoder by id or folder) embeds
each caption as the mean of its last hidden states over the caption's tokens (the start token, an
attention sink with a huge norm, left out), L2-normalised, broadcast over the region's cells;
cells no mask covers are zero and invalid. The captions are the view's ``captions`` records
(``llama3.zarr/captions.json``: view, region, box, caption), so what the memory knows can be read.
``encode_text`` embeds query text with the same language model, so ``m3 query`` works in this space.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.features.adapter_config import Llama3Conf
from pipeline.features.captioner import Captioner
from pipeline.features.models import register
from pipeline.features.models.base import DTYPES, FeatureMap, FeatureModel, hub_load_error
from pipeline.features.regions import (
    broadcast_regions,
    mask_boxes,
    nested_sam,
    owned_masks,
    square_crops,
    stride_grid,
)
from pipeline.features.tokenizers import BPE_VOCAB, BpeTokenizer, HfTokenizer, Tokenizer

log = logging.getLogger(__name__)


class TextEmbedder:
    """``embed(texts) -> [T, d]``: unit mean of a language model's last hidden states per text."""

    def __init__(self, conf: dict[str, Any], weights: str, seed: int, device: torch.device) -> None:
        from transformers import AutoModel, AutoTokenizer, LlamaConfig, LlamaModel

        self.conf, self.device = conf, device
        if weights == "random":
            a = conf["random_arch"]
            config = LlamaConfig(
                vocab_size=BPE_VOCAB,
                hidden_size=int(a["width"]),
                intermediate_size=2 * int(a["width"]),
                num_hidden_layers=int(a["layers"]),
                num_attention_heads=int(a["heads"]),
                num_key_value_heads=int(a["heads"]),
                bos_token_id=BpeTokenizer.bos_id,
                eos_token_id=BpeTokenizer.eos_id,
                pad_token_id=0,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                model: Any = LlamaModel(config)  # or AutoModel's: a Hugging Face model
            self.tokenizer: Tokenizer = BpeTokenizer()
            self.bos_id: int | None = BpeTokenizer.bos_id
        else:
            checkpoint = str(conf["checkpoint"])
            local = Path(checkpoint).expanduser()
            source = str(local) if local.is_dir() else checkpoint
            try:
                model = AutoModel.from_pretrained(source, dtype=DTYPES[conf["dtype"]])
                tok = AutoTokenizer.from_pretrained(source)
            except OSError as exc:
                what = "the language model"
                raise hub_load_error("llama3.embedder", checkpoint, what, exc, "model and tokenizer") from exc
            self.tokenizer = HfTokenizer(tok)
            self.bos_id = tok.bos_token_id
        self.model = model.to(device, DTYPES[conf["dtype"]]).eval()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        """Unit embeddings ``[T, d]`` float32: mean of the last hidden states over each text's tokens."""
        out = []
        for start in range(0, len(texts), int(self.conf["batch_size"])):
            ids, mask = self.tokenizer.batch(texts[start : start + int(self.conf["batch_size"])])
            ids, mask = ids.to(self.device), mask.to(self.device)
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # [B, L, d]
            words = mask.bool() & (ids != self.bos_id) if self.bos_id is not None else mask.bool()
            words[words.sum(1) == 0] = mask.bool()[words.sum(1) == 0]  # an empty caption: its start token
            w = words.float()[..., None]
            out.append(F.normalize((hidden * w).sum(1) / w.sum(1), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.dim, device=self.device)


@register("llama3")
class Llama3(FeatureModel):
    """Caption embeddings of SAM regions on a grid of ``(round(H/stride), round(W/stride))`` cells."""

    has_mask = True
    record_names = ("captions",)
    config_class = Llama3Conf

    def __init__(self, conf: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().__init__(conf, device)
        self.segment = nested_sam(conf, self.device, "llama3")  # SAM and the captioner load on first use
        self._captioner: Captioner | None = None
        self.embed = TextEmbedder(conf["embedder"], conf["weights"], int(conf["seed"]), self.device)
        log.info(
            "llama3: SAM %s, captioner %s, language model %s (%s), d=%d",
            conf["sam"]["sam_type"],
            conf["captioner"]["checkpoint"],
            conf["embedder"]["checkpoint"],
            conf["weights"],
            self.dim,
        )

    @property
    def captioner(self) -> Captioner:
        if self._captioner is None:
            c = self.conf
            self._captioner = Captioner(
                c["captioner"], c["weights"], int(c["seed"]), self.device, "features.llama3.captioner"
            )
        return self._captioner

    @property
    def dim(self) -> int:
        return self.embed.dim

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return stride_grid(height, width, float(self.conf["stride"]))

    def caption(self, image: torch.Tensor, masks: torch.Tensor) -> list[str]:
        """A caption per mask of ``masks [M, H, W]`` of ``image [3, H, W]``."""
        crops = square_crops(
            image.to(self.device, torch.float32), masks, self.captioner.size, self.conf["blank_background"]
        )
        return self.captioner(crops) if len(crops) else []

    @torch.no_grad()
    def extract(self, image: torch.Tensor) -> FeatureMap:
        """``image [3, H, W]`` -> caption embeddings ``[h, w, d]`` (zero where invalid), ``valid [h, w]``, captions."""
        grid = self.grid_size(int(image.shape[1]), int(image.shape[2]))
        masks = self.segment(image)
        used, owner = owned_masks(masks, grid, float(self.conf["cell_coverage"]))
        captions = self.caption(image, masks[used])
        features, valid = broadcast_regions(owner, self.embed(captions))
        boxes = mask_boxes(masks[used]).tolist() if len(used) else []
        records = [
            {"region": k, "box": box, "caption": text, "cells": int((owner == k).sum())}
            for k, (box, text) in enumerate(zip(boxes, captions))
        ]
        log.debug("llama3: %d masks, %d captioned, %.0f%% valid", len(masks), len(used), 100 * valid.float().mean())
        return FeatureMap(features=features, valid=valid, records={"captions": records})

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Unit embeddings ``[T, d]`` of query texts (the space of the caption embeddings)."""
        return self.embed(texts)
