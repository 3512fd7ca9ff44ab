"""Vision-language models whose language model consumes per-patch image tokens (adapter ``llamav``).

Two families, each run exactly as transformers runs it:

* ``llava`` (``LlavaForConditionalGeneration``: llava-1.5, BakLLaVA, llava-interleave, ...): the
  vision tower's hidden states at ``vision_feature_layer`` (CLS dropped by the ``default``
  strategy) go through the multi-modal projector, one token per patch; the language model reads
  them in place of the ``<image>`` tokens of the prompt (``inputs_embeds``).
* ``mllama`` (Llama-3.2-Vision): the image is cut into tiles of the model's ``image_size``; the
  vision encoder (local + gated global layers, intermediate layers concatenated) and the projector
  give each tile a CLS token and one token per patch (4096-d for the 11B); the text attends to
  them through its cross-attention layers (from the ``<|image|>`` token on).

Dense map: the **whole** image is resized (stretched, no crop or pad) to the model's input, LLaVA's
square ``image_size`` or Mllama's ``tiles`` rows x cols of tiles (row-major, as the processor
splits them), so patch cell (i, j) covers pixels ``[i*H/h, (i+1)*H/h) x [j*W/w, (j+1)*W/w)``.
Tokens that are not per patch (LLaVA's CLS under the ``full`` strategy, Mllama's CLS per tile)
are :attr:`ImageTokens.globals`. Mllama's tiling must use all ``max_num_tiles`` tiles: with
fewer, the padding tiles' tokens are attended by the text before ``<|image|>`` (transformers
masks only their MLP path), so the stored tokens would not be all the model reads.

:meth:`VisionLanguageModel.logits` / :meth:`generate` feed given tokens (stored, or rendered by
the memory) to the language model in place of its own, optionally only those of a region
(``keep``); :meth:`own_logits` is the model's own forward on an image, which they reproduce
exactly for the image's own tokens (a test checks it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.core.errors import M3Error
from pipeline.features.models.base import DTYPES, OPENAI_MEAN, OPENAI_STD, hub_load_error
from pipeline.features.tokenizers import BPE_VOCAB, BpeTokenizer, HfTokenizer, Tokenizer

log = logging.getLogger(__name__)

IMAGE = "<image>"
"""Where the image goes in a prompt template (``features.llamav.prompt``)."""
DEFAULT_PROMPTS = {"llava": "USER: <image>\n{question} ASSISTANT:", "mllama": "<image>{question}"}


@dataclass
class ImageTokens:
    """What the language model reads for one image: ``grid [h, w, D]`` per-patch tokens and
    ``globals [g, D]`` (CLS tokens; ``g`` may be 0)."""

    grid: torch.Tensor
    globals: torch.Tensor


class VisionLanguageModel:
    """One VLM checkpoint (or random architecture): image tokens, prompts, logits, greedy answers."""

    family = ""

    def __init__(self, model: Any, tokenizer: Tokenizer, conf: dict[str, Any], device: torch.device, processor: Any):
        self.model, self.tokenizer, self.conf, self.device = model.to(device).eval(), tokenizer, conf, device
        self.dtype = DTYPES[conf["dtype"]]
        improc = getattr(processor, "image_processor", None)
        mean = conf["mean"] or getattr(improc, "image_mean", None) or OPENAI_MEAN
        std = conf["std"] or getattr(improc, "image_std", None) or OPENAI_STD
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
        self.image_token = getattr(processor, "image_token", None) or IMAGE
        self.template = conf["prompt"] or _chat_template(processor) or DEFAULT_PROMPTS[self.family]
        if IMAGE not in self.template or "{question}" not in self.template:
            raise M3Error(f"features.llamav.prompt: {self.template!r} needs both '{IMAGE}' and '{{question}}'; fix it")

    @property
    def dim(self) -> int:
        """Token dimension ``D`` (the language model's hidden size)."""
        return int(self.model.config.text_config.hidden_size)

    grid: tuple[int, int]
    """Patch grid ``(h, w)`` of one image (the dense map's size, whatever the image size)."""

    def _resized(self, image: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``image [3, H, W]`` in [0, 1] stretched to ``[3, height, width]`` and normalised (model dtype)."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image [3, H, W], got {tuple(image.shape)}")
        x = F.interpolate(image[None].to(self.device, torch.float32), (height, width), mode="bilinear", antialias=True)[
            0
        ]
        return ((x - self.mean) / self.std).to(self.dtype)

    def prompt(self, question: str) -> str:
        """The prompt text with :data:`IMAGE` where the image goes."""
        return self.template.replace("{question}", question)

    def image_tokens(self, image: torch.Tensor) -> ImageTokens:
        raise NotImplementedError

    def own_logits(self, image: torch.Tensor, question: str) -> torch.Tensor:
        """Logits ``[1, L, V]`` of the model's own forward on ``image [3, H, W]`` and the question."""
        raise NotImplementedError

    def _start(
        self, question: str, tokens: ImageTokens, keep: torch.Tensor | None
    ) -> tuple[torch.Tensor, Callable[[int], torch.Tensor]]:
        """Prompt logits ``[1, L, V]`` with ``tokens`` in place of the model's own, and a function
        ``step(token id) -> logits [1, 1, V]`` that continues from there (KV cache)."""
        raise NotImplementedError

    @torch.no_grad()
    def logits(self, question: str, tokens: ImageTokens, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt logits ``[1, L, V]`` with ``tokens`` (and only the grid cells where ``keep [h, w]``) as the image."""
        return self._start(question, self._cast(tokens), keep)[0]

    @torch.no_grad()
    def generate(
        self, question: str, tokens: ImageTokens, keep: torch.Tensor | None = None, max_new_tokens: int = 64
    ) -> str:
        """Greedy answer to ``question`` about the image given by ``tokens`` (optionally a region ``keep [h, w]``)."""
        logits, step = self._start(question, self._cast(tokens), keep)
        out: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(logits[0, -1].float().argmax())
            if nxt in self.tokenizer.eos_ids:
                break
            out.append(nxt)
            logits = step(nxt)
        return self.tokenizer.decode(out)

    def _cast(self, tokens: ImageTokens) -> ImageTokens:
        h, w = self.grid
        if tuple(tokens.grid.shape) != (h, w, self.dim):
            raise ValueError(f"image tokens {tuple(tokens.grid.shape)} != grid {(h, w, self.dim)}")
        as_model = lambda t: t.to(self.device, self.dtype)  # noqa: E731
        return ImageTokens(as_model(tokens.grid), as_model(tokens.globals))

    def _ids(self, text: str) -> torch.Tensor:
        return torch.tensor([self.tokenizer.encode(text)], dtype=torch.long, device=self.device)


class Llava(VisionLanguageModel):
    """``LlavaForConditionalGeneration``: projected patch tokens replace the ``<image>`` tokens."""

    family = "llava"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        vision = self.model.config.vision_config
        self.size = int(vision.image_size)
        g = self.size // int(vision.patch_size)
        self.grid = (g, g)
        self.image_id = int(self.model.config.image_token_id)

    def image_tokens(self, image: torch.Tensor) -> ImageTokens:
        px = self._resized(image, self.size, self.size)[None]
        tokens = self.model.model.get_image_features(pixel_values=px).pooler_output[0]  # [g + h*w, D]
        h, w = self.grid
        n_global = tokens.shape[0] - h * w
        return ImageTokens(tokens[n_global:].reshape(h, w, -1), tokens[:n_global])

    def _input_ids(self, question: str, n_tokens: int) -> torch.Tensor:
        return self._ids(self.prompt(question).replace(IMAGE, self.image_token * n_tokens))

    @torch.no_grad()
    def own_logits(self, image: torch.Tensor, question: str) -> torch.Tensor:
        px = self._resized(image, self.size, self.size)[None]
        n = self.grid[0] * self.grid[1] + len(self.image_tokens(image).globals)
        return self.model(input_ids=self._input_ids(question, n), pixel_values=px).logits

    def _start(
        self, question: str, tokens: ImageTokens, keep: torch.Tensor | None
    ) -> tuple[torch.Tensor, Callable[[int], torch.Tensor]]:
        grid = tokens.grid.reshape(-1, tokens.grid.shape[-1])
        if keep is not None:
            grid = grid[keep.reshape(-1).to(self.device)]
        seq = torch.cat([tokens.globals, grid])  # the order get_image_features returns them in
        ids = self._input_ids(question, len(seq))
        embeds = self.model.get_input_embeddings()(ids)
        embeds[ids == self.image_id] = seq
        out = self.model(inputs_embeds=embeds, use_cache=True)
        cache = out.cache

        def step(token: int) -> torch.Tensor:
            nxt = torch.tensor([[token]], device=self.device)
            return self.model(input_ids=nxt, cache=cache, use_cache=True).logits

        return out.logits, step


class Mllama(VisionLanguageModel):
    """``MllamaForConditionalGeneration``: CLS + patch tokens per tile, read through cross-attention."""

    family = "mllama"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        vision = self.model.config.vision_config
        rows, cols = (int(t) for t in self.conf["tiles"])
        ratios = [tuple(r) for r in vision.supported_aspect_ratios]
        if rows * cols != int(vision.max_num_tiles) or (rows, cols) not in ratios:
            raise M3Error(
                f"features.llamav.tiles: {[rows, cols]} must use all {vision.max_num_tiles} tiles of the checkpoint "
                f"(one of {[list(r) for r in ratios if r[0] * r[1] == vision.max_num_tiles]}); fix it"
            )
        self.tiles, self.ratio_id = (rows, cols), ratios.index((rows, cols)) + 1
        self.size = int(vision.image_size)
        self.per_tile = self.size // int(vision.patch_size)
        self.grid = (rows * self.per_tile, cols * self.per_tile)
        self.image_id = int(self.model.config.image_token_id)

    def _pixels(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The vision inputs: ``pixel_values [1, 1, T, 3, S, S]``, aspect-ratio id and mask (every tile real)."""
        (rows, cols), s = self.tiles, self.size
        x = self._resized(image, rows * s, cols * s)
        tiles = x.reshape(3, rows, s, cols, s).permute(1, 3, 0, 2, 4).reshape(1, 1, rows * cols, 3, s, s)
        return {
            "pixel_values": tiles,
            "aspect_ratio_ids": torch.tensor([[self.ratio_id]], device=self.device),
            "aspect_ratio_mask": torch.ones(1, 1, rows * cols, dtype=torch.long, device=self.device),
        }

    def _tiled(self, grid: torch.Tensor) -> torch.Tensor:
        """``grid [rows*g, cols*g, ...]`` -> ``[T, g*g, ...]`` (tiles row-major, patches row-major)."""
        (rows, cols), g = self.tiles, self.per_tile
        x = grid.reshape(rows, g, cols, g, *grid.shape[2:]).transpose(1, 2)
        return x.reshape(rows * cols, g * g, *grid.shape[2:])

    def image_tokens(self, image: torch.Tensor) -> ImageTokens:
        vision = self.model.model.vision_model(**self._pixels(image)).last_hidden_state  # [1, 1, T, P, Dv]
        tokens = self.model.model.multi_modal_projector(vision)[0, 0]  # [T, 1 + g*g, D]
        (rows, cols), g = self.tiles, self.per_tile
        grid = tokens[:, 1:].reshape(rows, cols, g, g, -1).transpose(1, 2).reshape(rows * g, cols * g, -1)
        return ImageTokens(grid, tokens[:, 0])

    def _text(self, question: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids [1, L]`` and which positions see the image ``[L]`` (from ``<|image|>`` on)."""
        ids = self._ids(self.prompt(question).replace(IMAGE, self.image_token))
        found = (ids[0] == self.image_id).nonzero()
        if len(found) != 1:
            raise M3Error(f"features.llamav.prompt: the prompt must hold the image exactly once ({len(found)} found)")
        return ids, torch.arange(ids.shape[1], device=self.device) >= found[0, 0]

    @torch.no_grad()
    def own_logits(self, image: torch.Tensor, question: str) -> torch.Tensor:
        ids, sees = self._text(question)
        tiles = self.tiles[0] * self.tiles[1]
        mask = sees.long()[None, :, None, None].expand(1, -1, 1, tiles)  # the processor's cross_attention_mask
        return self.model(input_ids=ids, cross_attention_mask=mask, **self._pixels(image)).logits

    def _start(
        self, question: str, tokens: ImageTokens, keep: torch.Tensor | None
    ) -> tuple[torch.Tensor, Callable[[int], torch.Tensor]]:
        from transformers.models.mllama.modeling_mllama import _prepare_cross_attention_mask

        states = torch.cat([tokens.globals[:, None], self._tiled(tokens.grid)], 1)  # [T, P, D], CLS first
        seen = torch.ones(states.shape[:2], dtype=torch.bool, device=self.device)
        if keep is not None:  # a region: the text attends to the CLS tokens and the region's patches only
            seen[:, 1:] = self._tiled(keep.to(self.device))
        seen = seen.reshape(-1)
        ids, sees = self._text(question)

        def masks(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            per_token = (rows[:, None] & seen[None]).long()[None, :, None]  # [1, L, 1, T*P]
            # transformers annotates dtype as str; it is the torch.dtype of the mask
            return _prepare_cross_attention_mask(per_token, num_vision_tokens=1, dtype=self.dtype)  # type: ignore[arg-type]

        lm = self.model.model.language_model
        cross, full_rows = masks(sees)
        out = lm(
            input_ids=ids,
            cross_attention_states=states,
            cross_attention_mask=cross,
            full_text_row_masked_out_mask=full_rows,
            use_cache=True,
        )
        cache = out.cache
        step_cross, step_rows = masks(torch.ones(1, dtype=torch.bool, device=self.device))

        def step(token: int) -> torch.Tensor:
            nxt = torch.tensor([[token]], device=self.device)
            h = lm(
                input_ids=nxt,
                cross_attention_mask=step_cross,
                full_text_row_masked_out_mask=step_rows,
                cache=cache,
                use_cache=True,
            ).last_hidden_state
            return self.model.lm_head(h)

        return self.model.lm_head(out.last_hidden_state), step


FAMILIES: dict[str, type[VisionLanguageModel]] = {"llava": Llava, "mllama": Mllama}


def _chat_template(processor: Any) -> str | None:
    """The checkpoint's chat template for one user turn (an image, then the question), with
    :data:`IMAGE` for the image and ``{question}`` for the text; None without a template."""
    if processor is None or not getattr(processor, "chat_template", None):
        return None
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "{question}"}]}]
    text = processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    return text.replace(processor.image_token, IMAGE)


def _random_model(conf: dict[str, Any]) -> tuple[Any, Tokenizer]:
    """The family's architecture at ``random_arch`` size, random init; open_clip's BPE vocabulary."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, MllamaConfig, MllamaForConditionalGeneration

    a, family = conf["random_arch"], conf["family"]
    width, heads = int(a["text_width"]), int(a["text_heads"])
    text = {
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": int(a["text_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "bos_token_id": BpeTokenizer.bos_id,
        "eos_token_id": BpeTokenizer.eos_id,
        "pad_token_id": 0,
    }
    vision = {
        "hidden_size": int(a["vision_width"]),
        "intermediate_size": 2 * int(a["vision_width"]),
        "num_hidden_layers": int(a["vision_layers"]),
        "image_size": int(a["image_size"]),
        "patch_size": int(a["patch_size"]),
    }
    image_id = BPE_VOCAB
    config: LlavaConfig | MllamaConfig
    if family == "llava":
        config = LlavaConfig(
            vision_config={"model_type": "clip_vision_model", **vision, "num_attention_heads": int(a["vision_heads"])},
            text_config={"model_type": "llama", **text, "vocab_size": BPE_VOCAB + 1},
            image_token_index=image_id,
            vision_feature_select_strategy=a["select_strategy"],
        )
        cls: Any = LlavaForConditionalGeneration
    else:  # mllama
        layers = int(a["vision_layers"])
        config = MllamaConfig(
            vision_config={
                **vision,
                "attention_heads": int(a["vision_heads"]),
                "num_global_layers": 1,
                "max_num_tiles": 4,  # as Llama-3.2-Vision
                "intermediate_layers_indices": [layers - 1],
                "vision_output_dim": 2 * int(a["vision_width"]),
            },
            text_config={**text, "vocab_size": BPE_VOCAB, "cross_attention_layers": [int(a["text_layers"]) - 1]},
            image_token_index=image_id,  # < vocab + 8: Mllama's embedding has 8 extra rows
        )
        cls = MllamaForConditionalGeneration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(conf["seed"]))
        model = cls(config)
        for name, p in model.named_parameters():  # gates init at 0 hide the image; open them (tanh 1 = 0.76)
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                torch.nn.init.ones_(p)
    return model, BpeTokenizer({IMAGE: image_id})


def load_vlm(conf: dict[str, Any], device: torch.device) -> VisionLanguageModel:
    """The VLM of ``features.llamav`` ``conf``: a checkpoint (HF id or local folder; its
    ``model_type`` picks the family) or, with ``weights: random``, ``family`` at ``random_arch``."""
    if conf["weights"] == "random":
        model, tokenizer = _random_model(conf)
        return FAMILIES[conf["family"]](model.to(DTYPES[conf["dtype"]]), tokenizer, conf, device, None)
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration, MllamaForConditionalGeneration

    checkpoint = str(conf["checkpoint"])
    local = Path(checkpoint).expanduser()
    source = str(local) if local.is_dir() else checkpoint
    files = "the files save_pretrained writes (model and processor)"
    try:
        family = AutoConfig.from_pretrained(source).model_type
    except OSError as exc:
        raise hub_load_error("llamav", checkpoint, "the config", exc, files) from exc
    if family not in FAMILIES:
        raise M3Error(
            f"features.llamav.checkpoint: '{checkpoint}' is a {family} model; llamav supports the families "
            f"{', '.join(FAMILIES)} (LLaVA-1.5-style and Llama-3.2-Vision checkpoints)"
        )
    classes: dict[str, type[LlavaForConditionalGeneration] | type[MllamaForConditionalGeneration]] = {
        "llava": LlavaForConditionalGeneration,
        "mllama": MllamaForConditionalGeneration,
    }
    cls = classes[family]
    try:
        model = cls.from_pretrained(source, dtype=DTYPES[conf["dtype"]])
        processor = AutoProcessor.from_pretrained(source)
    except OSError as exc:
        raise hub_load_error("llamav", checkpoint, "the weights or processor", exc, files) from exc
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())
    return FAMILIES[family](model, HfTokenizer(processor.tokenizer, eos_ids), conf, device, processor)
