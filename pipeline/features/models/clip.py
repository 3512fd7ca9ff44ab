"""Dense CLIP features with the MaskCLIP trick (open_clip or Hugging Face CLIP checkpoints).

MaskCLIP (Zhou et al., ECCV 2022, ``mmseg/models/backbones/vit.py`` of its release) reads dense
features out of CLIP's image encoder by changing only the **last** transformer block: the
query/key attention is dropped and every token keeps only its own *value path*::

    v   = out_proj(v_proj(ln_1(x))) + x        # value path replaces attention, residual kept
    v   = v + mlp(ln_2(v))                     # the block's MLP with its residual, unchanged
    f   = ln_post(v) @ proj                    # CLIP's post-LN and projection, on every token

(layer-scale factors, when a checkpoint has them, are applied as in the block itself). That is
exactly the last block evaluated with an attention matrix that lets each token attend only to
itself, which ``tests/test_features.py`` checks against the model's own modules.

The whole image is resized (aspect ratio kept, each side a multiple of the patch size, short
side ``input_size``) and the positional embeddings are interpolated (bicubic) to that grid, so
cell ``(i, j)`` covers pixels ``[i*H/h, (i+1)*H/h) x [j*W/w, (j+1)*W/w)``; no crop.

:func:`load_clip` is public: ``sam_clip`` builds its region encoder with it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.errors import M3Error
from pipeline.features.adapter_config import ClipConf
from pipeline.features.models import register
from pipeline.features.models.base import (
    OPENAI_MEAN,
    OPENAI_STD,
    FeatureMap,
    FeatureModel,
    grid_for,
    hf_tower_configs,
    resize_to_grid,
)

log = logging.getLogger(__name__)


def _load_error(conf: dict[str, Any], exc: Exception) -> M3Error:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if conf["source"] == "hf":
        what = f"Hugging Face CLIP checkpoint '{conf['checkpoint']}'"
        fix = (
            f"download it once online (`hf download {conf['checkpoint']}`) or set checkpoint to a local "
            f"folder saved with save_pretrained"
        )
    else:
        import open_clip

        what = f"open_clip checkpoint '{conf['checkpoint']}' (pretrained '{conf['pretrained']}')"
        hub = (open_clip.get_pretrained_cfg(str(conf["checkpoint"]), str(conf["pretrained"])) or {}).get("hf_hub")
        online = f"`hf download {hub.rstrip('/')}`" if hub else "open_clip.create_model(...) once online"
        fix = f"fill the cache with {online} or set features.clip.pretrained to a local weights file"
    return M3Error(f"features.clip: cannot load the {what}: not local and not in the cache ({first}); {fix}")


class ClipBackbone(nn.Module):
    """Uniform view of a CLIP model (open_clip ``CLIP`` or HF ``CLIPModel``).

    ``encode_image(x [B, 3, S, S']) -> [B, d]`` pooled (unnormalised) embedding, ``dense(x) ->
    [B, h, w, d]`` MaskCLIP patch features, ``encode_text(texts) -> [T, d]`` (unnormalised);
    ``patch``, ``native_size`` (pixels), ``dim``. Subclasses expose the pieces of the last block.
    """

    patch: int
    native_size: int
    dim: int

    def tokens_before_last(self, x: torch.Tensor) -> torch.Tensor:
        """Input of the last block ``[B, 1 + h*w, D]`` (CLS first), positions interpolated."""
        raise NotImplementedError

    def last_block(self) -> dict[str, Any]:
        """``ln_1, v (weight, bias), out_proj, ls_1, ln_2, mlp, ls_2`` of the last block."""
        raise NotImplementedError

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Post-LN and projection ``[..., D] -> [..., d]``."""
        raise NotImplementedError

    def full_last(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The last block as the model runs it (optional additive ``attn_mask [L, L]``)."""
        raise NotImplementedError

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings ``[T, d]`` (unnormalised)."""
        raise NotImplementedError

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled image embedding ``[B, d]`` (CLS token through the unchanged model)."""
        return self.head(self.full_last(self.tokens_before_last(x))[:, 0])

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """MaskCLIP features ``[B, h, w, d]`` of images ``x [B, 3, h*patch, w*patch]`` (normalised input)."""
        h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        t = self.tokens_before_last(x)
        b = self.last_block()
        v = F.linear(b["ln_1"](t), b["v_weight"], b["v_bias"])
        v = t + b["ls_1"](b["out_proj"](v))
        v = v + b["ls_2"](b["mlp"](b["ln_2"](v)))
        return self.head(v[:, 1:]).reshape(x.shape[0], h, w, -1)


def _interp_pos(pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``pos [1 + G*G', D]`` (CLS first) -> ``[1 + h*w, D]`` by bicubic interpolation of the grid."""
    cls, grid = pos[:1], pos[1:]
    n = grid.shape[0]
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"positional embedding of {n} cells is not a square grid")
    if (g, g) == (h, w):
        return pos
    grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(h * w, -1)])


