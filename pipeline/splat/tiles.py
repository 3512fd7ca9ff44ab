"""Per-tile, depth-sorted lists of projected 2D Gaussians (gsplat's ``isect_tiles`` layout), shared
by the torch and compiled CPU rasterizers.

An entry goes into every tile of its opacity-aware bounding box (gsplat), or, with the exact
test (:func:`ellipse_rows`, as StopThePop's / Speedy-Splat's tile intersection), only into the
tiles that hold a pixel centre inside its alpha >= 1/255 ellipse: the compositor skips such
pixels anyway, so the image is the same and the lists are shorter (elongated or faint Gaussians
drop most of their box).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class TileLists(NamedTuple):
    """Sorted tile lists of :func:`isect_tiles` and the images they tile."""

    isect_ids: Tensor  # [n_isects] int64: image | tile | depth bits
    flatten_ids: Tensor  # [n_isects] int64: the projected entry of each list position
    n_images: int
    width: int
    height: int
    tile_size: int

    def offsets(self) -> Tensor:
        """``[I * tiles + 1]`` int64: list position where each (image, tile) starts, then the end."""
        n_tiles = -(-self.width // self.tile_size) * -(-self.height // self.tile_size)
        counts = torch.bincount(tile_index(self.isect_ids, n_tiles), minlength=self.n_images * n_tiles)
        return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


@torch.no_grad()
def isect_tiles(
    means2d: Tensor,
    radii: Tensor,
    depths: Tensor,
    image_ids: Tensor,
    tile_size: int,
    tile_width: int,
    tile_height: int,
    ellipse: tuple[Tensor, Tensor, int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """List (image, tile, Gaussian) intersections sorted like gsplat's ``isect_tiles``.

    Args: means2d [M, 2], radii [M, 2], depths [M], image_ids [M] for the M projected entries
    (M = I * N image-major when not packed); ``ellipse`` = (conics [M, 3], opacities [M], width,
    height) lists only the tiles that hold a pixel centre inside the entry's alpha >= 1/255
    ellipse (:func:`ellipse_rows`) instead of every tile of its bounding box (gsplat): the same
    image, fewer entries.

    Returns: tiles_per_gauss [M] int32, isect_ids [n_isects] int64 (image | tile | depth bits, as
    gsplat), flatten_ids [n_isects] int64 (index into the M entries), sorted by isect_ids.
    """
    dev = means2d.device
    tile_bits = (tile_width * tile_height).bit_length()
    r = radii.to(means2d.dtype) / tile_size
    t = means2d.detach() / tile_size
    lim = torch.tensor([tile_width, tile_height], device=dev)
    tmin = torch.minimum(torch.floor(t - r).clamp(min=0).long(), lim)
    tmax = torch.minimum(torch.ceil(t + r).clamp(min=0).long(), lim)
    visible = (radii > 0).all(dim=-1)
    if ellipse is None:  # every tile of the box: rows tmin_y..tmax_y, each spanning tmin_x..tmax_x
        n_rows = (tmax[:, 1] - tmin[:, 1]) * visible
        entry = torch.repeat_interleave(torch.arange(len(n_rows), device=dev), n_rows)
        row = tmin[entry, 1] + torch.arange(len(entry), device=dev) - (torch.cumsum(n_rows, 0) - n_rows)[entry]
        x0, x1 = tmin[entry, 0], tmax[entry, 0]
    else:
        entry, row, x0, x1 = ellipse_rows(means2d.detach(), tmin, tmax, visible, tile_size, *ellipse)
    span = x1 - x0
    count = torch.zeros(len(means2d), dtype=torch.long, device=dev).index_add_(0, entry, span)
    seg = torch.repeat_interleave(torch.arange(len(span), device=dev), span)  # (entry, row) segment per tile
    col = x0[seg] + torch.arange(len(seg), device=dev) - (torch.cumsum(span, 0) - span)[seg]
    tile = row[seg] * tile_width + col
    entry = entry[seg]
    depth_bits = depths.detach().float().contiguous().view(torch.int32).long() & 0xFFFFFFFF
    isect_ids = (image_ids[entry] << (32 + tile_bits)) | (tile << 32) | depth_bits[entry]
    isect_ids, order = torch.sort(isect_ids, stable=True)
    return count.to(torch.int32), isect_ids, entry[order]


def ellipse_rows(
    means2d: Tensor,
    tmin: Tensor,
    tmax: Tensor,
    visible: Tensor,
    tile_size: int,
    conics: Tensor,
    opacities: Tensor,
    width: int,
    height: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per (entry, tile row) of the bounding boxes, the tile columns ``[x0, x1)`` whose pixel
    centres include one inside the entry's ellipse ``0.5 d^T Q d <= ln(255 opacity)`` (Q the conic,
    d the offset from the mean; inflated by 1e-3 so that float rounding never drops a pixel that
    the compositor would keep). Within the row band the ellipse's x-range runs from its left
    boundary at the band point nearest the ellipse's leftmost point to its right boundary at the
    band point nearest its rightmost point (the boundaries are convex / concave in y).

    Returns entry [R], row [R], x0 [R], x1 [R] (rows with no such tile have x0 == x1).
    """
    dev, dt = means2d.device, means2d.dtype
    n_rows = (tmax[:, 1] - tmin[:, 1]) * visible
    entry = torch.repeat_interleave(torch.arange(len(n_rows), device=dev), n_rows)
    row = tmin[entry, 1] + torch.arange(len(entry), device=dev) - (torch.cumsum(n_rows, 0) - n_rows)[entry]
    a, b, c = conics.detach()[entry].to(dt).unbind(-1)
    op = opacities.detach()[entry].to(dt)
    two_l = 2.0 * torch.log((op * 255.0).clamp(min=1.0)) + 1e-3  # d^T Q d <= 2 ln(255 o), inflated
    det = (a * c - b * b).clamp(min=1e-30)
    mx, my = means2d[entry, 0], means2d[entry, 1]
    # pixel-centre rows of the band (clipped to the image), as offsets from the mean
    lo = (row * tile_size).to(dt) + 0.5 - my
    hi = (torch.clamp((row + 1) * tile_size, max=height) - 1).to(dt) + 0.5 - my
    ext = torch.sqrt(two_l * a / det)  # the ellipse's half-height
    lo, hi = torch.maximum(lo, -ext), torch.minimum(hi, ext)
    y_left = torch.sqrt(two_l / (c * det).clamp(min=1e-30)) * b  # y of the leftmost point

    def x_at(dy: Tensor, sign: float) -> Tensor:  # left (-1) or right (+1) boundary at dy
        disc = (two_l * a - det * dy * dy).clamp(min=0)
        return (-b * dy + sign * torch.sqrt(disc)) / a

    xl = mx + x_at(torch.minimum(torch.maximum(y_left, lo), hi), -1.0)
    xr = mx + x_at(torch.minimum(torch.maximum(-y_left, lo), hi), 1.0)
    # pixel columns i with centre i + 0.5 in [xl, xr], as tiles, within the box
    i0 = torch.ceil(xl - 0.5).clamp(min=0, max=width - 1).long()
    i1 = torch.floor(xr - 0.5).clamp(min=-1, max=width - 1).long()
    x0 = torch.maximum(i0 // tile_size, tmin[entry, 0])
    x1 = torch.minimum(i1 // tile_size + 1, tmax[entry, 0])
    empty = (lo > hi) | (i1 < i0) | (xr < xl)
    x1 = torch.where(empty | (x1 < x0), x0, x1)
    return entry, row, x0, x1


def tile_index(isect_ids: Tensor, n_tiles: int) -> Tensor:
    """Global tile index (image * n_tiles + tile) [n_isects] of gsplat-style isect_ids."""
    key = isect_ids >> 32
    bits = n_tiles.bit_length()
    return (key >> bits) * n_tiles + (key & ((1 << bits) - 1))
