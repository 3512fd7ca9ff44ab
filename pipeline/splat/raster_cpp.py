"""The compiled CPU compositing kernel (``csrc/composite.cpp``): build, load, autograd.

The torch backend (:mod:`pipeline.splat.raster_torch`) evaluates every (pixel, list entry) pair
of a tile batch as dense tensors; this kernel walks each pixel's depth-sorted list front to back
in C++ (OpenMP over tiles, torch's thread count) and stops where gsplat stops, so a pair beyond a
pixel's cut-off or below alpha 1/255 costs one exponent. Same maths, same inputs and outputs as
:func:`pipeline.splat.raster_torch.rasterize_tiles`; the backward is the usual back-to-front
recursion from the final transmittance.

:func:`kernel` builds the extension on first use with torch's C++ toolchain (``g++`` and
``ninja``; about a minute, cached in ``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``;
``make install`` builds it) and returns None, after one warning, when that is impossible: the
rasterizer then uses the torch backend.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipeline.splat.tiles import tile_index

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("csrc") / "composite.cpp"


@functools.cache
def kernel() -> Any | None:
    """The compiled extension module, or None (with one warning) when it cannot be built."""
    from torch.utils import cpp_extension

    try:
        return cpp_extension.load(
            name="m3_composite",
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, a failed build: all mean "use torch"
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        log.warning(
            "the compiled CPU rasterizer is unavailable (%s): using the torch backend (slower); install g++ "
            "and ninja (pip install ninja), then `python -c 'from pipeline.splat.raster_cpp import kernel; kernel()'`",
            first[:200],
        )
        return None


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, *grid: Any) -> Any:
        offsets, ids, width, height, tile, tw, th = grid
        args = [t.contiguous() for t in (means2d, conics, opacities, colors)]
        out, trans, last = kernel().forward(*args, offsets, ids, width, height, tile, tw, th)
        ctx.save_for_backward(*args, offsets, ids, trans, last)
        ctx.grid = (width, height, tile, tw, th)
        ctx.mark_non_differentiable(last)
        return out, trans, last

    @staticmethod
    def backward(ctx: Any, v_out: Tensor, v_trans: Tensor, _: Tensor) -> Any:
        means2d, conics, opacities, colors, offsets, ids, trans, last = ctx.saved_tensors
        grads = kernel().backward(
            means2d, conics, opacities, colors, offsets, ids, *ctx.grid, trans, last,
            v_out.contiguous(), v_trans.contiguous(),
        )  # fmt: skip
        return (*grads, *([None] * 7))


def rasterize_tiles(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    colors: Tensor,
    isect_ids: Tensor,
    flatten_ids: Tensor,
    n_images: int,
    width: int,
    height: int,
    tile_size: int,
) -> tuple[Tensor, Tensor]:
    """:func:`pipeline.splat.raster_torch.rasterize_tiles` on the compiled kernel (no ``budget``:
    memory is the outputs). Returns colours [I, H, W, C] without background and transmittance
    [I, H, W, 1]."""
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles = tw * th
    counts = torch.bincount(tile_index(isect_ids, n_tiles), minlength=n_images * n_tiles)
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    out, trans, _ = _Composite.apply(
        means2d, conics, opacities, colors, offsets, flatten_ids.contiguous(), width, height, tile_size, tw, th
    )
    return out, trans[..., None]