class OpenClipBackbone(ClipBackbone):
    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model: Any = model  # open_clip's CLIP: its submodules are read by name
        self.tokenizer = tokenizer
        vis: Any = model.visual
        if getattr(vis, "attn_pool", None) is not None or not hasattr(vis, "conv1"):
            raise M3Error("features.clip: only plain ViT CLIP image towers are supported; pick a ViT checkpoint")
        self.patch = int(vis.patch_size[0])
        self.native_size = int(vis.image_size[0])
        self.dim = int(vis.output_dim)

    def tokens_before_last(self, x: torch.Tensor) -> torch.Tensor:
        vis = self.model.visual
        x = vis.conv1(x)  # [B, D, h, w]
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = vis.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + _interp_pos(vis.positional_embedding, h, w).to(x.dtype)
        x = vis.ln_pre(x)
        for block in vis.transformer.resblocks[:-1]:
            x = block(x)
        return x

    def last_block(self) -> dict[str, Any]:
        blk = self.model.visual.transformer.resblocks[-1]
        d = blk.attn.embed_dim
        return {
            "ln_1": blk.ln_1,
            "v_weight": blk.attn.in_proj_weight[2 * d :],
            "v_bias": blk.attn.in_proj_bias[2 * d :],
            "out_proj": blk.attn.out_proj,
            "ls_1": blk.ls_1,
            "ln_2": blk.ln_2,
            "mlp": blk.mlp,
            "ls_2": blk.ls_2,
        }

    def full_last(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.visual.transformer.resblocks[-1](x, attn_mask=attn_mask)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        vis = self.model.visual
        x = vis.ln_post(x)
        return x @ vis.proj if vis.proj is not None else x

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenizer(texts).to(device))


