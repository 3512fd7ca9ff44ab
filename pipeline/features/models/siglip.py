"""Dense SigLIP features: the attention-pooling (MAP) head applied to every patch token on its own.

SigLIP's image embedding is ``head(post_layernorm(tokens))``, where the head is a multihead
attention pooling: a learned probe attends over all tokens, then ``x + mlp(layernorm(x))``. For a
dense map every patch token ``t_p`` is passed through the model's own head **as a sequence of
length one** (``head(t[:, p:p+1])``, all tokens batched): the probe then has a single key, its
softmax weight is exactly 1, so the attention output is ``out_proj(v_proj(t_p))`` (the value
path, as MaskCLIP for CLIP) and the head's LN + MLP residual follow unchanged. The feature of
cell p is therefore what SigLIP's pooled embedding would be if the image consisted only of that
token; with identical tokens (uniform image, equal positions) it equals the pooled embedding
itself, which ``tests/test_features.py`` checks.

The whole image is resized (aspect kept, short side ``input_size``, each side a multiple of the
patch) and the position embeddings are interpolated to that grid by the model
(``interpolate_pos_encoding``), so cell (i, j) covers pixels ``[i*H/h, (i+1)*H/h) x [j*W/w, ...)``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.core.errors import M3Error
from pipeline.features.adapter_config import SiglipConf
from pipeline.features.models import register
from pipeline.features.models.base import (
    FeatureMap,
    FeatureModel,
    grid_for,
    hf_tower_configs,
    hub_load_error,
    resize_to_grid,
)

log = logging.getLogger(__name__)


def _load_error(checkpoint: str, what: str, exc: Exception) -> M3Error:
    return hub_load_error("siglip", checkpoint, what, exc, "the files save_pretrained writes")


def load_siglip(conf: dict[str, Any]) -> tuple[Any, Any]:
    """``(SiglipModel, tokenizer)`` named by ``conf``; ``weights: random`` builds ``random_arch``.

    With random weights the text side uses open_clip's bundled BPE tokenizer (vocabulary 49408),
    since SigLIP's own sentencepiece vocabulary comes with the checkpoint.
    """
    from transformers import SiglipConfig, SiglipModel

    checkpoint = str(conf["checkpoint"])
    if conf["weights"] == "random":
        import open_clip

        a = conf["random_arch"]
        vision, text = hf_tower_configs(a)
        text["projection_size"] = a["width"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(conf["seed"]))
            model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        return model, open_clip.SimpleTokenizer(context_length=int(a["context_length"]))
    local = Path(checkpoint).expanduser()
    source = str(local) if local.is_dir() else checkpoint
    try:
        model = SiglipModel.from_pretrained(source)
    except OSError as exc:
        raise _load_error(checkpoint, "the weights", exc) from exc
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ImportError, ValueError) as exc:
        raise _load_error(
            checkpoint, "the tokenizer (needs the sentencepiece and protobuf packages, dependencies of m3)", exc
        ) from exc
    return model, lambda texts: tok(texts, padding="max_length", truncation=True, return_tensors="pt")


@register("siglip")
class Siglip(FeatureModel):
    max_text_tokens = 64
    """Dense SigLIP features ``[h, w, d]`` (MAP head per patch token) over the whole image."""

    config_class = SiglipConf

    def __init__(self, conf: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().__init__(conf, device)
        model, self.tokenizer = load_siglip(conf)
        self.model = model.to(self.device).eval()
        vcfg = self.model.config.vision_config
        if not getattr(vcfg, "vision_use_head", True):
            raise M3Error(
                f"features.siglip.checkpoint: '{conf['checkpoint']}' has no attention-pooling head; "
                f"pick a SigLIP checkpoint with one (e.g. google/siglip-so400m-patch14-384)"
            )
        self.patch = int(vcfg.patch_size)
        self.input_size = int(conf["input_size"] or vcfg.image_size)
        self.mean = torch.tensor(conf["mean"], dtype=torch.float32, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(conf["std"], dtype=torch.float32, device=self.device).view(3, 1, 1)
        log.info(
            "siglip: %s (%s), d=%d, patch %d, short side %d",
            conf["checkpoint"],
            conf["weights"],
            self.dim,
            self.patch,
            self.input_size,
        )

    @property
    def dim(self) -> int:
        return int(self.model.config.vision_config.hidden_size)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return grid_for(height, width, self.input_size, self.patch)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """``image [3, H, W]`` in [0, 1] -> normalised model input ``[1, 3, h*patch, w*patch]``."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image [3, H, W], got {tuple(image.shape)}")
        h, w = self.grid_size(int(image.shape[1]), int(image.shape[2]))
        return (resize_to_grid(image.to(self.device), h, w, self.patch) - self.mean) / self.std

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Post-layernorm patch tokens ``[B, h*w, D]`` of model input ``x`` (positions interpolated)."""
        out = self.model.vision_model(pixel_values=x, interpolate_pos_encoding=True)
        return out.last_hidden_state

    def dense_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """The model's pooling head on each token alone: ``[B, N, D] -> [B, N, D]``."""
        b, n, d = tokens.shape
        return self.model.vision_model.head(tokens.reshape(b * n, 1, d)).reshape(b, n, d)

    @torch.no_grad()
    def extract(self, image: torch.Tensor) -> FeatureMap:
        """``image [3, H, W]`` in [0, 1] -> dense SigLIP features ``[h, w, d]`` (all valid, unnormalised)."""
        h, w = self.grid_size(int(image.shape[1]), int(image.shape[2]))
        features = self.dense_head(self.tokens(self.preprocess(image)))[0].reshape(h, w, -1).float()
        valid = torch.ones(h, w, dtype=torch.bool, device=features.device)
        return FeatureMap(features=features, valid=valid)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``[T, d]``."""
        ids = self.tokenizer(texts)
        if isinstance(ids, torch.Tensor):
            batch = {"input_ids": ids.to(self.device)}
        else:
            batch = {"input_ids": ids["input_ids"].to(self.device)}
        out = self.model.get_text_features(**batch)
        emb = out if isinstance(out, torch.Tensor) else out.pooler_output
        return F.normalize(emb.float(), dim=-1)
