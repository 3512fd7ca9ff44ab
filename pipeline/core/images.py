"""Images: the one image loader (a registered view's image as pixels, at the size its camera
says; RGBA files keep their alpha or are composited over a background) and feature maps as
colours (a 3-component PCA)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipeline.core.errors import M3Error

WHITE = (1.0, 1.0, 1.0)
"""The background behind transparent pixels unless a setting says otherwise (the NeRF-synthetic convention)."""


def has_alpha(image: Image.Image | Path) -> bool:
    """Whether ``image`` (or the image file at that path) has transparency (an alpha band or a
    transparent palette entry / colour)."""
    if isinstance(image, Image.Image):
        return "A" in image.getbands() or "transparency" in image.info
    with Image.open(image) as im:
        return has_alpha(im)


def _decode(path: Path, data: bytes | None) -> Image.Image:
    """The image at ``path`` (or in ``data``) as RGB, or RGBA when the file has transparency."""
    path = Path(path)
    if data is None and not path.is_file():
        raise M3Error(f"{path}: image of a registered view is missing; rerun the poses stage")
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as im:
            return im.convert("RGBA" if has_alpha(im) else "RGB")
    except UnidentifiedImageError as exc:  # its text names the file object, not the file
        reason = "not a known image format"
        raise M3Error(f"{path}: cannot read the view's image ({reason}); rerun the poses stage") from exc
    except (OSError, ValueError) as exc:
        raise M3Error(f"{path}: cannot read the view's image ({exc}); rerun the poses stage") from exc


def load_pixels(path: Path, width: int, height: int, data: bytes | None = None) -> np.ndarray:
    """The image at ``path`` as ``[height, width, C] uint8``: C = 4 (RGBA, straight alpha) when the
    file has transparency, else 3; resized (bicubic, on premultiplied colours) if its size differs.

    ``data``: the file's bytes, read elsewhere (a Ray worker decodes a view the driver read); ``path``
    then only names it. A missing or unreadable file is an :class:`M3Error` naming it (the fix: rerun
    the poses stage, which writes the undistorted images of the registered views).
    """
    img = _decode(path, data)
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BICUBIC)  # RGBA: Pillow premultiplies
    return np.asarray(img, dtype=np.uint8).copy()


def composite(pixels: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Float pixels ``[H, W, 3|4]`` in [0, 1] as RGB ``[H, W, 3]``: RGBA over ``background [3]``
    (``rgb * a + (1 - a) * bg``); RGB is returned as it is."""
    if pixels.shape[-1] == 3:
        return pixels
    rgb, a = pixels[..., :3], pixels[..., 3:]
    return rgb * a + (1 - a) * background.to(pixels)


def load_image(
    path: Path, width: int, height: int, data: bytes | None = None, background: tuple[float, ...] = WHITE
) -> np.ndarray:
    """The RGB image at ``path`` as ``[height, width, 3] uint8``, resized (bicubic) if its size differs;
    an RGBA file is composited over ``background`` (RGB in [0, 1], white by default).

    The feature extractors see this image: transparent pixels as the background colour, never the
    colour a file happens to store under alpha 0. See :func:`load_pixels` for ``data`` and errors.
    """
    pixels = load_pixels(path, width, height, data)
    if pixels.shape[-1] == 3:
        return pixels
    rgb = composite(torch.from_numpy(to_float(pixels)), torch.tensor(background, dtype=torch.float32))
    return (rgb.numpy() * 255 + 0.5).astype(np.uint8)


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """``image`` (``[H, W, 3] uint8`` or a PIL image) encoded as PNG: the bytes ``Image.save`` writes
    to a ``.png`` file (what ``m3 query`` writes and ``m3 serve`` sends are the same bytes)."""
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def to_float(pixels: np.ndarray) -> np.ndarray:
    """``uint8`` pixels as ``float32`` in [0, 1] (same shape)."""
    return np.asarray(pixels, dtype=np.float32) / 255.0


class PCA3:
    """A 3-component projection of features ``[..., d]`` (fitted on the given ones) to ``uint8`` colours
    ``[..., 3]``, each component stretched between its 1st and 99th percentile."""

    def __init__(self, feats: torch.Tensor):
        x = feats.reshape(-1, feats.shape[-1]).float()
        self.mean = x.mean(0)
        _, _, v = torch.linalg.svd(x - self.mean, full_matrices=False)
        self.basis = v[:3].T
        y = (x - self.mean) @ self.basis
        self.lo, self.hi = torch.quantile(y, 0.01, dim=0), torch.quantile(y, 0.99, dim=0)

    def __call__(self, feats: torch.Tensor) -> np.ndarray:
        y = (feats.float() - self.mean) @ self.basis
        y = ((y - self.lo) / (self.hi - self.lo).clamp_min(1e-8)).clamp(0, 1)
        if y.shape[-1] < 3:
            y = torch.cat([y, torch.zeros(*y.shape[:-1], 3 - y.shape[-1])], -1)
        return (y.numpy() * 255 + 0.5).astype(np.uint8)
