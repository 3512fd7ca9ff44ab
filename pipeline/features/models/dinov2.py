"""DINOv2 patch tokens of the whole image (Hugging Face ``Dinov2Model``).

The reference implementation resized the short side and centre-cropped, so its feature map
covered only the middle of the view and was then stretched over the whole image. Here the whole
image is resized (aspect ratio kept, each side rounded to a multiple of the patch size) and the
model's positional embeddings are interpolated to that grid, so cell ``(i, j)`` of the map covers
exactly pixels ``[i*H/h, (i+1)*H/h) x [j*W/w, (j+1)*W/w)``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.core.errors import M3Error
from pipeline.features.adapter_config import Dinov2Conf
from pipeline.features.models import register
from pipeline.features.models.base import FeatureMap, FeatureModel, hub_load_error

log = logging.getLogger(__name__)


def _hub_error(checkpoint: str, what: str, exc: Exception) -> M3Error:
    return hub_load_error("dinov2", checkpoint, what, exc, "config.json and the weights")


def load_dinov2(conf: dict[str, Any]) -> Any:
    """The ``Dinov2Model`` named by ``conf`` (``weights: random`` builds ``random_arch``, no download)."""
    from transformers import Dinov2Config, Dinov2Model

    checkpoint = str(conf["checkpoint"])
    if conf["weights"] == "random":
        if conf["random_arch"] is None:
            try:
                config = Dinov2Config.from_pretrained(checkpoint)
            except OSError as exc:
                raise _hub_error(checkpoint, "the config", exc) from exc
        else:
            config = Dinov2Config(patch_size=int(conf["patch_size"]), **conf["random_arch"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(conf["seed"]))
            return Dinov2Model(config)
    local = Path(checkpoint).expanduser()
    if local.is_dir() and not (local / "config.json").is_file():
        raise M3Error(
            f"features.dinov2.checkpoint: {local} has no config.json; point it at a folder saved with "
            f"save_pretrained (config.json + model.safetensors) or at a Hugging Face id"
        )
    source = str(local) if local.is_dir() else checkpoint
    try:
        return Dinov2Model.from_pretrained(source, dtype=torch.float32)  # fp32 whatever the files hold
    except OSError as exc:
        raise _hub_error(checkpoint, "the weights", exc) from exc


@register("dinov2")
class Dinov2(FeatureModel):
    """Dense DINOv2 features: final-layernorm patch tokens ``[h, w, d]`` over the whole image.

    ``input_size`` is the short side fed to the model (rounded to a multiple of the patch size);
    the long side follows the image's aspect ratio.
    """

    config_class = Dinov2Conf

    def __init__(self, conf: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().__init__(conf, device)
        self.model = load_dinov2(conf).to(self.device).eval()
        self.patch = int(self.model.config.patch_size)
        self.mean = torch.tensor(conf["mean"], dtype=torch.float32, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(conf["std"], dtype=torch.float32, device=self.device).view(3, 1, 1)
        log.info("dinov2: %s (%s), d=%d, patch %d", conf["checkpoint"], conf["weights"], self.dim, self.patch)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` patches: short side ``input_size / patch``, long side by aspect ratio."""
        scale = float(self.conf["input_size"]) / min(height, width)
        return (
            max(1, round(height * scale / self.patch)),
            max(1, round(width * scale / self.patch)),
        )

    @torch.no_grad()
    def extract(self, image: torch.Tensor) -> FeatureMap:
        """``image [3, H, W]`` in [0, 1] -> patch tokens ``[h, w, d]`` (all valid)."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image [3, H, W], got {tuple(image.shape)}")
        h, w = self.grid_size(int(image.shape[1]), int(image.shape[2]))
        x = image.to(self.device, torch.float32)
        x = F.interpolate(
            x[None], size=(h * self.patch, w * self.patch), mode="bilinear", align_corners=False, antialias=True
        )[0]
        x = ((x - self.mean) / self.std)[None]
        tokens = self.model(pixel_values=x).last_hidden_state  # [1, 1 + h*w, d] (CLS first)
        features = tokens[0, 1:].reshape(h, w, -1).float()
        valid = torch.ones(h, w, dtype=torch.bool, device=features.device)
        return FeatureMap(features=features, valid=valid)
