"""Region machinery shared by the region adapters (``sam_clip``, ``llama3``, ``seem``).

A view is segmented with segment-anything's automatic mask generator (:class:`SamMasks`); each
mask that owns a cell of the adapter's grid (:func:`assign_masks`: the smallest covering mask
wins) is described by one embedding, which :func:`broadcast_regions` writes to the mask's cells.
Cells no mask covers are zero and invalid. :func:`square_crops` cuts the masks' boxes out of the
view (padded square, background optionally blanked) for the models that look at each region.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.errors import M3Error

SAM_URLS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}
"""Where to download the checkpoint of each SAM architecture (:data:`pipeline.features.config.SamType`)."""


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


def load_sam(conf: dict[str, Any], where: str = "features.sam_clip") -> Any:
    """The SAM model of ``conf``: ``sam_type`` + ``checkpoint`` file, or random init (``random_arch``);
    a missing checkpoint file is an :class:`M3Error` naming ``where``'s key and the download."""
    from segment_anything import sam_model_registry

    sam_type = conf["sam_type"]
    if conf["weights"] == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(conf["seed"]))
            arch = conf["random_arch"]
            sam = _build_sam_arch(**arch) if arch is not None else sam_model_registry[sam_type]()
        return sam.eval()
    path = Path(conf["checkpoint"]).expanduser()
    if not path.is_file():
        raise M3Error(
            f"{where}.checkpoint: SAM checkpoint '{path}' not found; download it once "
            f"({SAM_URLS[sam_type]}) and set {where}.checkpoint to its path"
        )
    sam = sam_model_registry[sam_type]()
    try:
        sam.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, KeyError) as exc:
        raise M3Error(
            f"{where}.checkpoint: {path} is not a SAM {sam_type} checkpoint ({str(exc)[:120]}); "
            f"set {where}.sam_type to its architecture (vit_h | vit_l | vit_b)"
        ) from exc
    return sam.eval()


class SamMasks:
    """SAM automatic masks of a view; SAM is loaded on first use (text queries never need it).

    ``conf`` holds the keys of :class:`~pipeline.features.config.SamConf` plus ``weights`` and
    ``seed``; ``where`` is its params key for error messages.
    """

    def __init__(self, conf: dict[str, Any], device: torch.device, where: str) -> None:
        self.conf, self.device, self.where = conf, device, where
        self._generator: Any = None

    @property
    def generator(self) -> Any:
        """segment-anything's ``SamAutomaticMaskGenerator`` over the configured SAM (built once)."""
        if self._generator is None:
            from segment_anything import SamAutomaticMaskGenerator

            c = self.conf
            self._generator = SamAutomaticMaskGenerator(
                load_sam(c, self.where).to(self.device),
                points_per_side=int(c["points_per_side"]),
                points_per_batch=int(c["points_per_batch"]),
                pred_iou_thresh=float(c["pred_iou_thresh"]),
                stability_score_thresh=float(c["stability_score_thresh"]),
                box_nms_thresh=float(c["box_nms_thresh"]),
                crop_n_layers=int(c["crop_n_layers"]),
            )
        return self._generator

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """``image [3, H, W]`` in [0, 1] -> non-empty ``masks [M, H, W]`` bool."""
        rgb = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        records = self.generator.generate(np.ascontiguousarray(rgb))
        masks = [torch.from_numpy(r["segmentation"]) for r in records if r["area"] > 0]
        if not masks:
            return torch.zeros(0, *image.shape[1:], dtype=torch.bool)
        return torch.stack(masks)


def nested_sam(conf: dict[str, Any], device: torch.device, model: str) -> SamMasks:
    """:class:`SamMasks` of ``features.<model>.sam`` with the adapter's ``weights`` and ``seed``."""
    return SamMasks({**conf["sam"], "weights": conf["weights"], "seed": conf["seed"]}, device, f"features.{model}.sam")


def stride_grid(height: int, width: int, stride: float) -> tuple[int, int]:
    """The region adapters' grid: the image downscaled by ``stride`` (at least one cell)."""
    return max(1, round(height / stride)), max(1, round(width / stride))


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


def owned_masks(masks: torch.Tensor, grid: tuple[int, int], coverage: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The masks that own at least one cell and the cells' owners among them.

    Returns ``used [K]`` (indices into ``masks``, ascending) and ``owner [h, w]`` long, the index
    into ``used`` of each cell's owner (-1: no mask).
    """
    owner, _ = assign_masks(masks, grid, coverage)
    used = owner[owner >= 0].unique()
    ranked = torch.full_like(owner, -1)
    ranked[owner >= 0] = torch.searchsorted(used, owner[owner >= 0])
    return used, ranked


def broadcast_regions(owner: torch.Tensor, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``owner [h, w]`` (index into ``embeddings [K, d]``, -1: none) -> ``features [h, w, d]``
    (zero where invalid) and ``valid [h, w]`` bool, on the embeddings' device."""
    valid = (owner >= 0).to(embeddings.device)
    features = torch.zeros(*owner.shape, embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device)
    if len(embeddings):
        features[valid] = embeddings[owner.to(embeddings.device)[valid]]
    return features, valid


def square_crops(image: torch.Tensor, masks: torch.Tensor, size: int, blank_background: bool) -> torch.Tensor:
    """Each mask's box of ``image [3, H, W]``, zero-padded to a centred square and resized to
    ``size``: ``[M, 3, size, size]`` in the image's range (pixels outside the mask zeroed when
    ``blank_background``)."""
    out = []
    for mask, (x0, y0, x1, y1) in zip(masks, mask_boxes(masks).tolist()):
        crop = image[:, y0:y1, x0:x1]
        if blank_background:
            crop = crop * mask[y0:y1, x0:x1].to(crop.device, crop.dtype)
        side = max(y1 - y0, x1 - x0)
        top, left = (side - (y1 - y0)) // 2, (side - (x1 - x0)) // 2
        square = F.pad(crop, (left, side - (x1 - x0) - left, top, side - (y1 - y0) - top))
        out.append(
            F.interpolate(square[None], size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)[
                0
            ]
        )
    if not out:
        return torch.zeros(0, 3, size, size, dtype=image.dtype, device=image.device)
    return torch.stack(out)
