"""3D Gaussian parameters: initialisation from sparse points, colours from SH, PLY import/export.

Parameters live in a ``torch.nn.ParameterDict`` (gsplat's ``DefaultStrategy`` layout), one entry
per quantity, so densification clones, splits and prunes every entry alike — the per-model
principal queries are just more entries::

    means [N, 3]        world positions
    quats [N, 4]        rotations, wxyz (unnormalised)
    scales [N, 3]       log standard deviations
    opacities [N]       logits
    sh0 [N, 1, 3]       SH DC coefficients
    shN [N, K-1, 3]     higher SH bands, K = (sh_degree + 1)^2
    q_<model> [N, l_m]  principal query (or distillation latent) of each model

The PLY is the standard 3DGS layout (x y z nx ny nz f_dc_* f_rest_* opacity scale_* rot_*, SH
rest channel-major) that common splat viewers read, plus ``q_<model>_<k>`` float properties.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from pipeline.core.errors import M3Error

if TYPE_CHECKING:
    from pipeline.splat.raster import Backend

SH_C0 = 0.28209479177387814
QUERY_PREFIX = "q_"
Params = dict[str, Tensor] | torch.nn.ParameterDict
"""The Gaussians' entries by name (the layout above): the trainer's ``ParameterDict`` or a plain dict."""


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """DC coefficient of a colour in [0, 1]: ``[..., 3]``."""
    return (rgb - 0.5) / SH_C0


def knn_scale(xyz: np.ndarray, k: int = 3) -> np.ndarray:
    """Mean distance of each point to its ``k`` nearest neighbours ``[P]`` (floored)."""
    from scipy.spatial import cKDTree

    if len(xyz) <= 1:
        return np.full(len(xyz), 0.01)
    k = min(k, len(xyz) - 1)
    dist, _ = cKDTree(xyz).query(xyz, k=k + 1)
    d = dist[:, 1:].mean(axis=1)
    return np.maximum(d, max(float(np.median(d)) * 1e-2, 1e-7))


def init_params(
    xyz: np.ndarray,
    rgb: np.ndarray,
    query_dims: dict[str, int],
    sh_degree: int,
    init_opacity: float = 0.1,
    init_scale: float = 1.0,
    query_init: float = 0.1,
    seed: int = 0,
) -> torch.nn.ParameterDict:
    """Gaussians at the sparse points ``xyz [P, 3]`` with colours ``rgb [P, 3] uint8``.

    Scales are the mean distance to the 3 nearest points (times ``init_scale``), rotations the
    identity, opacity ``init_opacity``, higher SH bands zero, queries random with standard
    deviation ``query_init``.
    """
    if len(xyz) == 0:
        raise M3Error("sparse points: the COLMAP model has no 3D points; rerun poses (more overlap or features)")
    gen = torch.Generator().manual_seed(seed)
    n = len(xyz)
    scale = torch.from_numpy(np.log(knn_scale(np.asarray(xyz, np.float64)) * init_scale)).float()
    colours = torch.from_numpy(np.asarray(rgb, np.float32) / 255.0)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    params = {
        "means": torch.from_numpy(np.asarray(xyz, np.float32)),
        "quats": quats,
        "scales": scale[:, None].repeat(1, 3),
        "opacities": torch.full((n,), math.log(init_opacity / (1 - init_opacity))),
        "sh0": rgb_to_sh(colours)[:, None, :],
        "shN": torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3),
    }
    for model, dim in query_dims.items():
        params[QUERY_PREFIX + model] = query_init * torch.randn(n, dim, generator=gen)
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v.contiguous()) for k, v in params.items()})


def sh_degree_of(params: Params) -> int:
    """The SH degree stored in ``params`` (from the size of ``shN``)."""
    return int(round(math.sqrt(params["shN"].shape[1] + 1))) - 1


def colors_from_sh(params: Params, viewmat: Tensor, degree: int, backend: Backend = "auto") -> Tensor:
    """View-dependent RGB ``[N, 3]`` (>= 0) seen from camera ``viewmat [4, 4]`` using ``degree`` bands.

    gsplat's CUDA kernel evaluates the SH when ``backend`` resolves to gsplat (CUDA, extension
    built); otherwise gsplat's torch reference does, on any device.
    """
    from pipeline.splat.raster import resolve_backend

    coeffs = torch.cat([params["sh0"], params["shN"]], dim=1)
    if degree == 0:
        return (coeffs[:, 0] * SH_C0 + 0.5).clamp_min(0.0)
    center = -viewmat[:3, :3].T @ viewmat[:3, 3]
    dirs = params["means"] - center[None]
    if resolve_backend(backend, coeffs.device) == "gsplat":
        from gsplat import spherical_harmonics
    else:
        from gsplat.cuda._torch_impl import _spherical_harmonics as spherical_harmonics
    return (spherical_harmonics(degree, dirs, coeffs) + 0.5).clamp_min(0.0)


def query_models(params: Params) -> list[str]:
    """Models that have a query entry in ``params``, in order."""
    return [k[len(QUERY_PREFIX) :] for k in params if k.startswith(QUERY_PREFIX)]


def save_ply(path: Path, params: Params) -> None:
    """Write ``params`` as a standard 3DGS PLY (binary) with ``q_<model>_<k>`` extra attributes."""
    from plyfile import PlyData, PlyElement

    p = {k: v.detach().float().cpu().numpy() for k, v in params.items()}
    n = len(p["means"])
    cols: list[tuple[str, np.ndarray]] = [
        *(("xyz"[i], p["means"][:, i]) for i in range(3)),
        *((f"n{'xyz'[i]}", np.zeros(n, np.float32)) for i in range(3)),
        *((f"f_dc_{i}", p["sh0"][:, 0, i]) for i in range(3)),
    ]
    rest = p["shN"].transpose(0, 2, 1).reshape(n, -1)  # channel-major, as 3DGS writes it
    cols += [(f"f_rest_{i}", rest[:, i]) for i in range(rest.shape[1])]
    cols.append(("opacity", p["opacities"]))
    cols += [(f"scale_{i}", p["scales"][:, i]) for i in range(3)]
    cols += [(f"rot_{i}", p["quats"][:, i]) for i in range(4)]
    for model in query_models(params):
        q = p[QUERY_PREFIX + model]
        cols += [(f"{QUERY_PREFIX}{model}_{k}", q[:, k]) for k in range(q.shape[1])]
    data = np.empty(n, dtype=[(name, "f4") for name, _ in cols])
    for name, values in cols:
        data[name] = values
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))


def load_ply(path: Path) -> dict[str, Tensor]:
    """Read a PLY written by :func:`save_ply` (or any standard 3DGS PLY) into a params dict."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise M3Error(f"{path}: no Gaussians; run `m3 train` for this scene first")
    try:
        v = PlyData.read(str(path))["vertex"]
    except Exception as exc:  # plyfile raises several types for broken files
        raise M3Error(f"{path}: unreadable PLY ({exc}); delete it and retrain") from exc
    names = [p.name for p in v.properties]

    def stack(keys: list[str]) -> Tensor:
        return torch.from_numpy(np.stack([np.asarray(v[k], np.float32) for k in keys], axis=1))

    try:
        n_rest = len([k for k in names if k.startswith("f_rest_")])
        rest = stack([f"f_rest_{i}" for i in range(n_rest)]) if n_rest else torch.zeros(v.count, 0)
        out = {
            "means": stack(["x", "y", "z"]),
            "quats": stack([f"rot_{i}" for i in range(4)]),
            "scales": stack([f"scale_{i}" for i in range(3)]),
            "opacities": torch.from_numpy(np.asarray(v["opacity"], np.float32)),
            "sh0": stack([f"f_dc_{i}" for i in range(3)])[:, None, :],
            "shN": rest.reshape(v.count, 3, n_rest // 3).transpose(1, 2).contiguous(),
        }
    except (KeyError, ValueError) as exc:
        raise M3Error(f"{path}: not a 3DGS PLY (missing {exc}); retrain the model") from exc
    models: dict[str, int] = {}
    for k in names:
        if k.startswith(QUERY_PREFIX):
            model, _, idx = k[len(QUERY_PREFIX) :].rpartition("_")
            models[model] = max(models.get(model, 0), int(idx) + 1)
    for model, dim in models.items():
        out[QUERY_PREFIX + model] = stack([f"{QUERY_PREFIX}{model}_{k}" for k in range(dim)])
    return out


def activated(params: Params, detach: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(means [N, 3], quats [N, 4], scales [N, 3] linear, opacities [N] in [0, 1])``."""
    out = (params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]))
    return tuple(t.detach() for t in out) if detach else out  # type: ignore[return-value]


def scaled_K(K: Tensor, width: int, height: int, new_w: int, new_h: int) -> Tensor:
    """Intrinsics ``[3, 3]`` of a (width, height) image resampled to (new_w, new_h)."""
    s = torch.tensor([[new_w / width], [new_h / height], [1.0]], dtype=K.dtype, device=K.device)
    return K * s


def render_rgb(
    params: Params, viewmat: Tensor, K: Tensor, width: int, height: int, degree: int, backend: Backend = "auto"
) -> tuple[Tensor, Tensor, dict]:
    """RGB ``[H, W, 3]``, alpha ``[H, W]`` and the rasterizer meta of one camera."""
    from pipeline.splat.raster import rasterize

    means, quats, scales, opac = activated(params)
    colors = colors_from_sh(params, viewmat, degree, backend)
    img, alpha, meta = rasterize(
        means, quats, scales, opac, colors, viewmat[None], K[None], width, height, backend=backend
    )
    return img[0], alpha[0, ..., 0], meta


def render_query(
    params: Params,
    model: str,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    detach_geometry: bool = True,
    backend: Backend = "auto",
) -> Tensor:
    """The rendered principal query of ``model`` ``[h, w, l]`` (geometry detached when asked)."""
    from pipeline.splat.raster import rasterize

    means, quats, scales, opac = activated(params, detach=detach_geometry)
    q, _, _ = rasterize(
        means, quats, scales, opac, params[QUERY_PREFIX + model], viewmat[None], K[None], width, height, backend=backend
    )
    return q[0]
