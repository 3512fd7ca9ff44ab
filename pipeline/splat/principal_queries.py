"""Principal queries rendered for the feature loss and for feature maps, at one of two resolutions.

``cells`` renders a model's query map at its feature-map size ``[h, w, l]`` (intrinsics scaled)
and supervises valid cells with the stored features. ``pixels`` renders it at the image size (the
training window of the step, as the RGB patch) and supervises pixels with the stored features
interpolated bilinearly at the pixel centres (feature cell (i, j) is centred at
``((j + 0.5) W / w, (i + 0.5) H / h)``), as the reference M3 does; a pixel counts as valid when
every cell its interpolation touches is valid. A memory trained at pixels renders a feature map by
rendering the queries at the image size and averaging them over each cell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.splat.gaussians import Params, render_query, scaled_K

if TYPE_CHECKING:
    from pipeline.splat.raster import Backend

FeatureRender = Literal["cells", "pixels"]
Window = tuple[int, int, int, int]  # x0, y0, width, height in pixels of the view


class Camera(NamedTuple):
    """A view's camera: world-to-camera ``viewmat [4, 4]``, intrinsics ``K [3, 3]``, image size."""

    viewmat: Tensor
    K: Tensor
    width: int
    height: int


def window_K(K: Tensor, window: Window) -> Tensor:
    """Intrinsics ``[3, 3]`` of the crop ``window`` of an image with intrinsics ``K``."""
    x0, y0, _, _ = window
    return K - torch.tensor([[0, 0, x0], [0, 0, y0], [0, 0, 0]], dtype=K.dtype, device=K.device)


def supervised_queries(
    params: Params, model: str, camera: Camera, stored: tuple[np.ndarray, np.ndarray],
    mode: FeatureRender, window: Window, n: int, generator: torch.Generator, detach_geometry: bool = True,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor] | None:  # fmt: skip
    """Up to ``n`` random supervised samples of one view: ``(queries [P, l], targets [P, d])``, or
    None when nothing is valid. ``stored`` = (features [h, w, d], valid [h, w]) of the view;
    ``window`` is the step's pixel window (``pixels`` mode)."""
    feats, valid = stored
    viewmat, K, width, height = camera
    h, w, d = feats.shape
    dev = params["means"].device
    if mode == "cells":
        q = render_query(params, model, viewmat, scaled_K(K, width, height, w, h), w, h, detach_geometry, backend)
        cells = torch.from_numpy(np.flatnonzero(valid.reshape(-1)))
        if len(cells) == 0:
            return None
        pick = cells[torch.randperm(len(cells), generator=generator)[:n]]
        target = torch.from_numpy(feats.reshape(h * w, d)[pick.numpy()].astype(np.float32))
        return q.reshape(h * w, -1)[pick.to(dev)], target.to(dev)
    x0, y0, pw, ph = window
    ys, xs = torch.meshgrid(torch.arange(y0, y0 + ph) + 0.5, torch.arange(x0, x0 + pw) + 0.5, indexing="ij")
    grid = torch.stack([xs / width * 2 - 1, ys / height * 2 - 1], dim=-1)[None]  # [1, ph, pw, 2]
    mask = torch.from_numpy(valid.astype(np.float32))[None, None]
    ok = F.grid_sample(mask, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0] > 0.999
    pixels = torch.nonzero(ok.reshape(-1)).flatten()
    if len(pixels) == 0:
        return None
    pick = pixels[torch.randperm(len(pixels), generator=generator)[:n]]
    fmap = torch.from_numpy(feats.astype(np.float32)).permute(2, 0, 1)[None]  # [1, d, h, w]
    at = grid.reshape(-1, 2)[pick][None, None]  # [1, 1, P, 2]
    target = F.grid_sample(fmap, at, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T
    q = render_query(params, model, viewmat, window_K(K, window), pw, ph, detach_geometry, backend)
    return q.reshape(pw * ph, -1)[pick.to(dev)], target.to(dev)


def feature_grid_queries(
    params: Params,
    model: str,
    camera: Camera,
    grid_size: tuple[int, int],
    mode: FeatureRender,
    backend: Backend = "auto",
) -> Tensor:
    """The queries of a feature map ``[h, w, l]`` at ``grid_size`` (h, w): rendered at that size
    (``cells``) or at the view's size and averaged over each cell (``pixels``)."""
    viewmat, K, width, height = camera
    h, w = grid_size
    if mode == "cells":
        return render_query(params, model, viewmat, scaled_K(K, width, height, w, h), w, h, True, backend)
    q = render_query(params, model, viewmat, K, width, height, True, backend)  # [H, W, l]
    return F.adaptive_avg_pool2d(q.permute(2, 0, 1)[None], (h, w))[0].permute(1, 2, 0)
