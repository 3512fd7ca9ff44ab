"""The training loop: 3D Gaussians + per-model principal queries + memory attention (or decoders).

Each step renders one training view: RGB at full size (loss 0.8 L1 + 0.2 (1 - SSIM)), and every
model's query map at that model's feature-map size (K scaled by (w/W, h/H)), with geometry
detached unless ``feature_grad_geometry``. ``pixels`` valid cells per model are sampled, mapped
through the model's head and compared with the stored features (0.5 (mean(1 - cos) + MSE)),
read one view at a time from the feature store. Densification and pruning: gsplat's
``DefaultStrategy`` (queries are params entries, so they are cloned/split/pruned too).

On CPU, views (images and intrinsics) are resampled so the longer side is ``cpu_max_side``
(:func:`training_views`; evaluate at that same size); on CUDA training uses the full size.

Every ``checkpoint_every`` steps ``checkpoint.pt`` is replaced atomically; a rerun with the same
config and inputs resumes from it. A non-finite loss raises :class:`M3Error` naming the step and
the term, leaving the last good checkpoint in place.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.bank.store import check_bank_matches, load_bank
from pipeline.core.code import code_hash
from pipeline.core.config import to_dict
from pipeline.core.errors import M3Error
from pipeline.core.images import load_image
from pipeline.core.io import atomic_write, config_hash, hash_files, provenance, same_provenance
from pipeline.core.runtime import peak_ram_mb, resolve_device
from pipeline.core.scene import Scene, View, load_points, load_views, resampled_views, split_views
from pipeline.features.store import FeatureStore
from pipeline.splat.config import TrainConfig
from pipeline.splat.gaussians import init_params, render_query, render_rgb, scaled_K
from pipeline.splat.losses import feature_loss, rgb_loss
from pipeline.splat.memory import build_heads

log = logging.getLogger(__name__)


def training_views(scene: Scene, cfg: TrainConfig) -> list[View]:
    """The scene's views at the training resolution (``cpu_max_side`` on CPU, full size on CUDA)."""
    views = load_views(scene)
    return resampled_views(views, cfg.cpu_max_side) if resolve_device(cfg.device, "train") == "cpu" else views


def scene_scale(views: list[View]) -> float:
    """1.1 x the largest distance of a camera centre from their mean (3DGS's normalisation radius)."""
    c = np.array([v.center for v in views])
    return 1.1 * float(np.linalg.norm(c - c.mean(0), axis=1).max()) if len(c) > 1 else 1.0


@dataclass
class Inputs:
    """Everything training reads: views, open feature stores, banks and the provenance."""

    train: list[View]
    test: list[View]
    stores: dict[str, FeatureStore]
    index: dict[str, dict[str, int]]
    banks: dict[str, torch.Tensor]
    bank_hashes: dict[str, str]
    provenance: dict[str, Any]


def open_inputs(scene: Scene, cfg: TrainConfig, models: list[str]) -> Inputs:
    """Views split, feature stores opened (not read), banks loaded and checked against them."""
    views = training_views(scene, cfg)
    train, test = split_views(views, cfg.test_every)
    if not train:
        raise M3Error(f"{scene.sparse_dir}: no training views after holding out every {cfg.test_every}th; add views")
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
        feats[m] = {"config_hash": fp.get("config_hash"), "inputs_hash": fp.get("inputs_hash")}
    config = {"train": to_dict(cfg), "models": models}
    inputs_hash = config_hash(
        {"colmap": hash_files(sorted(scene.sparse_dir.glob("*.bin"))), "banks": hashes, "features": feats}
    )
    prov = provenance("train", config, inputs_hash, code_hash(__name__), banks=hashes, features=feats)
    return Inputs(train, test, stores, index, banks, hashes, prov)


