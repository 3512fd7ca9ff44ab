"""Region-language features: SAM automatic masks, one CLIP embedding per mask.

Each view is segmented with segment-anything's automatic mask generator; every mask's bounding
box is cropped (background optionally blanked), padded to a square and encoded by the CLIP image
tower. The normalised embedding is broadcast to the mask's cells of a regular grid (the image
downscaled by ``stride``); where masks overlap the smaller one wins. Cells no mask covers are zero
and invalid.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.errors import M3Error
from pipeline.features.models import register
from pipeline.features.models.base import FeatureMap, FeatureModel
from pipeline.features.models.clip import DEFAULT_CONF as CLIP_CONF
from pipeline.features.models.clip import load_clip

log = logging.getLogger(__name__)

SAM_URLS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}


def _build_sam_arch(embed_dim: int, depth: int, num_heads: int, global_attn_indexes: list[int], img_size: int) -> Any:
    """SAM with a custom image-encoder size (prompt encoder and mask decoder as in every SAM)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    prompt_dim, patch = 256, 16
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=depth,
            embed_dim=embed_dim,
            img_size=img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=num_heads,
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=list(global_attn_indexes),
            window_size=14,
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(img_size // patch, img_size // patch),
            input_image_size=(img_size, img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def check_sam_conf(conf: dict[str, Any]) -> None:
    """A bad ``sam_type`` / ``weights`` or a missing checkpoint file -> :class:`M3Error`."""
    sam_type = conf["sam_type"]
    if sam_type not in SAM_URLS:
        raise M3Error(f"features.sam_clip.sam_type: {sam_type!r} is not one of {', '.join(SAM_URLS)}; fix it")
    if conf["weights"] not in ("pretrained", "random"):
        raise M3Error(f"features.sam_clip.weights: {conf['weights']!r} is not 'pretrained' or 'random'; fix it")
    path = Path(conf["checkpoint"]).expanduser()
    if conf["weights"] == "pretrained" and not path.is_file():
        raise M3Error(
            f"features.sam_clip.checkpoint: SAM checkpoint '{path}' not found; download it once "
            f"({SAM_URLS[sam_type]}) and set features.sam_clip.checkpoint to its path"
        )


def load_sam(conf: dict[str, Any]) -> Any:
    """The SAM model of ``conf``: ``sam_type`` + ``checkpoint`` file, or random init (``random_arch``)."""
    from segment_anything import sam_model_registry

    check_sam_conf(conf)
    sam_type = conf["sam_type"]
    if conf["weights"] == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(conf["seed"]))
            arch = conf["random_arch"]
            sam = _build_sam_arch(**arch) if arch is not None else sam_model_registry[sam_type]()
        return sam.eval()
    path = Path(conf["checkpoint"]).expanduser()
    sam = sam_model_registry[sam_type]()
    try:
        sam.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, KeyError) as exc:
        raise M3Error(
            f"features.sam_clip.checkpoint: {path} is not a SAM {sam_type} checkpoint ({str(exc)[:120]}); "
            f"set features.sam_clip.sam_type to its architecture (vit_h | vit_l | vit_b)"
        ) from exc
    return sam.eval()


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes ``[M, 4]`` (x0, y0, x1, y1; exclusive end) of non-empty ``masks [M, H, W]``."""
    rows, cols = masks.any(2), masks.any(1)  # [M, H], [M, W]
    h, w = masks.shape[1:]
    y0 = rows.float().argmax(1)
    y1 = h - rows.flip(1).float().argmax(1)
    x0 = cols.float().argmax(1)
    x1 = w - cols.flip(1).float().argmax(1)
    return torch.stack([x0, y0, x1, y1], 1)


def assign_masks(
    masks: torch.Tensor, grid: tuple[int, int], coverage: float, chunk: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which mask owns each grid cell.

    ``masks [M, H, W]`` bool at image resolution; a mask covers cell (i, j) of the ``grid (h, w)``
    (pixels ``[i*H/h, (i+1)*H/h) x [j*W/w, (j+1)*W/w)``, adaptive average pooling) when at least
    ``coverage`` of the cell's pixels are in it; among the masks covering a cell the
    one with the smallest pixel area wins (the lowest index on ties). Returns
    ``owner [h, w]`` long (-1 where no mask covers) and ``cover [M, h, w]`` bool.
    """
    h, w = grid
    if len(masks) == 0:
        return torch.full((h, w), -1, dtype=torch.long), torch.zeros(0, h, w, dtype=torch.bool)
    cover = torch.cat([F.adaptive_avg_pool2d(part.float()[None], (h, w))[0] >= coverage for part in masks.split(chunk)])
    area = masks.flatten(1).sum(1).double()  # [M]
    cost = torch.where(cover, area[:, None, None], torch.inf)
    best, owner = cost.min(0)  # first index on ties
    owner[torch.isinf(best)] = -1
    return owner, cover