class HFClipBackbone(ClipBackbone):
    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model: Any = model  # Hugging Face's CLIPModel: its submodules are read by name
        self.tokenizer = tokenizer
        config: Any = model.config
        cfg = config.vision_config
        self.patch, self.native_size = int(cfg.patch_size), int(cfg.image_size)
        self.dim = int(config.projection_dim)

    def tokens_before_last(self, x: torch.Tensor) -> torch.Tensor:
        vm = self.model.vision_model
        x = vm.pre_layrnorm(vm.embeddings(x, interpolate_pos_encoding=True))
        for layer in vm.encoder.layers[:-1]:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        return x

    def last_block(self) -> dict[str, Any]:
        layer = self.model.vision_model.encoder.layers[-1]
        return {
            "ln_1": layer.layer_norm1,
            "v_weight": layer.self_attn.v_proj.weight,
            "v_bias": layer.self_attn.v_proj.bias,
            "out_proj": layer.self_attn.out_proj,
            "ls_1": nn.Identity(),
            "ln_2": layer.layer_norm2,
            "mlp": layer.mlp,
            "ls_2": nn.Identity(),
        }

    def full_last(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = None if attn_mask is None else attn_mask.to(x.dtype)[None, None].expand(x.shape[0], 1, -1, -1)
        out = self.model.vision_model.encoder.layers[-1](x, mask)
        return out[0] if isinstance(out, tuple) else out

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.visual_projection(self.model.vision_model.post_layernorm(x))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        ids = self.tokenizer(texts)
        if not isinstance(ids, torch.Tensor):  # HF tokenizer output
            batch = {k: v.to(device) for k, v in ids.items()}
        else:
            batch = {"input_ids": ids.to(device), "attention_mask": (ids != 0).long().to(device)}
        out = self.model.get_text_features(**batch)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def _random_open_clip(arch: dict[str, Any]) -> tuple[nn.Module, Any]:
    import open_clip

    model = open_clip.CLIP(
        embed_dim=int(arch["embed_dim"]),
        vision_cfg={
            "image_size": arch["image_size"],
            "patch_size": arch["patch_size"],
            "width": arch["width"],
            "layers": arch["layers"],
            "head_width": arch["width"] // arch["heads"],
        },
        text_cfg={
            "context_length": arch["context_length"],
            "vocab_size": 49408,
            "width": arch["text_width"],
            "heads": arch["text_heads"],
            "layers": arch["text_layers"],
        },
        quick_gelu=True,
    )
    return model, open_clip.SimpleTokenizer(context_length=int(arch["context_length"]))


def _random_hf(arch: dict[str, Any]) -> tuple[nn.Module, Any]:
    import open_clip
    from transformers import CLIPConfig, CLIPModel

    vision, text = hf_tower_configs(arch)
    config = CLIPConfig(projection_dim=int(arch["embed_dim"]), vision_config=vision, text_config=text)
    return CLIPModel(config), open_clip.SimpleTokenizer(context_length=int(arch["context_length"]))


def _pretrained(conf: dict[str, Any]) -> tuple[ClipBackbone, tuple[float, ...], tuple[float, ...]]:
    checkpoint = str(conf["checkpoint"])
    if conf["source"] == "hf":
        from transformers import CLIPModel, CLIPTokenizer

        local = Path(checkpoint).expanduser()
        src = str(local) if local.is_dir() else checkpoint
        try:
            model, tok = CLIPModel.from_pretrained(src), CLIPTokenizer.from_pretrained(src)
        except OSError as exc:
            raise _load_error(conf, exc) from exc
        tokenizer = lambda texts: tok(texts, padding="max_length", truncation=True, return_tensors="pt")  # noqa: E731
        return HFClipBackbone(model, tokenizer), OPENAI_MEAN, OPENAI_STD
    import open_clip

    if checkpoint not in open_clip.list_models() and not checkpoint.startswith(("hf-hub:", "local-dir:")):
        raise M3Error(
            f"features.clip.checkpoint: '{checkpoint}' is not an open_clip model name "
            f"(see open_clip.list_models()); fix it or set source: hf for a Hugging Face CLIP id"
        )
    try:
        model = open_clip.create_model(checkpoint, pretrained=conf["pretrained"], require_pretrained=True)
    except Exception as exc:  # open_clip raises RuntimeError/OSError/hub errors for a missing download
        raise _load_error(conf, exc) from exc
    vis = model.visual
    mean = tuple(getattr(vis, "image_mean", None) or OPENAI_MEAN)
    std = tuple(getattr(vis, "image_std", None) or OPENAI_STD)
    return OpenClipBackbone(model, open_clip.get_tokenizer(checkpoint)), mean, std


def load_clip(
    conf: dict[str, Any], device: torch.device | str = "cpu"
) -> tuple[ClipBackbone, torch.Tensor, torch.Tensor]:
    """The CLIP model named by ``conf`` (keys of :class:`~pipeline.features.config.ClipModelConf`),
    in eval mode on ``device``.

    Returns ``(model, mean [3, 1, 1], std [3, 1, 1])``: normalise images ``[3, H, W]`` in [0, 1] as
    ``(x - mean) / std`` before ``model.encode_image`` / ``model.dense``.
    """
    if conf["weights"] == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(conf["seed"]))
            model, tok = (_random_hf if conf["source"] == "hf" else _random_open_clip)(conf["random_arch"])
        wrapped: ClipBackbone = (HFClipBackbone if conf["source"] == "hf" else OpenClipBackbone)(model, tok)
        mean: tuple[float, ...] = OPENAI_MEAN
        std: tuple[float, ...] = OPENAI_STD
    else:
        wrapped, mean, std = _pretrained(conf)
    mean = conf["mean"] or mean
    std = conf["std"] or std
    wrapped = wrapped.to(device).eval()
    as_t = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(3, 1, 1)  # noqa: E731
    return wrapped, as_t(mean), as_t(std)


@register("clip")
class Clip(FeatureModel):
    max_text_tokens = 77
    """Dense CLIP (MaskCLIP) features ``[h, w, d]`` over the whole image, plus ``encode_text``."""

    config_class = ClipConf

    def __init__(self, conf: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().__init__(conf, device)
        self.clip, self.mean, self.std = load_clip(conf, self.device)
        self.input_size = int(conf["input_size"] or self.clip.native_size)
        log.info(
            "clip: %s/%s (%s), d=%d, patch %d, short side %d",
            conf["checkpoint"],
            conf["pretrained"],
            conf["weights"],
            self.dim,
            self.clip.patch,
            self.input_size,
        )

    @property
    def dim(self) -> int:
        return self.clip.dim

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return grid_for(height, width, self.input_size, self.clip.patch)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """``image [3, H, W]`` in [0, 1] -> normalised model input ``[1, 3, h*patch, w*patch]``."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image [3, H, W], got {tuple(image.shape)}")
        h, w = self.grid_size(int(image.shape[1]), int(image.shape[2]))
        x = resize_to_grid(image.to(self.device), h, w, self.clip.patch)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def extract(self, image: torch.Tensor) -> FeatureMap:
        """``image [3, H, W]`` in [0, 1] -> MaskCLIP features ``[h, w, d]`` (all valid, unnormalised)."""
        features = self.clip.dense(self.preprocess(image))[0].float()
        valid = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        return FeatureMap(features=features, valid=valid)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``[T, d]``."""
        return F.normalize(self.clip.encode_text(texts).float(), dim=-1)
