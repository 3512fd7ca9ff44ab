"""The compiled CPU rasterizer and exact ellipse tiles against the torch backend (gsplat's box tiles).

Acceptance of the faster CPU path: forward within 1e-5 and gradients within 1e-4 (relative norm)
of the torch backend on random scenes (dense, long lists, culling, batched cameras, packed), the
same Gaussians densified by gsplat's DefaultStrategy, fewer pixel-Gaussian pairs with ellipse tiles,
and a fall-back to the torch backend when the kernel cannot be built.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.splat import raster, raster_cpp
from pipeline.splat.raster import rasterize
from tests.helpers.raster import one_thread, random_scene  # noqa: F401 (one_thread: an autouse fixture)


def run(params, viewmats, Ks, width, height, backend, tiles, **kw):
    """Forward, alpha, means2d gradient and parameter gradients of a weighted sum of the outputs."""
    ps = [p.detach().clone().requires_grad_() for p in params]
    img, alpha, meta = rasterize(*ps, viewmats, Ks, width, height, backend=backend, tiles=tiles, **kw)
    meta["means2d"].retain_grad()
    weights = torch.linspace(0.5, 1.5, img.numel(), dtype=img.dtype).reshape(img.shape)
    ((img * weights).sum() + 0.7 * alpha.sum()).backward()
    return img.detach(), alpha.detach(), meta, [meta["means2d"].grad, *(p.grad for p in ps)]


def assert_same(params, viewmats, Ks, width, height, **kw):
    img, alpha, meta, g = run(params, viewmats, Ks, width, height, "torch", "box", **kw)
    img2, alpha2, meta2, g2 = run(params, viewmats, Ks, width, height, "cpp", "ellipse", **kw)
    assert (img - img2).abs().max() < 1e-5 and (alpha - alpha2).abs().max() < 1e-5
    for name, a, b in zip(["means2d", "means", "quats", "scales", "opacities", "colors"], g, g2):
        assert a.norm() > 0, name
        assert (a - b).norm() / a.norm() < 1e-4, (name, float((a - b).norm() / a.norm()))
    return meta, meta2


@pytest.mark.parametrize("n,channels,size", [(3000, 3, (160, 120)), (3000, 35, (160, 120)), (8000, 19, (96, 64))])
def test_cpp_matches_torch_on_random_scenes(n, channels, size):
    params, viewmats, Ks = random_scene(
        n, channels=channels, seed=n + channels, dtype=torch.float32, width=size[0], height=size[1]
    )
    meta, meta2 = assert_same(params, viewmats, Ks, *size, backgrounds=torch.rand(1, channels))
    pairs_box, pairs_ellipse = len(meta["flatten_ids"]), len(meta2["flatten_ids"])
    assert pairs_ellipse < pairs_box  # exact tiles: shorter lists, same image
    torch.testing.assert_close(meta2["radii"], meta["radii"])


def test_cpp_dense_scene_long_lists_and_culling():
    params, viewmats, Ks = random_scene(6000, channels=8, seed=8, dtype=torch.float32, width=48, height=36)
    params[3] = params[3] * 0.3 + 0.7  # opaque: most pixels reach the 1e-4 cut-off
    params[2] = params[2] * 3  # large: lists of hundreds of entries per tile
    R, t = viewmats[0, :3, :3], viewmats[0, :3, 3]
    for i, z in enumerate([-2.0, 0.005]):  # behind the camera, inside the near plane
        params[0][i] = R.T @ (torch.tensor([0.0, 0.0, z]) - t)
    meta, _ = assert_same(params, viewmats, Ks, 48, 36, tile_size=16)
    assert (meta["radii"][0, :2] == 0).all()
    lists = torch.bincount(raster.tile_index(meta["isect_ids"], 9), minlength=9)
    assert lists.max() > 500


def test_cpp_batched_cameras_and_packed():
    params, viewmats, Ks = random_scene(2000, channels=5, seed=10, dtype=torch.float32, width=64, height=48)
    viewmats = torch.cat([viewmats, viewmats])
    viewmats[1, :3, 3] += torch.tensor([0.3, -0.1, 0.2])
    Ks = torch.cat([Ks, Ks * torch.tensor([[0.8], [0.8], [1.0]])])
    colors = torch.stack([params[4], params[4].flip(-1)])
    assert_same([*params[:4], colors], viewmats, Ks, 64, 48)
    assert_same([*params[:4], colors], viewmats, Ks, 64, 48, packed=True)


def test_default_strategy_densifies_the_same_gaussians():
    """Twelve steps of fitting a target image with DefaultStrategy (grow, split, prune) on either
    path keep the same Gaussians (gsplat's strategy works in float32)."""
    from gsplat.strategy import DefaultStrategy

    target = torch.rand(48, 64, 3, generator=torch.Generator().manual_seed(0))
    names = ["means", "quats", "scales", "opacities", "colors"]

    def fit(backend: str, tiles: str) -> torch.nn.ParameterDict:
        torch.manual_seed(0)  # the strategy's splits sample from torch's RNG
        params, viewmats, Ks = random_scene(400, channels=3, seed=4, dtype=torch.float32, width=64, height=48)
        params[2], params[3] = params[2].log(), torch.logit(params[3])
        pd = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in zip(names, params)})
        opts = {k: torch.optim.Adam([{"params": pd[k], "lr": 1e-3, "name": k}]) for k in names}
        strategy = DefaultStrategy(refine_start_iter=2, refine_every=3, grow_grad2d=1e-5, verbose=False)
        state = strategy.initialize_state(scene_scale=1.0)
        for step in range(12):
            img, _, info = rasterize(
                pd["means"],
                pd["quats"],
                pd["scales"].exp(),
                torch.sigmoid(pd["opacities"]),
                pd["colors"],
                viewmats,
                Ks,
                64,
                48,
                backend=backend,
                tiles=tiles,
            )
            strategy.step_pre_backward(pd, opts, state, step, info)
            ((img[0] - target) ** 2).mean().backward()
            for o in opts.values():
                o.step()
                o.zero_grad(set_to_none=True)
            strategy.step_post_backward(pd, opts, state, step, info)
        return pd

    ours, theirs = fit("cpp", "ellipse"), fit("torch", "box")
    assert len(ours["means"]) == len(theirs["means"]) != 400  # it densified
    for k in names:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-4, atol=1e-5)


def test_unbuildable_kernel_falls_back_to_torch(monkeypatch):
    monkeypatch.setattr(raster_cpp, "kernel", lambda: None)
    assert raster.resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(Exception, match="compiled CPU rasterizer does not build here"):
        raster.resolve_backend("cpp", "cpu")
