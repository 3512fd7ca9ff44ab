"""pipeline.raster: the torch backend against a brute-force per-pixel reference and gsplat CUDA."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.errors import M3Error
from pipeline.splat.raster import DEFAULT_BUDGET, rasterize
from tests.helpers.raster import H, W, one_thread, random_scene  # noqa: F401 (one_thread: an autouse fixture)


def reference(
    means, quats, scales, opacities, colors, viewmat, K, width, height, bg=None, near=0.01, far=1e10, eps2d=0.3
):
    """Direct per-pixel formula: every Gaussian at every pixel, depth-sorted, front to back."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        -1,
    )
    R = R.reshape(-1, 3, 3)
    M = R * scales[:, None, :]
    cov = M @ M.transpose(1, 2)
    Rc, t = viewmat[:3, :3], viewmat[:3, 3]
    pc = means @ Rc.T + t
    covc = Rc @ cov @ Rc.T
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    order = torch.argsort(pc[:, 2])
    visible = [i for i in order.tolist() if near <= pc[i, 2] <= far]
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=means.dtype), torch.arange(width, dtype=means.dtype), indexing="ij"
    )
    px, py = xs + 0.5, ys + 0.5
    T = torch.ones_like(px)
    done = torch.zeros_like(px, dtype=torch.bool)
    out = torch.zeros(height, width, colors.shape[1], dtype=means.dtype)
    for i in visible:
        tx, ty, tz = pc[i]
        limx_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
        limx_neg = cx / fx + 0.3 * (0.5 * width / fx)
        limy_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
        limy_neg = cy / fy + 0.3 * (0.5 * height / fy)
        jx = tz * torch.clamp(tx / tz, -limx_neg, limx_pos)
        jy = tz * torch.clamp(ty / tz, -limy_neg, limy_pos)
        J = torch.stack(
            [torch.stack([fx / tz, 0 * tz, -fx * jx / tz**2]), torch.stack([0 * tz, fy / tz, -fy * jy / tz**2])]
        )
        c2 = J @ covc[i] @ J.T + eps2d * torch.eye(2, dtype=means.dtype)
        conic = torch.linalg.inv(c2)
        mx, my = fx * tx / tz + cx, fy * ty / tz + cy
        dx, dy = mx - px, my - py
        sigma = 0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) + conic[0, 1] * dx * dy
        alpha = torch.clamp(opacities[i] * torch.exp(-sigma), max=0.999)
        skip = (sigma < 0) | (alpha < 1 / 255)
        next_t = T * (1 - alpha)
        done = done | (~skip & (next_t <= 1e-4))
        use = ~skip & ~done
        a = torch.where(use, alpha, torch.zeros_like(alpha))
        out = out + (a * T)[..., None] * colors[i]
        T = torch.where(use, next_t, T)
    if bg is not None:
        out = out + T[..., None] * bg
    return out, 1 - T


def grads(fn, params):
    params = [p.detach().clone().requires_grad_() for p in params]
    img, alpha = fn(*params)
    weights = torch.linspace(0.5, 1.5, img.numel(), dtype=img.dtype).reshape(img.shape)
    ((img * weights).sum() + 0.7 * alpha.sum()).backward()
    return img.detach(), alpha.detach(), [p.grad for p in params]


CPU_PATHS = [("torch", "box"), ("torch", "ellipse"), ("cpp", "ellipse")]
"""(backend, tiles) of the CPU rasterizer: the torch backend with gsplat's box tiles (the original
path), with exact ellipse tiles, and the compiled kernel (built by `make install`; a build failure
fails these tests)."""


def cpu_backend(viewmats, Ks, bg=None, width=W, height=H, path=("torch", "box"), **kw):
    backend, tiles = path
    if backend == "torch":
        kw.setdefault("budget", DEFAULT_BUDGET)
    else:
        kw.pop("budget", None)

    def fn(*p):
        img, alpha, _ = rasterize(*p, viewmats, Ks, width, height, backend=backend, tiles=tiles, backgrounds=bg, **kw)
        return img[0], alpha[0, ..., 0]

    return fn


def reference_fn(viewmats, Ks, bg=None, width=W, height=H):
    def fn(*p):
        return reference(*p, viewmats[0], Ks[0], width, height, None if bg is None else bg[0])

    return fn