class Trainer:
    """State of one training run (params, heads, optimisers, densification) and its step."""

    def __init__(self, scene: Scene, cfg: TrainConfig, models: list[str], inputs: Inputs, device: str):
        from gsplat.strategy import DefaultStrategy

        self.scene, self.cfg, self.models, self.inp, self.device = scene, cfg, models, inputs, device
        dims = {m: cfg.query_dims[m] for m in models}
        xyz, rgb = load_points(scene)
        self.params = init_params(xyz, rgb, dims, cfg.sh_degree, cfg.init_opacity, seed=cfg.seed).to(device)
        self.heads = build_heads(
            cfg.method, inputs.banks, dims, cfg.tau, cfg.learn_projection, cfg.decoder_hidden, cfg.seed
        ).to(device)
        self.scale = scene_scale(inputs.train + inputs.test)
        self.optimizers = self._optimizers()
        head_params = list(self.heads.parameters())
        self.head_opt = torch.optim.Adam(head_params, lr=cfg.lr_heads, eps=1e-15) if head_params else None
        self.strategy = DefaultStrategy(
            prune_opa=cfg.prune_opacity,
            grow_grad2d=cfg.grad_threshold,
            refine_start_iter=cfg.densify_start,
            refine_stop_iter=cfg.densify_stop,
            refine_every=cfg.densify_every,
            reset_every=cfg.reset_every,
        )
        self.strategy.check_sanity(self.params, self.optimizers)
        self.state = self.strategy.initialize_state(scene_scale=self.scale)
        self.step, self.elapsed, self.curves = 0, 0.0, []
        self.images: dict[str, torch.Tensor] = {}
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.cfg
        lrs = {
            "means": c.lr_means * self.scale,
            "quats": c.lr_quats,
            "scales": c.lr_scales,
            "opacities": c.lr_opacities,
            "sh0": c.lr_sh0,
            "shN": c.lr_shN,
        }
        return {
            k: torch.optim.Adam([{"params": p, "lr": lrs.get(k, c.lr_query), "name": k}], eps=1e-15)
            for k, p in self.params.items()
        }

    def image(self, view: View) -> torch.Tensor:
        """The view's image ``[H, W, 3]`` in [0, 1] (uint8 cache: images only, never features)."""
        if view.name not in self.images:
            self.images[view.name] = torch.from_numpy(load_image(view.image_path, view.width, view.height))
        return self.images[view.name].to(self.device).float() / 255.0

    def degree(self) -> int:
        return min(self.cfg.sh_degree, self.step // max(self.cfg.sh_increase_every, 1))

    def train_step(self, view: View) -> dict[str, float]:
        """One optimisation step on ``view``; returns the loss terms (raises on non-finite)."""
        c, dev = self.cfg, self.device
        viewmat = torch.from_numpy(view.w2c).float().to(dev)
        K = torch.from_numpy(view.K).float().to(dev)
        rgb, _, info = render_rgb(self.params, viewmat, K, view.width, view.height, self.degree(), c.backend)
        self.strategy.step_pre_backward(self.params, self.optimizers, self.state, self.step, info)
        terms = {"rgb": rgb_loss(rgb, self.image(view), c.ssim_weight)}
        for m in self.models:
            terms[m] = self.feature_term(m, view, viewmat, K)
        for name, value in terms.items():
            if not torch.isfinite(value):
                kept = self.scene.model_dir / "checkpoint.pt"
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
        self.step += 1
        return {k: float(v.detach()) for k, v in terms.items()}

    def feature_term(self, model: str, view: View, viewmat: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        store = self.inp.stores[model]
        feats, valid = store.read(self.inp.index[model][view.name])
        h, w, _ = store.shape
        Kf = scaled_K(K, view.width, view.height, w, h)
        q = render_query(self.params, model, viewmat, Kf, w, h, not self.cfg.feature_grad_geometry, self.cfg.backend)
        cells = torch.from_numpy(np.flatnonzero(valid.reshape(-1)))
        if len(cells) == 0:
            return torch.zeros((), device=self.device)
        pick = cells[torch.randperm(len(cells), generator=self.gen)[: self.cfg.pixels]]
        target = torch.from_numpy(feats.reshape(h * w, -1)[pick.numpy()].astype(np.float32)).to(self.device)
        pred = self.heads[model](q.reshape(h * w, -1)[pick.to(self.device)])
        return feature_loss(pred, target)

    def decay_means_lr(self) -> None:
        c = self.cfg
        gamma = (c.lr_means_final / c.lr_means) ** (1.0 / max(c.iterations, 1))
        for group in self.optimizers["means"].param_groups:
            group["lr"] = group["lr"] * gamma

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, path: Path) -> None:
        blob = {
            "provenance": self.inp.provenance,
            "step": self.step,
            "elapsed": self.elapsed,
            "curves": self.curves,
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "heads": self.heads.state_dict(),
            "head_opt": self.head_opt.state_dict() if self.head_opt else None,
            "strategy": {k: v.cpu() if torch.is_tensor(v) else v for k, v in self.state.items()},
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),  # DefaultStrategy's splits sample from it
        }
        atomic_write(path, lambda tmp: torch.save(blob, tmp))

    def load_checkpoint(self, path: Path) -> bool:
        """Resume from ``path`` when it was made by the same config and inputs (else start over)."""
        if not path.is_file():
            return False
        try:
            blob = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as exc:  # a truncated or foreign file: start over
            log.warning("%s: unreadable checkpoint (%s); training from scratch", path, exc)
            return False
        if not same_provenance(blob.get("provenance") or {}, self.inp.provenance):
            log.info("%s: made by another config or inputs; training from scratch", path)
            return False
        self.params = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(v.to(self.device)) for k, v in blob["params"].items()}
        )
        self.optimizers = self._optimizers()
        for k, o in self.optimizers.items():
            o.load_state_dict(blob["optimizers"][k])
        self.heads.load_state_dict(blob["heads"])
        if self.head_opt is not None and blob["head_opt"] is not None:
            self.head_opt.load_state_dict(blob["head_opt"])
        self.state = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in blob["strategy"].items()}
        self.step, self.elapsed, self.curves = blob["step"], blob["elapsed"], blob["curves"]
        self.gen.set_state(blob["generator"])
        torch.set_rng_state(blob["torch_rng"])
        log.info("resuming %s from step %d", self.scene.name, self.step)
        return True