@register("sam_clip")
class SamClip(FeatureModel):
    """SAM masks + CLIP crop embeddings on a grid of ``(round(H/stride), round(W/stride))`` cells."""

    has_mask = True
    default_conf = {
        "sam_type": "vit_h",  # vit_h | vit_l | vit_b: architecture of the SAM checkpoint
        "checkpoint": "sam_vit_h_4b8939.pth",  # local SAM checkpoint file (downloaded once from SAM_URLS)
        "weights": "pretrained",  # pretrained | random (random init of random_arch, or of sam_type if null)
        "random_arch": {"embed_dim": 64, "depth": 2, "num_heads": 2, "global_attn_indexes": [1], "img_size": 256},
        "seed": 0,  # random init seed (weights: random)
        "points_per_side": 32,  # SAM automatic mask generator settings
        "points_per_batch": 64,
        "pred_iou_thresh": 0.88,
        "stability_score_thresh": 0.95,
        "box_nms_thresh": 0.7,
        "crop_n_layers": 0,
        "stride": 4,  # feature grid = image downscaled by this factor
        "cell_coverage": 0.5,  # a mask covers a grid cell when it holds this fraction of its pixels
        "blank_background": True,  # black out the pixels of a mask's box outside the mask before CLIP
        "batch_size": 32,  # mask crops per CLIP forward pass
        # the CLIP that encodes the crops: keys as in features.clip (its dense input_size is not used)
        "clip": {k: v for k, v in CLIP_CONF.items() if k != "input_size"},
    }

    def __init__(self, conf: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().__init__(conf, device)
        if conf["sam_type"] not in SAM_URLS:  # the checkpoint file is checked when SAM is first needed
            raise M3Error(
                f"features.sam_clip.sam_type: {conf['sam_type']!r} is not one of {', '.join(SAM_URLS)}; fix it"
            )
        self._generator: Any = None  # SAM is loaded on first use: encode_text (queries) needs only CLIP
        try:
            self.clip, mean, std = load_clip(conf["clip"], self.device)
        except M3Error as exc:  # name the keys the user has to fix here
            raise M3Error(str(exc).replace("features.clip", "features.sam_clip.clip")) from exc
        self.mean, self.std = mean[None], std[None]  # [1, 3, 1, 1]
        self.crop_size = int(self.clip.native_size)
        log.info(
            "sam_clip: SAM %s (%s), CLIP %s (%s), d=%d",
            conf["sam_type"],
            conf["weights"],
            conf["clip"]["checkpoint"],
            conf["clip"]["weights"],
            self.dim,
        )

    @property
    def dim(self) -> int:
        return int(self.clip.dim)

    @property
    def generator(self) -> Any:
        """segment-anything's ``SamAutomaticMaskGenerator`` over the configured SAM (built once)."""
        if self._generator is None:
            from segment_anything import SamAutomaticMaskGenerator

            c = self.conf
            self._generator = SamAutomaticMaskGenerator(
                load_sam(c).to(self.device),
                points_per_side=int(c["points_per_side"]),
                points_per_batch=int(c["points_per_batch"]),
                pred_iou_thresh=float(c["pred_iou_thresh"]),
                stability_score_thresh=float(c["stability_score_thresh"]),
                box_nms_thresh=float(c["box_nms_thresh"]),
                crop_n_layers=int(c["crop_n_layers"]),
            )
        return self._generator

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        stride = float(self.conf["stride"])
        return max(1, round(height / stride)), max(1, round(width / stride))

    @torch.no_grad()
    def segment(self, image: torch.Tensor) -> torch.Tensor:
        """SAM automatic masks of ``image [3, H, W]`` in [0, 1] -> non-empty ``masks [M, H, W]`` bool."""
        rgb = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        records = self.generator.generate(np.ascontiguousarray(rgb))
        masks = [torch.from_numpy(r["segmentation"]) for r in records if r["area"] > 0]
        if not masks:
            return torch.zeros(0, *image.shape[1:], dtype=torch.bool)
        return torch.stack(masks)

    def crops(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """CLIP inputs ``[M, 3, S, S]`` (normalised): each mask's box, padded square, resized to S."""
        image = image.to(self.device, torch.float32)
        out = []
        for mask, (x0, y0, x1, y1) in zip(masks, mask_boxes(masks).tolist()):
            crop = image[:, y0:y1, x0:x1]
            if self.conf["blank_background"]:
                crop = crop * mask[y0:y1, x0:x1].to(crop.device, crop.dtype)
            side = max(y1 - y0, x1 - x0)
            top, left = (side - (y1 - y0)) // 2, (side - (x1 - x0)) // 2
            square = F.pad(crop, (left, side - (x1 - x0) - left, top, side - (y1 - y0) - top))
            out.append(
                F.interpolate(
                    square[None],
                    size=(self.crop_size, self.crop_size),
                    mode="bilinear",
                    align_corners=False,
                    antialias=side > self.crop_size,
                )[0]
            )
        return (torch.stack(out) - self.mean) / self.std

    @torch.no_grad()
    def encode_masks(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Unit CLIP embeddings ``[M, d]`` float32 of the crops of ``masks [M, H, W]``."""
        if len(masks) == 0:
            return torch.zeros(0, self.dim, device=self.device)
        embeddings = []
        for part in masks.split(int(self.conf["batch_size"])):
            embeddings.append(self.clip.encode_image(self.crops(image, part)).float())
        return F.normalize(torch.cat(embeddings), dim=-1)

    @torch.no_grad()
    def extract(self, image: torch.Tensor) -> FeatureMap:
        """``image [3, H, W]`` -> ``features [h, w, d]`` (zero where invalid), ``valid [h, w]``."""
        h, w = self.grid_size(int(image.shape[1]), int(image.shape[2]))
        masks = self.segment(image)
        owner, _ = assign_masks(masks, (h, w), float(self.conf["cell_coverage"]))
        valid = owner >= 0
        features = torch.zeros(h, w, self.dim, dtype=torch.float32, device=self.device)
        used = owner[valid].unique()  # only masks that own a cell are encoded
        if len(used):
            embeddings = self.encode_masks(image, masks[used])
            features[valid.to(self.device)] = embeddings[torch.searchsorted(used, owner[valid]).to(self.device)]
        log.debug(
            "sam_clip: %d masks, %d encoded, %.0f%% cells valid", len(masks), len(used), 100 * valid.float().mean()
        )
        return FeatureMap(features=features, valid=valid.to(self.device))

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised CLIP text embeddings ``[T, d]`` (the space of the mask embeddings)."""
        return F.normalize(self.clip.encode_text(texts).float(), dim=-1)