@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("tile_size,budget", [(16, 1 << 22), (4, 1 << 22), (8, 100)])
def test_matches_reference_forward_and_gradients(tile_size, budget, path):
    params, viewmats, Ks = random_scene(60, seed=1)
    img, alpha, g = grads(cpu_backend(viewmats, Ks, tile_size=tile_size, budget=budget, path=path), params)
    ref_img, ref_alpha, ref_g = grads(reference_fn(viewmats, Ks), params)
    assert alpha.max() > 0.9 and alpha.min() < 0.5  # a scene with overlap and gaps
    torch.testing.assert_close(img, ref_img, rtol=0, atol=1e-10)
    torch.testing.assert_close(alpha, ref_alpha, rtol=0, atol=1e-10)
    for name, a, b in zip(["means", "quats", "scales", "opacities", "colors"], g, ref_g):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=name)


@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("budget", [1 << 22, 3000])
def test_multichannel_backgrounds_and_saturation(budget, path):
    """3+16+32+32 channels, a background, opaque layers that hit the 1e-4 cut-off, chunked lists."""
    params, viewmats, Ks = random_scene(100, channels=83, seed=2)
    params[3] = torch.full_like(params[3], 0.98)
    params[2] = params[2] * 4
    bg = torch.rand(1, 83, dtype=torch.float64)
    img, alpha, g = grads(cpu_backend(viewmats, Ks, bg=bg, budget=budget, path=path), params)
    ref_img, ref_alpha, ref_g = grads(reference_fn(viewmats, Ks, bg=bg), params)
    assert img.shape == (H, W, 83)
    assert (alpha > 1 - 2e-4).float().mean() > 0.1  # the transmittance cut-off is active
    torch.testing.assert_close(img, ref_img, rtol=0, atol=1e-9)
    torch.testing.assert_close(alpha, ref_alpha, rtol=0, atol=1e-10)
    for a, b in zip(g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("path", CPU_PATHS)
def test_dense_scene_every_tiling_matches_reference(path):
    """Many overlapping Gaussians (most pixels reach the cut-off): list compaction and chunking
    must keep each pixel's cut-off exactly where the reference puts it."""
    params, viewmats, Ks = random_scene(1500, seed=8, width=40, height=30)
    params[3] = params[3] * 0.3 + 0.7
    ref_img, ref_alpha = reference(*params, viewmats[0], Ks[0], 40, 30)
    assert (ref_alpha > 0.999).float().mean() > 0.5
    for tile_size, budget in [(2, 1 << 22), (4, 20000), (16, 1 << 22), (64, 1 << 18)]:
        img, alpha = cpu_backend(viewmats, Ks, width=40, height=30, path=path, tile_size=tile_size, budget=budget)(
            *params
        )
        img, alpha = img[None], alpha[None, ..., None]
        torch.testing.assert_close(img[0], ref_img, rtol=0, atol=1e-10)
        torch.testing.assert_close(alpha[0, ..., 0], ref_alpha, rtol=0, atol=1e-10)


@pytest.mark.parametrize("path", CPU_PATHS)
def test_float32_and_low_resolution_tiles_larger_than_image(path):
    params, viewmats, Ks = random_scene(300, channels=16, seed=3, dtype=torch.float32, width=8, height=6)
    img, alpha, g = grads(cpu_backend(viewmats, Ks, width=8, height=6, tile_size=16, path=path), params)
    p64 = [p.double() for p in params]
    ref = reference_fn(viewmats.double(), Ks.double(), width=8, height=6)
    ref_img, ref_alpha, ref_g = grads(ref, p64)
    assert img.shape == (6, 8, 16)
    torch.testing.assert_close(img.double(), ref_img, rtol=0, atol=2e-4)
    torch.testing.assert_close(alpha.double(), ref_alpha, rtol=0, atol=2e-4)
    for a, b in zip(g, ref_g):
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=2e-3 * b.abs().max().item())


