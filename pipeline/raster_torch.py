"""CPU rasterizer in plain torch ops, following gsplat 1.5.3's CUDA conventions.

Used by :func:`pipeline.raster.rasterize` with ``backend="torch"``; autograd gives the backward
pass. Steps (each matches gsplat's ``fully_fused_projection`` / ``isect_tiles`` /
``rasterize_to_pixels`` kernels unless noted):

1. Projection (EWA, pinhole): world-to-camera, Jacobian with gsplat's 1.3x-FOV clamp, 2D blur
   ``eps2d`` added to the covariance, conic = its inverse. Culled (radii 0): depth outside
   ``[near_plane, far_plane]``, det <= 0, opacity < 1/255, both radii <= ``radius_clip``, or the
   box entirely outside the image. Radius per axis is ``ceil(extend * sqrt(cov2d[i, i]))`` with
   gsplat's opacity-aware ``extend = min(3.33, sqrt(2 ln(255 * opacity)))``, i.e. the tight box of
   the alpha >= 1/255 ellipse.
2. Tiles: every (image, Gaussian) pair is listed once per overlapped ``tile_size`` tile and sorted
   by (image, tile, depth) with gsplat's 64-bit key, giving ``flatten_ids`` / ``isect_offsets``.
3. Compositing per batch of tiles as padded, depth-sorted lists ``[tiles, K]``: for pixel centres
   (x + 0.5, y + 0.5), ``alpha = min(0.999, opacity * exp(-sigma))`` (gsplat 1.5.3 clamps at
   0.999), alpha < 1/255 (or sigma < 0) skipped; transmittance from the exclusive cumulative sum
   of ``log(1 - alpha)``; a pixel stops before the first Gaussian that would bring its
   transmittance to <= 1e-4 (gsplat's exclusive cut-off). Colour = sum(alpha T c) + T_final bg.

Memory is bounded by ``budget`` (pixel x list entries per step): tiles are grouped by list length
and long lists are processed in chunks of K that carry the log-transmittance, so there is no cap
on a tile's list. A gradient-free pre-pass first drops, per tile, the entries that touch none of
its pixels (alpha < 1/255 everywhere or after every pixel's cut-off); this is exact (they add
nothing and get zero gradient) and keeps the differentiable pass small.
"""
from __future__ import annotations

import math

import torch
from gsplat.cuda._torch_impl import _persp_proj, _quat_scale_to_covar_preci, _world_to_cam
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0  # gsplat ALPHA_THRESHOLD
ALPHA_MAX = 0.999  # gsplat 1.5.3 clamp
T_MIN = 1e-4  # gsplat: a pixel is done once its transmittance would reach this
EXTEND = 3.33  # gsplat's maximal radius in standard deviations
LOG_ALPHA_MIN_INV = math.log(255.0)  # alpha >= 1/255  <=>  sigma - ln(opacity) <= ln(255)
LOG_T_MIN = math.log(T_MIN)


