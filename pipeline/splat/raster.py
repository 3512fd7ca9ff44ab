"""One rasterization entry point for 3D Gaussians, on CUDA (gsplat) or CPU (plain torch).

:func:`rasterize` has the signature and conventions of ``gsplat.rasterization`` (gsplat 1.5.3,
pinhole, classic mode, ``sh_degree=None``: colours are post-activation values of any channel
count) and returns the same ``meta`` keys, so gsplat's ``DefaultStrategy`` densifies from either
backend: ``meta["means2d"].retain_grad()`` before ``backward()`` gives the pixel-space gradient
of the projected means ([B, N, 2]; the strategy scales it by width/2 * n_cameras),
``meta["radii"]`` ([B, N, 2] int32, 0 = culled) selects the visible Gaussians.

Backends: ``"gsplat"`` calls ``gsplat.rasterization`` (needs CUDA tensors and gsplat's compiled
CUDA extension); ``"torch"`` runs :mod:`pipeline.splat.raster_torch` on any device with an autograd
backward (same maths; differences are rounding-level, listed there). ``"auto"`` picks gsplat for
CUDA tensors when its extension is built and torch otherwise (:func:`resolve_backend`: one warning
saying how to build gsplat when it falls back).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from pipeline.core.errors import M3Error
from pipeline.splat import raster_torch
from pipeline.splat.tiles import TileLists, isect_tiles, tile_index

log = logging.getLogger(__name__)

Backend = Literal["auto", "cpp", "torch", "gsplat"]
DEFAULT_BUDGET = 1 << 22  # torch backend: pixel x list entries evaluated per step
DEFAULT_TILE = {"gsplat": 16, "cpp": 8, "torch": 8}  # measured fastest for each backend
GSPLAT_BUILD = (
    "build it once with the CUDA toolkit matching torch (CUDA 13): CUDA_HOME=/usr/local/cuda "
    "TORCH_CUDA_ARCH_LIST=<your GPU, e.g. 9.0> MAX_JOBS=<cores> python -c 'from gsplat.cuda._backend import _C' "
    "(minutes on a large machine, about 25 min on 2 cores; README: On a GPU)"
)


@functools.cache
def gsplat_cuda() -> str | None:
    """None when gsplat's compiled CUDA extension loads, else why not (importing it may JIT-build it)."""
    try:
        from gsplat.cuda import _backend
    except Exception as exc:  # a failed JIT build raises whatever the compiler step raised
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None if _backend._C is not None else "no compiled module (no CUDA toolkit found, or its build failed)"


@functools.cache
def _warn_fallback(why: str) -> None:
    log.warning("gsplat's CUDA rasterizer is unavailable (%s): using the torch backend (slower); %s", why, GSPLAT_BUILD)