def test_meta_and_culling_behind_camera():
    params, viewmats, Ks = random_scene(10, seed=4)
    R, t = viewmats[0, :3, :3], viewmats[0, :3, 3]
    for i, z in enumerate([-2.0, 0.005]):  # behind the camera, inside the near plane
        params[0][i] = R.T @ (torch.tensor([0.0, 0.0, z], dtype=torch.float64) - t)
    params = [p.requires_grad_() for p in params]
    img, alpha, meta = rasterize(*params, viewmats, Ks, W, H, backend="torch")
    assert meta["radii"].shape == (1, 10, 2) and meta["radii"].dtype == torch.int32
    assert (meta["radii"][0, :2] == 0).all() and (meta["radii"][0, 2:] > 0).any()
    assert meta["means2d"].shape == (1, 10, 2)
    assert meta["gaussian_ids"] is None and meta["n_cameras"] == 1
    sizes = (meta["width"], meta["height"], meta["tile_width"], meta["tile_height"])
    assert sizes == (W, H, 5, 4)  # the torch backend's default tile is 8
    meta["means2d"].retain_grad()
    img.sum().backward()
    grad2d = meta["means2d"].grad
    assert torch.isfinite(grad2d).all() and torch.isfinite(params[0].grad).all()
    assert (grad2d[0, :2] == 0).all() and (params[0].grad[:2] == 0).all()
    assert grad2d[0, 2:].abs().sum() > 0
    _, _, meta_far = rasterize(*params, viewmats, Ks, W, H, backend="torch", far_plane=3.0)
    beyond = meta["depths"][0] > 3.0
    assert beyond.any() and (meta_far["radii"][0][beyond] == 0).all()
    assert (meta_far["radii"][0][~beyond] == meta["radii"][0][~beyond]).all()


