"""CPU rasterizer in plain torch ops, following gsplat 1.5.3's CUDA kernels; autograd backward.

Used by :func:`pipeline.raster.rasterize` with ``backend="torch"``. Steps:

1. :func:`project` (gsplat ``fully_fused_projection``, pinhole EWA): world-to-camera, Jacobian
   with gsplat's 1.3x-FOV clamp, ``eps2d`` added to the 2D covariance, conic = its inverse.
   Culled (radii 0): depth outside ``[near_plane, far_plane]``, det <= 0, opacity < 1/255, both
   radii <= ``radius_clip``, or the box entirely outside the image. Radius per axis is
   ``ceil(extend * sqrt(cov2d[i, i]))`` with gsplat's opacity-aware
   ``extend = min(3.33, sqrt(2 ln(255 opacity)))``: the tight box of the alpha >= 1/255 ellipse.
2. :func:`pipeline.splat.tiles.isect_tiles` (gsplat ``isect_tiles``): per-tile depth-sorted lists.
3. :func:`rasterize_tiles` (gsplat ``rasterize_to_pixels``): tiles are grouped by list length
   into padded ``[tiles, K]`` id lists; at pixel centres (x + 0.5, y + 0.5)
   ``alpha = min(0.999, opacity exp(-sigma))`` (gsplat 1.5.3 clamps at 0.999, not 0.99),
   entries with alpha < 1/255 skipped; transmittance = exp of the exclusive cumulative sum of
   log(1 - alpha); a pixel stops before the first entry that would bring its transmittance
   to <= 1e-4 (gsplat's exclusive cut-off). Colour = sum(alpha T c); the caller adds T bg.

Memory and time: ``budget`` bounds pixel x entries per step; long lists are split into chunks
that carry the log-transmittance, so a tile's list length is not capped. A gradient-free
pre-pass drops entries that reach no pixel of their tile (alpha < 1/255 everywhere, or all its
pixels already cut off), which is exact and leaves the autograd pass a fraction of the entries.

Differences from gsplat CUDA, all rounding-level: transmittance is a sum of logs rather than a
running product; gsplat also skips a pixel-entry pair whose exponent is negative, which only
rounding can produce (conics are positive definite) and which is not replicated here;
``means2d``/``depths``/``conics`` of culled Gaussians hold their projection rather than zeros.
"""

from __future__ import annotations

import math

import torch
from gsplat.cuda._torch_impl import _persp_proj, _quat_scale_to_covar_preci, _world_to_cam
from torch import Tensor

from pipeline.splat.tiles import TileLists, tile_index

ALPHA_MIN = 1.0 / 255.0  # gsplat ALPHA_THRESHOLD
ALPHA_MAX = 0.999  # gsplat 1.5.3 clamp
T_MIN = 1e-4  # gsplat: a pixel is done once its transmittance would reach this
EXTEND = 3.33  # gsplat's maximal radius in standard deviations
LOG_ALPHA_MIN_INV = math.log(255.0)  # alpha >= 1/255  <=>  sigma - ln(opacity) <= ln(255)
LOG_T_MIN = math.log(T_MIN)


