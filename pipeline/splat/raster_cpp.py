"""The compiled CPU compositing kernel (``csrc/composite.cpp``): build, load, autograd.

The torch backend (:mod:`pipeline.splat.raster_torch`) evaluates every (pixel, list entry) pair
of a tile batch as dense tensors; this kernel walks each pixel's depth-sorted list front to back
in C++ (OpenMP over tiles, torch's thread count) and stops where gsplat stops, so a pair beyond a
pixel's cut-off or below alpha 1/255 costs one exponent. Same maths, same inputs and outputs as
:func:`pipeline.splat.raster_torch.rasterize_tiles`; the backward is the usual back-to-front
recursion from the final transmittance.

:func:`kernel` builds the extension on first use with torch's C++ toolchain (``g++`` and
``ninja``; about a minute of CPU, cached in ``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``
under a name hashing the source and torch, so every checkout of the same code shares one build;
``make install`` builds it) and returns None, after one warning, when that is impossible: the
rasterizer then uses the torch backend.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipeline.splat.tiles import TileLists

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("csrc") / "composite.cpp"


def build_directory() -> Path:
    """Where the kernel is built: named by the source's and torch's hashes, so that every checkout,
    clone or worktree of the same code shares one build and a changed source or torch gets its own."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    key = hashlib.sha256(SOURCE.read_bytes() + torch.__file__.encode() + torch.__version__.encode())
    return Path(root) / f"m3_composite_{key.hexdigest()[:12]}"


@functools.cache
def kernel() -> Any | None:
    """The compiled extension module, or None (with one warning) when it cannot be built."""
    # importing it looks for a CUDA toolkit and warns when it finds one without a GPU: not ours to say
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    try:
        folder = build_directory()
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / SOURCE.name  # a copy: the build records the source path, which differs by checkout
        if not source.is_file() or source.read_bytes() != SOURCE.read_bytes():
            shutil.copyfile(SOURCE, source)
        return cpp_extension.load(
            name=folder.name,
            sources=[str(source)],
            build_directory=str(folder),
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


def _loaded() -> Any:
    """The compiled extension, which the callers of :func:`rasterize_tiles` have checked builds."""
    ext = kernel()
    if ext is None:
        raise RuntimeError("the compiled CPU rasterizer is unavailable; use the torch backend")
    return ext


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, *grid: Any) -> Any:
        offsets, ids, width, height, tile, tw, th = grid
        args = [t.contiguous() for t in (means2d, conics, opacities, colors)]
        out, trans, last = _loaded().forward(*args, offsets, ids, width, height, tile, tw, th)
        ctx.save_for_backward(*args, offsets, ids, trans, last)
        ctx.grid = (width, height, tile, tw, th)
        ctx.mark_non_differentiable(last)
        return out, trans, last

    @staticmethod
    def backward(ctx: Any, v_out: Tensor, v_trans: Tensor, _: Tensor) -> Any:
        means2d, conics, opacities, colors, offsets, ids, trans, last = ctx.saved_tensors
        grads = _loaded().backward(
            means2d, conics, opacities, colors, offsets, ids, *ctx.grid, trans, last,
            v_out.contiguous(), v_trans.contiguous(),
        )  # fmt: skip
        return (*grads, *([None] * 7))


def rasterize_tiles(
    means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, lists: TileLists
) -> tuple[Tensor, Tensor]:
    """:func:`pipeline.splat.raster_torch.rasterize_tiles` on the compiled kernel (no ``budget``:
    memory is the outputs). Returns colours [I, H, W, C] without background and transmittance
    [I, H, W, 1]."""
    width, height, tile = lists.width, lists.height, lists.tile_size
    grid = (lists.offsets(), lists.flatten_ids.contiguous(), width, height, tile, -(-width // tile), -(-height // tile))
    out, trans, _ = _Composite.apply(means2d, conics, opacities, colors, *grid)
    return out, trans[..., None]
