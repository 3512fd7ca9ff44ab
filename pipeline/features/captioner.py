"""Local region captions (Florence-2, which transformers ships) for the ``llama3`` adapter.

Each region crop (square, background blanked, see :func:`pipeline.features.regions.square_crops`)
is described by ``Florence2ForConditionalGeneration`` with a task prompt (default
``<DETAILED_CAPTION>``), greedy or beam search, as Florence-2's own processor lays it out:
``<image>`` tokens, then the start token, the task's text and the end token. A pretrained
checkpoint (HF id or local folder, e.g. ``florence-community/Florence-2-large``) uses its own
processor; ``weights: random`` builds a small Florence-2 with open_clip's BPE vocabulary (the
captions are noise, but they depend on the crop).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pipeline.features.models.base import hub_load_error
from pipeline.features.tokenizers import BPE_VOCAB, BpeTokenizer

log = logging.getLogger(__name__)


def _random_florence(arch: dict[str, Any]) -> Any:
    from transformers import Florence2Config, Florence2ForConditionalGeneration

    w, t = int(arch["vision_width"]), int(arch["text_width"])
    vision = {
        "depths": [1, 1, 1, 1],
        "embed_dim": [w, 2 * w, 2 * w, 4 * w],
        "num_heads": [1, 1, 2, 2],
        "num_groups": [1, 1, 2, 2],
        "window_size": 2,
        "projection_dim": t,
        "drop_path_rate": 0.0,
    }
    text = {
        "model_type": "bart",
        "vocab_size": BPE_VOCAB + 1,
        "d_model": t,
        "encoder_layers": int(arch["text_layers"]),
        "decoder_layers": int(arch["text_layers"]),
        "encoder_attention_heads": int(arch["text_heads"]),
        "decoder_attention_heads": int(arch["text_heads"]),
        "encoder_ffn_dim": 2 * t,
        "decoder_ffn_dim": 2 * t,
        "max_position_embeddings": 256,
        "bos_token_id": BpeTokenizer.bos_id,
        "eos_token_id": BpeTokenizer.eos_id,
        "pad_token_id": 0,
        "decoder_start_token_id": BpeTokenizer.eos_id,
        "forced_eos_token_id": None,
        "init_std": 0.3,  # at BART's 0.02 a random decoder ignores the image: every crop, one caption
        "tie_word_embeddings": False,
    }
    config = Florence2Config(
        vision_config=vision, text_config=text, image_token_id=BPE_VOCAB, tie_word_embeddings=False
    )
    return Florence2ForConditionalGeneration(config)


class Captioner:
    """``captioner(crops [M, 3, S, S] in [0, 1]) -> M captions`` with one Florence-2 model."""

    def __init__(self, conf: dict[str, Any], weights: str, seed: int, device: torch.device, where: str) -> None:
        self.conf, self.device = conf, device
        self.processor: Any = None
        self.model: Any  # a Hugging Face Florence-2: its parts are read by name
        if weights == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                self.model = _random_florence(conf["random_arch"]).to(device).eval()
            self.size = int(conf["random_arch"]["image_size"])
            self.tokenizer = BpeTokenizer(add_eos=True)
            with torch.no_grad():
                probe = torch.zeros(1, 3, self.size, self.size, device=device)
                self.n_image = int(self.model.model.get_image_features(probe).pooler_output.shape[1])
            self.mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(3, 1, 1)  # ImageNet, as Florence-2
            self.std = torch.tensor([0.229, 0.224, 0.225], device=device).view(3, 1, 1)
        else:
            from transformers import AutoProcessor, Florence2ForConditionalGeneration

            checkpoint = str(conf["checkpoint"])
            local = Path(checkpoint).expanduser()
            source = str(local) if local.is_dir() else checkpoint
            try:
                model: Any = Florence2ForConditionalGeneration.from_pretrained(source)
                self.model = model.to(device).eval()
                self.processor = AutoProcessor.from_pretrained(source)
            except OSError as exc:
                raise hub_load_error(
                    where.removeprefix("features."), checkpoint, "the captioner", exc, "model and processor files"
                ) from exc
            size = self.processor.image_processor.size
            self.size = int(size["height"] if isinstance(size, dict) else size.height)

    @torch.no_grad()
    def __call__(self, crops: torch.Tensor) -> list[str]:
        """One caption per crop of ``crops [M, 3, S, S]`` in [0, 1] (``S``: :attr:`size`)."""
        captions: list[str] = []
        for part in crops.split(int(self.conf["batch_size"])):
            captions += self._batch(part.to(self.device, torch.float32))
        return captions

    def _batch(self, crops: torch.Tensor) -> list[str]:
        task, k = str(self.conf["task"]), len(crops)
        if self.processor is not None:
            images = [(c.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy() for c in crops]
            inputs = self.processor(text=[task] * k, images=images, return_tensors="pt").to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        else:
            text = self.tokenizer.encode(task)
            ids = torch.tensor([[BPE_VOCAB] * self.n_image + text] * k, device=self.device)
            inputs = {"input_ids": ids, "pixel_values": (crops - self.mean) / self.std}
        out = self.model.generate(
            **inputs,
            max_new_tokens=int(self.conf["max_new_tokens"]),
            num_beams=int(self.conf["num_beams"]),
            do_sample=False,
        )
        if self.processor is not None:
            return [t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True)]
        return [self.tokenizer.decode(row.tolist()) for row in out]