def resolve_backend(backend: str, device: torch.device | str) -> Literal["cpp", "torch", "gsplat"]:
    """The rasterizer that runs for ``backend`` (auto | cpp | torch | gsplat) on ``device``.

    ``auto`` is gsplat on CUDA when its extension is built, else torch (warning once), and on the
    CPU the compiled kernel (:mod:`pipeline.splat.raster_cpp`) when it builds, else torch (warning
    once). ``gsplat`` without CUDA or without its built extension, and ``cpp`` off the CPU, are
    :class:`M3Error` saying how to fix it.
    """
    if backend not in ("auto", *DEFAULT_TILE):
        raise ValueError(f"rasterize: unknown backend '{backend}'; use 'auto', 'cpp', 'torch' or 'gsplat'")
    cuda = torch.device(device).type == "cuda"
    if backend == "torch":
        return "torch"
    if not cuda and backend in ("auto", "cpp"):
        from pipeline.splat.raster_cpp import kernel

        if kernel() is not None:
            return "cpp"
        if backend == "cpp":
            raise M3Error("train.backend: the compiled CPU rasterizer does not build here (see the warning); set auto")
        return "torch"
    if backend == "cpp":
        raise M3Error("train.backend: cpp is the CPU rasterizer; on CUDA set backend: auto or gsplat")
    if not cuda:
        raise M3Error("train.backend: gsplat needs CUDA (the Gaussians are on the CPU); set backend: auto or torch")
    why = gsplat_cuda()
    if why is None:
        return "gsplat"
    if backend == "gsplat":
        raise M3Error(f"train.backend: gsplat's CUDA extension is unavailable ({why}); {GSPLAT_BUILD}; or set auto")
    _warn_fallback(why)
    return "torch"


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    backend: Backend = "auto",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    tile_size: int | None = None,
    backgrounds: Tensor | None = None,
    packed: bool = False,
    budget: int = DEFAULT_BUDGET,
    tiles: Literal["box", "ellipse"] = "ellipse",
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render N Gaussians into B cameras (pinhole, classic 3DGS compositing).

    Args:
        means: [N, 3] world positions.
        quats: [N, 4] rotations, wxyz, need not be normalised.
        scales: [N, 3] linear (not log) standard deviations.
        opacities: [N] in [0, 1].
        colors: [N, C] or [B, N, C] values to composite, any C (RGB, queries, ...).
        viewmats: [B, 4, 4] world-to-camera (COLMAP / OpenCV axes).
        Ks: [B, 3, 3] intrinsics in pixels of the (width, height) image.
        width, height: output size in pixels.
        backend: "gsplat" (CUDA), "torch" (CPU or any device) or "auto" (:func:`resolve_backend`).
        near_plane, far_plane: depth culling range.
        radius_clip: Gaussians whose 2D radii are both <= this (pixels) are skipped.
        eps2d: blur added to the 2D covariance diagonal (pixels^2).
        tile_size: tile edge in pixels (may exceed the image); None = the backend's fastest
            (gsplat 16; torch 8, about 2x faster than 16 on CPU for 50k small Gaussians).
        backgrounds: [B, C] colour behind the Gaussians, or None (black).
        packed: gsplat's packed layout of the per-Gaussian meta ([nnz, ...] plus
            "camera_ids"/"gaussian_ids") instead of [B, N, ...].
        budget: torch backend only, pixel x list entries per step (bounds memory).
        tiles: CPU backends, which tiles list a Gaussian: every tile of its bounding box
            ("box", gsplat) or only those holding a pixel centre inside its alpha >= 1/255
            ellipse ("ellipse": the same image, shorter lists; :mod:`pipeline.splat.tiles`).

    Returns:
        render_colors [B, H, W, C], render_alphas [B, H, W, 1], meta (gsplat's keys: "means2d",
        "radii", "depths", "conics", "opacities", "gaussian_ids", "camera_ids", "batch_ids",
        "width", "height", "tile_size", "tile_width", "tile_height", "n_cameras", "n_batches",
        "tiles_per_gauss", "isect_ids", "flatten_ids", "isect_offsets").
    """
    gaussians = (means, quats, scales, opacities, colors, viewmats, Ks)
    _check_shapes(gaussians, backgrounds)
    backend = resolve_backend(backend, means.device)
    tile_size = tile_size or DEFAULT_TILE[backend]
    projection = {"near_plane": near_plane, "far_plane": far_plane, "radius_clip": radius_clip, "eps2d": eps2d}
    if backend == "gsplat":
        from gsplat import rasterization

        return rasterization(
            *gaussians, width, height, **projection, packed=packed, tile_size=tile_size, backgrounds=backgrounds
        )
    compositor = _compiled if backend == "cpp" else functools.partial(raster_torch.rasterize_tiles, budget=budget)
    return _rasterize_cpu(
        gaussians, width, height, projection, tile_size, backgrounds, packed, compositor, tiles == "ellipse"
    )


def _compiled(*args: Any) -> tuple[Tensor, Tensor]:
    from pipeline.splat import raster_cpp

    return raster_cpp.rasterize_tiles(*args)


def _check_shapes(gaussians: tuple[Tensor, ...], backgrounds: Tensor | None) -> None:
    means, quats, scales, opacities, colors, viewmats, Ks = gaussians
    n, b = means.shape[0], viewmats.shape[0]
    expected = {
        "means": (means, (n, 3)),
        "quats": (quats, (n, 4)),
        "scales": (scales, (n, 3)),
        "opacities": (opacities, (n,)),
        "viewmats": (viewmats, (b, 4, 4)),
        "Ks": (Ks, (b, 3, 3)),
    }
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"rasterize: {name} has shape {tuple(t.shape)}, expected {shape}; fix the caller")
    if colors.dim() not in (2, 3) or colors.shape[-2] != n or (colors.dim() == 3 and colors.shape[0] != b):
        raise ValueError(
            f"rasterize: colors has shape {tuple(colors.shape)}, expected [N, C] or "
            f"[B, N, C] with N={n}, B={b}; fix the caller"
        )
    if backgrounds is not None and tuple(backgrounds.shape) != (b, colors.shape[-1]):
        raise ValueError(
            f"rasterize: backgrounds has shape {tuple(backgrounds.shape)}, expected "
            f"{(b, colors.shape[-1])}; fix the caller"
        )


def _rasterize_cpu(
    gaussians: tuple[Tensor, ...],
    width: int,
    height: int,
    projection: dict[str, float],
    tile_size: int,
    backgrounds: Tensor | None,
    packed: bool,
    compositor: Callable[..., tuple[Tensor, Tensor]],
    exact_tiles: bool,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """The torch and cpp backends of :func:`rasterize` (same arguments and results): projection
    and tile lists in torch, compositing by ``compositor`` (torch or the compiled kernel)."""
    means, quats, scales, opacities, colors, viewmats, Ks = gaussians
    n, b = means.shape[0], viewmats.shape[0]
    radii, means2d, depths, conics = raster_torch.project(
        means, quats, scales, opacities, viewmats, Ks, width, height, **projection
    )
    opac = opacities[None].expand(b, n)
    cols = colors if colors.dim() == 3 else colors[None].expand(b, n, colors.shape[-1])
    camera_ids: Tensor | None
    gaussian_ids: Tensor | None
    rows: tuple[Tensor, ...]
    if packed:  # one row per visible (camera, Gaussian) pair
        camera_ids, gaussian_ids = torch.nonzero((radii > 0).all(dim=-1), as_tuple=True)
        radii, means2d, depths, conics, opac, cols = (
            t[camera_ids, gaussian_ids] for t in (radii, means2d, depths, conics, opac, cols)
        )
        rows = (means2d, conics, opac, cols, radii, depths, camera_ids)
    else:  # one row per (camera, Gaussian), camera-major
        camera_ids = gaussian_ids = None
        image_of = torch.arange(b, device=means.device).repeat_interleave(n)
        rows = tuple(t.flatten(0, 1) for t in (means2d, conics, opac, cols, radii, depths))
        rows = rows + (image_of,)
    m2d, con, opa, col, rad, dep, img = rows
    tw, th = -(-width // tile_size), -(-height // tile_size)
    ellipse = (con, opa, width, height) if exact_tiles else None
    tiles_per_gauss, isect_ids, flatten_ids = isect_tiles(m2d, rad, dep, img, tile_size, tw, th, ellipse)
    lists = TileLists(isect_ids, flatten_ids, b, width, height, tile_size)
    render_colors, transmittance = compositor(m2d, con, opa, col, lists)
    if backgrounds is not None:
        render_colors = render_colors + transmittance * backgrounds[:, None, None, :]
    counts = torch.bincount(tile_index(isect_ids, tw * th), minlength=b * tw * th)
    meta = {
        "batch_ids": None if camera_ids is None else torch.zeros_like(camera_ids),  # None unless packed
        "camera_ids": camera_ids,
        "gaussian_ids": gaussian_ids,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opac,
        "tile_width": tw,
        "tile_height": th,
        "tiles_per_gauss": tiles_per_gauss if packed else tiles_per_gauss.reshape(b, n),
        "isect_ids": isect_ids,
        "flatten_ids": flatten_ids.to(torch.int32),
        "isect_offsets": (torch.cumsum(counts, 0) - counts).to(torch.int32).reshape(b, th, tw),
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_batches": 1,
        "n_cameras": b,
    }
    return render_colors, 1.0 - transmittance, meta