def project(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor, Ks: Tensor,
    width: int, height: int, near_plane: float, far_plane: float, radius_clip: float, eps2d: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Project N Gaussians into I cameras like gsplat's fused EWA projection (``packed=False``).

    Args: means [N, 3], quats [N, 4] (wxyz), scales [N, 3], opacities [N], viewmats [I, 4, 4]
    (world-to-camera), Ks [I, 3, 3].

    Returns: radii [I, N, 2] int32 (0 = culled), means2d [I, N, 2] (pixels), depths [I, N],
    conics [I, N, 3] (upper triangle of the inverse blurred 2D covariance).
    """
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    means_c, covars_c = _world_to_cam(means, covars, viewmats)  # [I, N, 3], [I, N, 3, 3]
    depths = means_c[..., 2]
    depth_ok = (depths >= near_plane) & (depths <= far_plane)
    # Culled Gaussians get a harmless depth so that no inf/NaN enters the graph.
    safe_z = torch.where(depth_ok, depths, torch.ones_like(depths))
    means_safe = torch.cat([means_c[..., :2], safe_z[..., None]], dim=-1)
    means2d, cov2d = _persp_proj(means_safe, covars_c, Ks, width, height)
    a = cov2d[..., 0, 0] + eps2d
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    det_ok = det > 0
    det = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    with torch.no_grad():
        op = opacities.detach().expand_as(depths)
        extend = torch.sqrt(2.0 * torch.log((op / ALPHA_MIN).clamp(min=1.0))).clamp(max=EXTEND)
        rx = torch.ceil(extend * torch.sqrt(a.clamp(min=0)))
        ry = torch.ceil(extend * torch.sqrt(c.clamp(min=0)))
        mx, my = means2d[..., 0], means2d[..., 1]
        keep = depth_ok & det_ok & (op >= ALPHA_MIN)
        keep &= (rx > radius_clip) | (ry > radius_clip)
        keep &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = (torch.stack([rx, ry], dim=-1) * keep[..., None]).to(torch.int32)
    return radii, means2d, depths, conics


@torch.no_grad()
def isect_tiles(
    means2d: Tensor, radii: Tensor, depths: Tensor, image_ids: Tensor,
    tile_size: int, tile_width: int, tile_height: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """List (image, tile, Gaussian) intersections sorted like gsplat's ``isect_tiles``.

    Args: means2d [M, 2], radii [M, 2], depths [M], image_ids [M] for the M projected entries
    (M = I * N image-major when not packed).

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
    span = tmax - tmin
    count = span[:, 0] * span[:, 1] * (radii > 0).all(dim=-1)
    entry = torch.repeat_interleave(torch.arange(len(count), device=dev), count)
    local = torch.arange(len(entry), device=dev) - (torch.cumsum(count, 0) - count)[entry]
    w = span[entry, 0]
    tile = (tmin[entry, 1] + local // w) * tile_width + tmin[entry, 0] + local % w
    depth_bits = depths.detach().float().contiguous().view(torch.int32).long() & 0xFFFFFFFF
    isect_ids = (image_ids[entry] << (32 + tile_bits)) | (tile << 32) | depth_bits[entry]
    isect_ids, order = torch.sort(isect_ids, stable=True)
    return count.to(torch.int32), isect_ids, entry[order]


def _groups(counts: list[int], pixels: int, budget: int) -> list[tuple[int, int]]:
    """Split tiles sorted by ascending list length into runs [i, j) of <= ``budget`` entries."""
    runs, i, n = [], 0, len(counts)
    while i < n:
        j = i + 1
        while j < n and (j + 1 - i) * pixels * counts[j] <= budget:
            j += 1
        runs.append((i, j))
        i = j
    return runs


def _composite(
    ids: Tensor, centres: Tensor, quad: Tensor, inside: Tensor, rows: Tensor,
    colors: Tensor | None, chunk: int,
) -> tuple[Tensor | None, Tensor, Tensor]:
    """Front-to-back compositing of padded depth-sorted lists for a batch of tiles.

    The Gaussian exponent minus log-opacity, ``s = sigma - ln(opacity)`` so that
    ``opacity * exp(-sigma) = exp(-s)``, is a quadratic in the pixel offset (u, v) from the tile
    centre; one batched matmul of the pixel monomials ``quad`` with six per-entry coefficients
    gives it for every (pixel, entry) pair (offsets stay small, so float32 keeps ~1e-6 relative).

    Args: ids [Tb, K] rows of ``rows`` (padding points at a row with log-opacity -1e4),
    centres [Tb, 2] tile centres, quad [P, 6] monomials (u^2, v^2, uv, u, v, 1) of the pixel
    centres, inside [Tb, P] (pixel within the image), rows [M+1, 6] per entry
    (mean x, mean y, conic a, b, c, log-opacity), colors [M+1, C] or None for the gradient-free
    pre-pass, chunk: list entries per step (the log-transmittance is carried across steps).

    Returns: colour [Tb, P, C] (None in the pre-pass), log transmittance [Tb, P], used [Tb, K]
    (entry adds alpha >= 1/255 to a pixel inside the image before that pixel's cut-off).
    """
    log_t = quad.new_zeros(inside.shape)
    log_t_all = torch.zeros_like(log_t)  # also counts cut-off entries: the cut-off is sticky
    out = None if colors is None else quad.new_zeros(inside.shape + (colors.shape[1],))
    used = torch.zeros_like(ids, dtype=torch.bool)
    for k0 in range(0, ids.shape[1], chunk):
        g = ids[:, k0 : k0 + chunk]
        mx, my, a, b, c, log_op = (rows[g] - torch.cat([centres, centres.new_zeros(len(g), 4)], 1)
                                   [:, None, :]).unbind(-1)  # each [Tb, k]
        coef = torch.stack([0.5 * a, 0.5 * c, b, -(a * mx + b * my), -(c * my + b * mx),
                            0.5 * (a * mx * mx + c * my * my) + b * mx * my - log_op], dim=1)
        s = torch.matmul(quad, coef)  # [Tb, P, k]
        keep = s <= LOG_ALPHA_MIN_INV
        alpha = torch.where(keep, torch.exp(-s), torch.zeros_like(s)).clamp(max=ALPHA_MAX)
        log1m = torch.log1p(-alpha)
        csum = torch.cumsum(log1m, dim=-1)
        incl_all = csum.detach() + log_t_all[..., None]  # log T ignoring the cut-off
        live = incl_all > LOG_T_MIN  # before the cut-off: monotone, so the cut-off is sticky
        if colors is None:
            # Keep the entry that triggers a pixel's cut-off too, so the pass with gradients
            # sees the same cut-off.
            reached = (incl_all - log1m) > LOG_T_MIN
            used[:, k0 : k0 + chunk] = (keep & reached & inside[..., None]).any(dim=1)
            if not bool((live[..., -1] & inside).any()):
                break  # every pixel of these tiles is done
        else:
            incl = csum + log_t[..., None]  # log T after each entry (exact where live)
            weights = torch.where(live, alpha * torch.exp(incl - log1m), 0.0)
            out = out + torch.matmul(weights, colors[g])
            log_t = log_t + torch.where(live, log1m, 0.0).sum(dim=-1)
        log_t_all = incl_all[..., -1]
    return out, log_t, used


def rasterize_tiles(
    means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, isect_ids: Tensor,
    flatten_ids: Tensor, n_images: int, width: int, height: int, tile_size: int, budget: int,
) -> tuple[Tensor, Tensor]:
    """Composite sorted tile lists into images (differentiable w.r.t. the attribute rows).

    Args: means2d [M, 2], conics [M, 3], opacities [M], colors [M, C]; isect_ids / flatten_ids
    from :func:`isect_tiles`; budget: max pixel x list entries per step.

    Returns: colours [I, H, W, C] without background, transmittance [I, H, W, 1].
    """
    dev, dtype = means2d.device, means2d.dtype
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles, n_px = tw * th, tile_size * tile_size
    tile_bits = n_tiles.bit_length()
    key = isect_ids >> 32
    tile_of = (key >> tile_bits) * n_tiles + (key & ((1 << tile_bits) - 1))  # [n_isects]

    # Per-entry rows (mean x, mean y, conic a, b, c, log-opacity) plus the padding row.
    log_op = torch.log(opacities.clamp(min=1e-30))
    rows = torch.cat([means2d, conics, log_op[:, None]], dim=1)
    pad_row = rows.new_tensor([[0.0, 0.0, 0.0, 0.0, 0.0, -1e4]])
    rows = torch.cat([rows, pad_row])
    col = torch.cat([colors, colors.new_zeros((1, colors.shape[1]))])
    pad = len(means2d)
    gy, gx = torch.meshgrid(torch.arange(tile_size, device=dev), torch.arange(tile_size, device=dev),
                            indexing="ij")
    grid = torch.stack([gx.flatten(), gy.flatten()], dim=-1)  # [P, 2] pixel offsets in a tile
    u, v = ((grid + 0.5) - tile_size / 2).to(dtype).unbind(-1)  # pixel centre - tile centre
    quad = torch.stack([u * u, v * v, u * v, u, v, torch.ones_like(u)], dim=-1)  # [P, 6]

    def batches(tile_of: Tensor, flat: Tensor, grad: bool):
        counts = torch.bincount(tile_of, minlength=n_images * n_tiles)
        offsets = torch.cumsum(counts, 0) - counts
        tiles = torch.nonzero(counts).flatten()
        tiles = tiles[torch.argsort(counts[tiles], stable=True)]
        ordered = counts[tiles].tolist()
        for i, j in _groups(ordered, n_px, budget):
            t, k = tiles[i:j], ordered[j - 1]
            ar = torch.arange(k, device=dev)
            pos = offsets[t][:, None] + ar
            ids = torch.where(ar < counts[t][:, None], flat[pos.clamp(max=len(flat) - 1)], pad)
            tile_xy = torch.stack([(t % n_tiles) % tw, (t % n_tiles) // tw], dim=-1)
            pix = tile_xy[:, None, :] * tile_size + grid  # [Tb, P, 2]
            inside = (pix[..., 0] < width) & (pix[..., 1] < height)
            centres = (tile_xy * tile_size + tile_size / 2).to(dtype)
            chunk = max(1, budget // (len(t) * n_px))
            yield t, pos, _composite(ids, centres, quad, inside, rows, col if grad else None, chunk)

    # Gradient-free pre-pass: keep only list entries that reach a pixel.
    keep = torch.zeros(len(flatten_ids), dtype=torch.bool, device=dev)
    with torch.no_grad():
        for t, pos, (_, _, used) in batches(tile_of, flatten_ids, grad=False):
            keep[pos[used]] = True
    tile_of, flatten_ids = tile_of[keep], flatten_ids[keep]

    out = means2d.new_zeros((n_images * n_tiles, n_px, colors.shape[1]))
    log_t = means2d.new_zeros((n_images * n_tiles, n_px))
    parts = list(batches(tile_of, flatten_ids, grad=True))
    if parts:
        idx = torch.cat([t for t, _, _ in parts])
        out = out.index_copy(0, idx, torch.cat([r[0] for _, _, r in parts]))
        log_t = log_t.index_copy(0, idx, torch.cat([r[1] for _, _, r in parts]))

    def image(x: Tensor) -> Tensor:  # [I * tiles, P, C] -> [I, H, W, C]
        x = x.reshape(n_images, th, tw, tile_size, tile_size, -1).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n_images, th * tile_size, tw * tile_size, -1)[:, :height, :width]

    return image(out), image(torch.exp(log_t)[..., None])