def test_projection_matches_gsplat_torch_reference():
    """means2d / depths / conics equal gsplat's own pure-torch projection for visible Gaussians."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    params, viewmats, Ks = random_scene(200, seed=9)
    _, _, meta = rasterize(*params, viewmats, Ks, W, H, backend="torch")
    covars, _ = _quat_scale_to_covar_preci(params[1], params[2], compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(params[0], covars, viewmats, Ks, W, H)
    vis = (meta["radii"] > 0).all(-1)
    assert vis.sum() > 50 and not (vis & ~(radii > 0).all(-1)).any()
    torch.testing.assert_close(meta["means2d"][vis], means2d[vis])
    torch.testing.assert_close(meta["depths"][vis], depths[vis])
    torch.testing.assert_close(meta["conics"][vis], conics[vis])


def test_default_strategy_reads_meta():
    from gsplat.strategy import DefaultStrategy

    params, viewmats, Ks = random_scene(40, seed=5, dtype=torch.float32)
    names = ["means", "quats", "scales", "opacities", "colors"]
    pdict = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in zip(names, params)})
    strategy = DefaultStrategy(refine_start_iter=0, verbose=False)
    state = strategy.initialize_state()
    img, alpha, meta = rasterize(*(pdict[k] for k in names), viewmats, Ks, W, H, backend="torch")
    strategy.step_pre_backward(pdict, {}, state, 0, meta)
    img.sum().backward()
    strategy._update_state(pdict, state, meta, packed=False)
    visible = (meta["radii"][0] > 0).all(-1)
    assert (state["count"][visible] == 1).all() and (state["count"][~visible] == 0).all()
    assert (state["grad2d"][visible] > 0).any()


def test_packed_layout_matches_unpacked():
    params, viewmats, Ks = random_scene(30, seed=6)
    viewmats = viewmats.repeat(2, 1, 1)
    viewmats[1, 0, 3] += 0.2
    img, alpha, meta = rasterize(*params, viewmats, Ks.repeat(2, 1, 1), W, H, backend="torch")
    img_p, alpha_p, meta_p = rasterize(*params, viewmats, Ks.repeat(2, 1, 1), W, H, backend="torch", packed=True)
    torch.testing.assert_close(img_p, img)
    torch.testing.assert_close(alpha_p, alpha)
    sel = (meta["radii"] > 0).all(-1)
    assert len(meta_p["gaussian_ids"]) == int(sel.sum())
    torch.testing.assert_close(meta_p["means2d"], meta["means2d"][sel])


def test_batched_cameras_and_per_camera_colors():
    """B cameras in one call equal B single-camera calls; [B, N, C] colours pick per camera."""
    params, viewmats, Ks = random_scene(40, seed=10)
    viewmats = torch.cat([viewmats, viewmats])
    viewmats[1, :3, 3] += torch.tensor([0.3, -0.1, 0.2], dtype=torch.float64)
    Ks = torch.cat([Ks, Ks * torch.tensor([[0.8], [0.8], [1.0]], dtype=torch.float64)])
    colors = torch.stack([params[4], params[4].flip(-1)])
    img, alpha, meta = rasterize(*params[:4], colors, viewmats, Ks, W, H, backend="torch")
    assert meta["radii"].shape == (2, 40, 2) and meta["n_cameras"] == 2
    for i in range(2):
        ref_img, ref_alpha = reference(*params[:4], colors[i], viewmats[i], Ks[i], W, H)
        torch.testing.assert_close(img[i], ref_img, rtol=0, atol=1e-10)
        torch.testing.assert_close(alpha[i, ..., 0], ref_alpha, rtol=0, atol=1e-10)


def test_empty_scene_and_errors():
    params, viewmats, Ks = random_scene(0, channels=5)
    bg = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]], dtype=torch.float64)
    img, alpha, meta = rasterize(*params, viewmats, Ks, W, H, backend="torch", backgrounds=bg)
    assert img.shape == (1, H, W, 5) and (alpha == 0).all()
    torch.testing.assert_close(img[0, 3, 4], bg[0])
    with pytest.raises(ValueError, match="colors"):  # a caller bug: a plain exception with its traceback
        rasterize(*params[:4], torch.zeros(3, 3), viewmats, Ks, W, H, backend="torch")
    with pytest.raises(M3Error, match="CUDA"):
        rasterize(*params, viewmats, Ks, W, H, backend="gsplat")


def backend_scene():
    """The float32 scene the backends are compared on: params, viewmats, Ks, background."""
    params, viewmats, Ks = random_scene(3000, channels=19, seed=7, dtype=torch.float32, width=160, height=120)
    params[0] = params[0] * torch.tensor([2.0, 2.0, 1.0])
    return params, viewmats, Ks, torch.rand(1, 19, generator=torch.Generator().manual_seed(0))


def one_pass(scene, backend: str, device: str) -> dict:
    """Forward, radii, means2d and parameter gradients of one render on fresh leaf copies of ``scene``."""
    params, viewmats, Ks, bg = scene
    ps = [p.detach().clone().to(device).requires_grad_() for p in params]
    img, alpha, meta = rasterize(
        *ps, viewmats.to(device), Ks.to(device), 160, 120, backend=backend, backgrounds=bg.to(device)
    )
    meta["means2d"].retain_grad()
    weights = torch.linspace(0.5, 1.5, img.numel(), device=device).reshape(img.shape)
    ((img * weights).sum() + alpha.sum()).backward()
    out = {
        "colors": img,
        "alphas": alpha,
        "radii": meta["radii"],
        "means2d.grad": meta["means2d"].grad,
        **{f"d_{k}": p.grad for k, p in zip(["means", "quats", "scales", "opacities", "colors"], ps)},
    }
    return {k: v.detach().cpu().double() for k, v in out.items()}


def compare_backends(pairs):
    """Render the backend scene with each (backend, device); return max abs differences of the
    second against the first and both results."""
    scene = backend_scene()
    a, b = (one_pass(scene, backend, device) for backend, device in pairs)
    return {k: (a[k] - b[k]).abs().max().item() for k in a}, a, b


def test_backend_comparison_builds_fresh_inputs_per_pass():
    """The comparison harness of the gpu test: each pass differentiates its own leaf tensors (the
    shared inputs once became non-leaf copies on the second device, whose grads stayed None, and
    on one device the passes accumulated into the same gradients)."""
    diff, a, b = compare_backends([("torch", "cpu"), ("torch", "cpu")])
    assert all(v == 0.0 for v in diff.values()), diff
    reference = one_pass(backend_scene(), "torch", "cpu")
    for key in [k for k in a if k.startswith("d_")]:
        assert a[key].abs().sum() > 0
        torch.testing.assert_close(a[key], reference[key])


@pytest.mark.gpu
def test_torch_backend_matches_gsplat_cuda():
    diff, ours, theirs = compare_backends([("torch", "cpu"), ("gsplat", "cuda")])
    print("max abs differences, torch backend vs gsplat CUDA:", diff)
    for key in ("colors", "alphas"):  # a rare alpha/cut-off threshold flip moves a pixel <= 1/255
        assert diff[key] < 5e-3 and (ours[key] - theirs[key]).abs().mean() < 1e-5, key
    assert ((ours["radii"] - theirs["radii"]).abs() > 0).double().mean() < 1e-3
    for key in [k for k in ours if k.startswith("d_") or k == "means2d.grad"]:
        rel = ((ours[key] - theirs[key]).norm() / theirs[key].norm()).item()
        assert rel < 1e-2, (key, rel)
