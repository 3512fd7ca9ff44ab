"""The training loop: 3D Gaussians + per-model principal queries + memory attention (or decoders).

Each step renders one training view at the step's resolution (the schedule's coarse-to-fine
start, :meth:`Trainer.step_view`), in a random ``patch`` of it when the schedule has one
(:meth:`Trainer.patch`): RGB (loss 0.8 L1 + 0.2 (1 - SSIM); for a view with alpha, an RGBA input,
the render ``rgb + (1 - alpha) bg`` against the image over the same ``train.background``, fixed or
random per step) and every model's principal-query map, at the pixels of that window
(``feature_render: pixels``, the stored features interpolated bilinearly at pixel centres) or at
the model's feature-map size (``cells``), with geometry detached unless ``feature_grad_geometry``
(:mod:`pipeline.splat.principal_queries`). ``pixels`` valid samples per model are mapped through
the model's head and compared with the stored features (0.5 (mean(1 - cos) + MSE)), read one view
at a time from the feature store. Densification and pruning: gsplat's ``DefaultStrategy``
(queries are params entries, so they are cloned/split/pruned too).

The schedule (:class:`~pipeline.splat.config.Schedule`: iterations, image size, learning rates,
densification) is the CPU one on the CPU and the M3 reference on CUDA unless ``train.schedule``
names one. Views (images and intrinsics) are resampled so their longer side is the schedule's
``max_side`` (:func:`training_views`). Held out, never trained on: the poses stage's dataset split
(``colmap/split.json``) when it wrote one, else every ``test_every``-th view. Opacities are reset
every ``reset_every`` steps while densifying (:meth:`Trainer.reset_opacities`).

Every ``checkpoint_every`` steps, and at least every ``checkpoint_minutes``,
``checkpoint.safetensors`` is replaced atomically (:mod:`pipeline.splat.checkpoint`); a rerun with
the same config, inputs, code, device and image size resumes from it. A non-finite loss raises
:class:`M3Error` naming the step and the term, leaving the last good checkpoint in place.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pipeline.bank.store import FEATURES_IDENTITY, check_bank_matches, load_bank
from pipeline.core.code import code_hash
from pipeline.core.config import to_dict
from pipeline.core.errors import M3Error
from pipeline.core.images import composite, load_pixels
from pipeline.core.io import config_hash, hash_files, provenance
from pipeline.core.progress import progress as progress_bar
from pipeline.core.runtime import peak_ram_mb, resolve_device
from pipeline.core.scene import Scene, View, load_points, load_split, load_views, resampled_views, split_views
from pipeline.core.threads import CpuThreads
from pipeline.features.store import FeatureStore
from pipeline.splat.checkpoint import CHECKPOINT_FILE, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pipeline.splat.config import Schedule, TrainConfig
from pipeline.splat.gaussians import init_params, render_rgb
from pipeline.splat.losses import feature_loss, rgb_loss
from pipeline.splat.memory import build_heads
from pipeline.splat.principal_queries import Camera, Window, supervised_queries, window_K

log = logging.getLogger(__name__)


def training_views(scene: Scene, schedule: Schedule) -> list[View]:
    """The scene's views at the training resolution (the schedule's ``max_side``)."""
    return resampled_views(load_views(scene), schedule.max_side)


def scene_scale(views: list[View]) -> float:
    """1.1 x the largest distance of a camera centre from their mean (3DGS's normalisation radius)."""
    c = np.array([v.center for v in views])
    return 1.1 * float(np.linalg.norm(c - c.mean(0), axis=1).max()) if len(c) > 1 else 1.0


@dataclass
class Inputs:
    """Everything a training run reads: the device and schedule it resolved to, views, open feature
    stores, banks and the provenance."""

    device: str
    schedule: Schedule
    train: list[View]
    test: list[View]
    stores: dict[str, FeatureStore]
    index: dict[str, dict[str, int]]
    banks: dict[str, torch.Tensor]
    bank_hashes: dict[str, str]
    provenance: dict[str, Any]


def open_inputs(scene: Scene, cfg: TrainConfig, models: list[str], device: str) -> Inputs:
    """The run's inputs on ``device`` (resolved: ``cpu``, ``cuda`` or ``cuda:<n>``): its schedule,
    views split, feature stores opened (not read), banks loaded and checked against them.

    The provenance holds what the run depends on: the config with the device and schedule it
    resolves to and the training image sizes, the COLMAP model, the banks and features, the code.
    """
    kind = torch.device(device).type
    schedule = cfg.resolved(kind)
    views = training_views(scene, schedule)
    held_out = load_split(scene)
    train, test = split_views(views, cfg.test_every, held_out)
    if not train:
        rule = f"the views of {scene.split_path}" if held_out is not None else f"every {cfg.test_every}th"
        raise M3Error(f"{scene.sparse_dir}: no training views after holding out {rule}; add views")
    stores, index, banks, hashes, feats = {}, {}, {}, {}, {}
    for m in models:
        if m not in cfg.query_dims:
            raise M3Error(f"params.yaml: train.query_dims has no entry for model '{m}'; add e.g. {m}: 16")
        fs = FeatureStore.open(scene.features_path(m))
        bank, attrs = load_bank(scene.bank_path(m))
        check_bank_matches(attrs, fs.attrs, what=str(scene.bank_path(m)))
        if bank.shape[1] != fs.shape[2]:
            raise M3Error(
                f"{scene.bank_path(m)}: bank dim {bank.shape[1]} != feature dim {fs.shape[2]}; rebuild the bank"
            )
        index[m] = {n: i for i, n in enumerate(fs.names)}
        missing = [v.name for v in train if v.name not in index[m]]
        if missing:
            raise M3Error(
                f"{scene.features_path(m)}: no features for view {missing[0]}; rerun `m3 features` for this scene"
            )
        stores[m], banks[m] = fs, torch.from_numpy(bank)
        hashes[m] = (attrs.get("provenance") or {}).get("bank_hash") or attrs.get("bank_hash") or ""
        fp = fs.attrs.get("provenance") or {}
        feats[m] = {k: fp.get(k) for k in FEATURES_IDENTITY}
    config = {
        "train": to_dict(cfg),
        "models": models,
        "device": kind,
        "schedule": to_dict(schedule),
        "image_sizes": sorted({(v.width, v.height) for v in views}),
    }
    colmap = sorted(scene.sparse_dir.glob("*.bin")) + ([scene.split_path] if held_out is not None else [])
    inputs_hash = config_hash({"colmap": hash_files(colmap), "banks": hashes, "features": feats})
    prov = provenance("train", config, inputs_hash, code_hash(__name__), banks=hashes, features=feats)
    return Inputs(device, schedule, train, test, stores, index, banks, hashes, prov)


class Trainer:
    """State of one training run (params, heads, optimisers, densification) and its step."""

    def __init__(self, scene: Scene, cfg: TrainConfig, models: list[str], inputs: Inputs):
        from gsplat.strategy import DefaultStrategy

        self.scene, self.cfg, self.models, self.inp, self.device = scene, cfg, models, inputs, inputs.device
        self.sched = sched = inputs.schedule
        device = self.device
        dims = {m: cfg.query_dims[m] for m in models}
        xyz, rgb = load_points(scene)
        self.params = init_params(
            xyz, rgb, dims, cfg.sh_degree, sched.init_opacity, query_init=sched.query_init, seed=cfg.seed
        ).to(device)
        self.heads = build_heads(
            cfg.method, inputs.banks, dims, cfg.tau, cfg.learn_projection, cfg.decoder_hidden, cfg.seed
        ).to(device)
        self.scale = scene_scale(inputs.train + inputs.test)
        self.optimizers = self.make_optimizers()
        head_params = list(self.heads.parameters())
        self.head_opt = torch.optim.Adam(head_params, lr=cfg.lr_heads, eps=1e-15) if head_params else None
        # gsplat 1.5.3 never resets opacities itself (`step % reset_every == 0 & step > 0` is a chained
        # comparison that is always false); reset_every still gates its large-Gaussian pruning, and
        # the reset happens in train_step (reset_opacities) unless the installed gsplat does it
        self.strategy = DefaultStrategy(
            prune_opa=cfg.prune_opacity,
            grow_grad2d=sched.grad_threshold,
            refine_start_iter=sched.densify_start,
            refine_stop_iter=sched.densify_stop,
            refine_every=cfg.densify_every,
            reset_every=sched.reset_every,
        )
        self.strategy.check_sanity(self.params, self.optimizers)
        self.state = self.strategy.initialize_state(scene_scale=self.scale)
        self.step, self.elapsed, self.cpu_elapsed = 0, 0.0, 0.0
        self.curves: list[dict[str, float]] = []
        self.peak_ram_mb = 0.0
        self.images: dict[str, torch.Tensor] = {}
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One Adam per parameter entry (gsplat's strategy layout); queries use ``lr_query``."""
        c, s = self.cfg, self.sched
        lrs = {
            "means": s.lr_means * self.scale,
            "quats": c.lr_quats,
            "scales": s.lr_scales,
            "opacities": s.lr_opacities,
            "sh0": s.lr_sh0,
            "shN": c.lr_shN,
        }
        return {
            k: torch.optim.Adam([{"params": p, "lr": lrs.get(k, s.lr_query), "name": k}], eps=1e-15)
            for k, p in self.params.items()
        }

    def image(self, view: View) -> torch.Tensor:
        """The view's image ``[H, W, 3|4]`` (4: RGBA input) in [0, 1] (uint8 cache per view and size)."""
        key = f"{view.name}@{view.width}x{view.height}"
        if key not in self.images:
            self.images[key] = torch.from_numpy(load_pixels(view.image_path, view.width, view.height))
        return self.images[key].to(self.device).float() / 255.0

    def background(self) -> torch.Tensor:
        """This step's ``train.background`` ``[3]`` (random: from the seeded generator, on views with alpha only)."""
        bg = self.cfg.background
        return torch.rand(3, generator=self.gen) if bg == "random" else torch.full((3,), float(bg == "white"))

    def step_view(self, view: View) -> View:
        """``view`` at this step's resolution: halved ``k`` times while ``k = downscales - step //
        downscale_every`` is positive (the schedule's coarse-to-fine start), else as it is."""
        k = self.sched.downscales - self.step // max(self.sched.downscale_every, 1)
        return view if k <= 0 else resampled_views([view], max(view.width, view.height) >> k)[0]

    def patch(self, view: View) -> Window:
        """``(x0, y0, width, height)`` of this step's RGB window: a random ``patch``-sized square of
        the view (seeded), or the whole view when the schedule's ``patch`` is 0 or not smaller."""
        size = self.sched.patch
        pw, ph = min(size or view.width, view.width), min(size or view.height, view.height)
        if (pw, ph) == (view.width, view.height):
            return 0, 0, pw, ph
        x0 = int(torch.randint(view.width - pw + 1, (), generator=self.gen))
        y0 = int(torch.randint(view.height - ph + 1, (), generator=self.gen))
        return x0, y0, pw, ph

    def degree(self) -> int:
        return min(self.cfg.sh_degree, self.step // max(self.sched.sh_increase_every, 1))

    def train_step(self, view: View) -> dict[str, float]:
        """One optimisation step on ``view``; returns the loss terms (raises on non-finite)."""
        c, dev = self.cfg, self.device
        view = self.step_view(view)
        viewmat = torch.from_numpy(view.w2c).float().to(dev)
        K = torch.from_numpy(view.K).float().to(dev)
        window = self.patch(view)
        x0, y0, pw, ph = window
        rgb, alpha, info = render_rgb(self.params, viewmat, window_K(K, window), pw, ph, self.degree(), c.backend)
        info["width"], info["height"] = view.width, view.height  # densification gradients in full-image units
        self.strategy.step_pre_backward(self.params, self.optimizers, self.state, self.step, info)
        target = self.image(view)[y0 : y0 + ph, x0 : x0 + pw]
        if target.shape[-1] == 4:  # an RGBA input: the render and the image over the same background
            bg = self.background().to(self.device)
            rgb, target = rgb + (1 - alpha[..., None]) * bg, composite(target, bg)
        terms = {"rgb": rgb_loss(rgb, target, c.ssim_weight)}
        for m in self.models:
            terms[m] = self.feature_term(m, view, viewmat, K, window)
        for name, value in terms.items():
            if not torch.isfinite(value):
                kept = self.scene.model_dir / CHECKPOINT_FILE
                raise M3Error(
                    f"train step {self.step}: loss term '{name}' is {float(value.detach())}; last good checkpoint "
                    f"kept in {kept} (lower the learning rates or check the inputs)"
                )
        total = terms["rgb"] + c.feature_weight * sum(terms[m] for m in self.models)
        total.backward()
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self.head_opt is not None:
            self.head_opt.step()
            self.head_opt.zero_grad(set_to_none=True)
        self.decay_means_lr()
        self.strategy.step_post_backward(self.params, self.optimizers, self.state, self.step, info, packed=False)
        self.reset_opacities()
        self.step += 1
        return {k: float(v.detach()) for k, v in terms.items()}

    def feature_term(self, model: str, view: View, viewmat: torch.Tensor, K: torch.Tensor, window: Window) -> Tensor:
        """The feature loss of ``model`` on ``view`` (cells, or pixels of the step's ``window``)."""
        c = self.cfg
        feats, valid = self.inp.stores[model].read(self.inp.index[model][view.name])
        samples = supervised_queries(
            self.params, model, Camera(viewmat, K, view.width, view.height), (feats, valid), c.feature_render,
            window, c.pixels, self.gen, not c.feature_grad_geometry, c.backend,
        )  # fmt: skip
        if samples is None:
            return torch.zeros((), device=self.device)
        queries, target = samples
        return feature_loss(self.heads[model](queries), target)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: provenance, step, timings, curves, parameters, optimiser,
        head and densification states, random generators (tensors on the CPU, the rest JSON values)."""
        return {
            "provenance": self.inp.provenance,
            "step": self.step,
            "elapsed": self.elapsed,
            "cpu_elapsed": self.cpu_elapsed,
            "curves": self.curves,
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "heads": dict(self.heads.state_dict()),
            "head_opt": self.head_opt.state_dict() if self.head_opt else None,
            "strategy": {k: v.cpu() if torch.is_tensor(v) else v for k, v in self.state.items()},
            "generator": self.gen.get_state(),
            "rng": rng_state(self.device),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (tensors moved to this trainer's device)."""
        dev = self.device
        self.params = torch.nn.ParameterDict({k: torch.nn.Parameter(v.to(dev)) for k, v in state["params"].items()})
        self.optimizers = self.make_optimizers()
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])  # moves the moments to the parameters' device
        self.heads.load_state_dict(state["heads"])
        if self.head_opt is not None and state["head_opt"] is not None:
            self.head_opt.load_state_dict(state["head_opt"])
        self.state = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in state["strategy"].items()}
        self.step, self.elapsed, self.curves = int(state["step"]), float(state["elapsed"]), list(state["curves"])
        self.cpu_elapsed = float(state.get("cpu_elapsed", 0.0))
        self.gen.set_state(state["generator"])
        set_rng_state(state["rng"])

    def decay_means_lr(self) -> None:
        s = self.sched
        gamma = (self.cfg.lr_means_final / s.lr_means) ** (1.0 / max(s.iterations, 1))
        for group in self.optimizers["means"].param_groups:
            group["lr"] = group["lr"] * gamma

    def reset_opacities(self) -> bool:
        """Every ``reset_every`` steps while densifying, clamp opacities to 2x the prune threshold
        (3DGS's opacity reset, which gsplat 1.5.3's DefaultStrategy never reaches; not when the
        installed gsplat does it itself, :func:`gsplat_resets_opacities`); returns whether it did."""
        from gsplat.strategy.ops import reset_opa

        s = self.sched
        if gsplat_resets_opacities() or not (0 < self.step < s.densify_stop and self.step % s.reset_every == 0):
            return False
        reset_opa(self.params, self.optimizers, self.state, value=2.0 * self.cfg.prune_opacity)
        return True