def project(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor, Ks: Tensor, width: int,
    height: int, near_plane: float, far_plane: float, radius_clip: float, eps2d: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
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


def _exponent(g: Tensor, centres: Tensor, quad: Tensor, rows: Tensor) -> Tensor:
    """``s = sigma - ln(opacity)`` (so ``opacity * exp(-sigma) = exp(-s)``) for list entries.

    ``s`` is a quadratic in the pixel offset (u, v) from the tile centre, so one batched matmul
    of the pixel monomials with six per-entry coefficients evaluates every (pixel, entry) pair
    (offsets stay within a tile, which keeps float32 cancellation small).

    Args: g [Tb, k] rows of ``rows`` [M+1, 6] (mean x, mean y, conic a, b, c, log-opacity),
    centres [Tb, 2] tile centres, quad [P, 6] monomials (u^2, v^2, uv, u, v, 1).

    Returns: s [Tb, P, k].
    """
    shift = torch.cat([centres, centres.new_zeros(len(centres), 4)], dim=1)[:, None, :]
    mx, my, a, b, c, log_op = (rows[g] - shift).unbind(-1)  # each [Tb, k]
    coef = torch.stack(
        [
            0.5 * a,
            0.5 * c,
            b,
            -(a * mx + b * my),
            -(c * my + b * mx),
            0.5 * (a * mx * mx + c * my * my) + b * mx * my - log_op,
        ],
        dim=1,
    )
    return torch.matmul(quad, coef)


def _log1m_alpha(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """alpha = min(0.999, exp(-s)), zeroed below 1/255; returns (keep, alpha, log(1 - alpha))."""
    keep = s <= LOG_ALPHA_MIN_INV
    alpha = torch.where(keep, torch.exp(-s), 0.0).clamp(max=ALPHA_MAX)
    return keep, alpha, torch.log1p(-alpha)


@torch.no_grad()
def _used_entries(
    ids: Tensor,
    lengths: Tensor,
    centres: Tensor,
    quad: Tensor,
    inside: Tensor,
    rows: Tensor,
    budget: int,
) -> Tensor:
    """Gradient-free pre-pass: which list entries reach a pixel of their tile.

    An entry is used if it has alpha >= 1/255 at a pixel inside the image that is not done yet
    (this includes the entry that triggers the pixel's cut-off, so the differentiable pass sees
    the same cut-off). Tiles drop out once their pixels are all done or their list ends.

    Args: ids [Tb, K], lengths [Tb] list lengths (the rest is padding), centres [Tb, 2],
    quad [P, 6], inside [Tb, P], rows [M+1, 6] (see :func:`_exponent`), budget: pixel x entries
    per step.

    Returns: used [Tb, K] bool.
    """
    used = torch.zeros_like(ids, dtype=torch.bool)
    active = torch.arange(len(ids), device=ids.device)
    log_t = quad.new_zeros(inside.shape)  # log transmittance, ignoring the cut-off
    k0 = 0
    while k0 < ids.shape[1] and len(active):
        chunk = max(1, budget // (len(active) * len(quad)))
        keep, _, log1m = _log1m_alpha(_exponent(ids[active, k0 : k0 + chunk], centres[active], quad, rows))
        incl = torch.cumsum(log1m, dim=-1) + log_t[..., None]
        reached = (incl - log1m) > LOG_T_MIN
        used[active, k0 : k0 + chunk] = (keep & reached & inside[active, :, None]).any(dim=1)
        log_t = incl[..., -1]
        k0 += chunk
        alive = ((log_t > LOG_T_MIN) & inside[active]).any(dim=1) & (lengths[active] > k0)
        active, log_t = active[alive], log_t[alive]
    return used


def _composite(
    ids: Tensor, centres: Tensor, quad: Tensor, rows: Tensor, colors: Tensor, chunk: int
) -> tuple[Tensor, Tensor]:
    """Differentiable front-to-back compositing of padded depth-sorted lists for a tile batch.

    Transmittance is the exclusive cumulative sum of log(1 - alpha), carried across chunks of
    ``chunk`` entries; a pixel stops before the first entry that would bring it to <= 1e-4
    (the cut-off ignores later entries, so it is sticky, as in gsplat).

    Args: ids [Tb, K], centres [Tb, 2], quad [P, 6], rows [M+1, 6] (see :func:`_exponent`),
    colors [M+1, C].

    Returns: colour [Tb, P, C], log transmittance [Tb, P].
    """
    log_t = quad.new_zeros((len(ids), len(quad)))
    log_t_all = torch.zeros_like(log_t)  # also counting entries past the cut-off
    out = quad.new_zeros((len(ids), len(quad), colors.shape[1]))
    for k0 in range(0, ids.shape[1], chunk):
        g = ids[:, k0 : k0 + chunk]
        _, alpha, log1m = _log1m_alpha(_exponent(g, centres, quad, rows))
        csum = torch.cumsum(log1m, dim=-1)
        incl_all = csum.detach() + log_t_all[..., None]
        live = incl_all > LOG_T_MIN  # monotone in k: once cut off, always cut off
        incl = csum + log_t[..., None]  # log T after each entry (exact where live)
        weights = torch.where(live, alpha * torch.exp(incl - log1m), 0.0)
        out = out + torch.matmul(weights, colors[g])
        log_t = log_t + torch.where(live, log1m, 0.0).sum(dim=-1)
        log_t_all = incl_all[..., -1]
    return out, log_t


def rasterize_tiles(
    means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, lists: TileLists, budget: int
) -> tuple[Tensor, Tensor]:
    """Composite sorted tile lists into images (differentiable w.r.t. the attribute rows).

    Args: means2d [M, 2], conics [M, 3], opacities [M], colors [M, C]; ``lists`` from
    :func:`pipeline.splat.tiles.isect_tiles`; budget: max pixel x list entries per step.

    Returns: colours [I, H, W, C] without background, transmittance [I, H, W, 1].
    """
    isect_ids, flatten_ids, n_images, width, height, tile_size = lists
    dev, dtype = means2d.device, means2d.dtype
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles, n_px = tw * th, tile_size * tile_size
    tile_of = tile_index(isect_ids, n_tiles)

    # Per-entry rows (mean x, mean y, conic a, b, c, log-opacity) plus the padding row.
    log_op = torch.log(opacities.clamp(min=1e-30))
    rows = torch.cat([means2d, conics, log_op[:, None]], dim=1)
    pad_row = rows.new_tensor([[0.0, 0.0, 0.0, 0.0, 0.0, -1e4]])
    rows = torch.cat([rows, pad_row])
    col = torch.cat([colors, colors.new_zeros((1, colors.shape[1]))])
    pad = len(means2d)
    ar = torch.arange(tile_size, device=dev)
    gy, gx = torch.meshgrid(ar, ar, indexing="ij")
    grid = torch.stack([gx.flatten(), gy.flatten()], dim=-1)  # [P, 2] pixel offsets in a tile
    u, v = ((grid + 0.5) - tile_size / 2).to(dtype).unbind(-1)  # pixel centre - tile centre
    quad = torch.stack([u * u, v * v, u * v, u, v, torch.ones_like(u)], dim=-1)  # [P, 6]

    def batches(tile_of: Tensor, flat: Tensor, prepass: bool):
        """Yield (tiles, list positions, ids, lengths, centres, inside) for groups of tiles of
        similar list lengths: a pre-pass group starts with >= 32 entries per step, others hold
        at most ``budget`` pixel x entries."""
        counts = torch.bincount(tile_of, minlength=n_images * n_tiles)
        offsets = torch.cumsum(counts, 0) - counts
        tiles = torch.nonzero(counts).flatten()
        tiles = tiles[torch.argsort(counts[tiles], stable=True)]
        ordered = counts[tiles].tolist()
        size = max(1, budget // (32 * n_px))
        runs = [(i, min(i + size, len(ordered))) for i in range(0, len(ordered), size)]
        for i, j in runs if prepass else _groups(ordered, n_px, budget):
            t, k = tiles[i:j], ordered[j - 1]
            ar = torch.arange(k, device=dev)
            pos = offsets[t][:, None] + ar
            ids = torch.where(ar < counts[t][:, None], flat[pos.clamp(max=len(flat) - 1)], pad)
            tile_xy = torch.stack([(t % n_tiles) % tw, (t % n_tiles) // tw], dim=-1)
            pix = tile_xy[:, None, :] * tile_size + grid  # [Tb, P, 2]
            inside = (pix[..., 0] < width) & (pix[..., 1] < height)
            centres = (tile_xy * tile_size + tile_size / 2).to(dtype)
            yield t, pos, ids, counts[t], centres, inside

    # Pre-pass: keep only list entries that reach a pixel (exact, see _used_entries).
    keep = torch.zeros(len(flatten_ids), dtype=torch.bool, device=dev)
    for _, pos, ids, lengths, centres, inside in batches(tile_of, flatten_ids, prepass=True):
        used = _used_entries(ids, lengths, centres, quad, inside, rows.detach(), budget)
        keep[pos[used]] = True
    tile_of, flatten_ids = tile_of[keep], flatten_ids[keep]

    out = means2d.new_zeros((n_images * n_tiles, n_px, colors.shape[1]))
    log_t = means2d.new_zeros((n_images * n_tiles, n_px))
    idx, outs, log_ts = [], [], []
    for t, _, ids, _, centres, _ in batches(tile_of, flatten_ids, prepass=False):
        o, lt = _composite(ids, centres, quad, rows, col, max(1, budget // (len(t) * n_px)))
        idx.append(t)
        outs.append(o)
        log_ts.append(lt)
    if idx:
        out = out.index_copy(0, torch.cat(idx), torch.cat(outs))
        log_t = log_t.index_copy(0, torch.cat(idx), torch.cat(log_ts))

    def image(x: Tensor) -> Tensor:  # [I * tiles, P, C] -> [I, H, W, C]
        x = x.reshape(n_images, th, tw, tile_size, tile_size, -1).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n_images, th * tile_size, tw * tile_size, -1)[:, :height, :width]

    return image(out), image(torch.exp(log_t)[..., None])