def view_order(n: int, step: int, seed: int) -> int:
    """Index of the training view of ``step``: a fresh seeded permutation every epoch."""
    epoch, k = divmod(step, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    return int(perm[k])


def train(scene: Scene, cfg: TrainConfig, models: list[str], progress: bool = True) -> Trainer:
    """Train (or resume) ``scene``'s Gaussians; returns the trainer after ``cfg.iterations`` steps."""
    device = resolve_device(cfg.device, "train")
    torch.manual_seed(cfg.seed)
    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    inputs = open_inputs(scene, cfg, models)
    tr = Trainer(scene, cfg, models, inputs, device)
    ckpt = scene.model_dir / "checkpoint.pt"
    tr.load_checkpoint(ckpt)
    bar = tqdm(total=cfg.iterations, initial=tr.step, desc=f"train {scene.name}", unit="step", disable=not progress)
    start = time.perf_counter() - tr.elapsed
    while tr.step < cfg.iterations:
        view = inputs.train[view_order(len(inputs.train), tr.step, cfg.seed)]
        terms = tr.train_step(view)
        tr.elapsed = time.perf_counter() - start
        if tr.step % cfg.log_every == 0 or tr.step == cfg.iterations:
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
        if tr.step % cfg.checkpoint_every == 0 or tr.step == cfg.iterations:
            tr.save_checkpoint(ckpt)
    bar.close()
    if not math.isfinite(tr.elapsed):
        tr.elapsed = 0.0
    tr.peak_ram_mb = peak_ram_mb()  # type: ignore[attr-defined]
    return tr


__all__ = ["Trainer", "train", "open_inputs", "scene_scale", "training_views"]