@functools.cache
def gsplat_resets_opacities() -> bool:
    """Whether the installed gsplat's ``DefaultStrategy`` resets opacities itself at a reset step
    (1.5.3 never does: a chained comparison; a fixed release will), asked of its behaviour: one
    post-backward callback at step ``reset_every``, its statistics update and ``reset_opa`` stubbed."""
    import gsplat.strategy.default as gs_default

    calls: list[dict[str, Any]] = []
    strategy = gs_default.DefaultStrategy(refine_start_iter=10**9, refine_stop_iter=10**9, reset_every=2)
    strategy._update_state = lambda *args, **kwargs: None
    real = gs_default.reset_opa
    gs_default.reset_opa = lambda **kwargs: calls.append(kwargs)
    try:
        strategy.step_post_backward({}, {}, {}, step=2, info={})
    finally:
        gs_default.reset_opa = real
    return bool(calls)


def view_order(n: int, step: int, seed: int) -> int:
    """Index of the training view of ``step``: a fresh seeded permutation every epoch."""
    epoch, k = divmod(step, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    return int(perm[k])


def train(scene: Scene, cfg: TrainConfig, models: list[str], progress: bool | None = None) -> Trainer:
    """Train (or resume) ``scene``'s Gaussians; returns the trainer after the schedule's iterations.

    The device and the schedule are resolved once, here. ``progress``: show the bar (None: the
    policy of :mod:`pipeline.core.progress`)."""
    device = resolve_device(cfg.device, "train")
    torch.manual_seed(cfg.seed)
    threads = CpuThreads(cfg.cpu_threads) if torch.device(device).type == "cpu" else None  # CUDA: torch's default
    inputs = open_inputs(scene, cfg, models, device)
    tr = Trainer(scene, cfg, models, inputs)
    iterations = tr.sched.iterations
    ckpt = scene.model_dir / CHECKPOINT_FILE
    load_checkpoint(tr, ckpt)
    saved_at = time.perf_counter()
    bar = progress_bar(total=iterations, initial=tr.step, desc=f"train {scene.name}", unit="step", show=progress)
    start, cpu_start = time.perf_counter() - tr.elapsed, time.process_time() - tr.cpu_elapsed
    while tr.step < iterations:
        if threads is not None:
            threads.update()
        view = inputs.train[view_order(len(inputs.train), tr.step, cfg.seed)]
        terms = tr.train_step(view)
        tr.elapsed, tr.cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
        if tr.step % cfg.log_every == 0 or tr.step == iterations:
            tr.curves.append(
                {
                    "step": tr.step,
                    "gaussians": len(tr.params["means"]),
                    "seconds": round(tr.elapsed, 2),
                    **{f"loss_{k}": v for k, v in terms.items()},
                }
            )
        bar.set_postfix(loss=f"{sum(terms.values()):.4f}", gaussians=len(tr.params["means"]))
        bar.update(1)
        due = time.perf_counter() - saved_at >= 60 * cfg.checkpoint_minutes
        if tr.step % cfg.checkpoint_every == 0 or tr.step == iterations or due:
            save_checkpoint(tr, ckpt)
            saved_at = time.perf_counter()
    bar.close()
    tr.peak_ram_mb = peak_ram_mb()
    return tr


__all__ = ["Trainer", "train", "open_inputs", "scene_scale", "training_views"]
