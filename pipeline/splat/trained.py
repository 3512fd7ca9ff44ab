"""A trained memory on disk (``data/<scene>/model/``) and how to use it.

Folder layout (written by :func:`write_model`, read by :meth:`TrainedMemory.load`)::

    point_cloud.ply   standard 3DGS PLY + q_<model>_<k> query attributes
    memory.safetensors  per-model heads: W_m [l, d] + bank [t, d] (memory) or decoder weights
                      (distill), and the spec that rebuilds them (tensors + JSON: loading runs no code)
    config.json       method, models, query dims, feature-map sizes, SH degree, provenance (bank hashes)
    checkpoint.safetensors  resumable training state (not a DVC output: see pipeline.splat.checkpoint)
    stats.json        steps, seconds, Gaussians, final losses, peak RAM
    curves.csv        training curves (DVC plots)
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from pipeline.core.errors import M3Error
from pipeline.core.io import atomic_write, read_json, write_json
from pipeline.core.scene import Scene, View
from pipeline.splat.gaussians import QUERY_PREFIX, load_ply, render_rgb, save_ply, scaled_K, sh_degree_of
from pipeline.splat.memory import load_heads, save_heads
from pipeline.splat.principal_queries import Camera, feature_grid_queries

if TYPE_CHECKING:  # training's imports (feature stores, banks) are not needed to read a memory
    from pipeline.splat.train import Trainer

HEADS_FILE = "memory.safetensors"
LEGACY_HEADS_FILE = "memory.pt"  # pickles of m3 before 2026-12: never loaded


@dataclass
class RenderOut:
    """``rgb [H, W, 3]`` in [0, 1], ``alpha [H, W]``, ``features {model: [h, w, d_m]}``."""

    rgb: Tensor
    alpha: Tensor
    features: dict[str, Tensor]


def write_model(model_dir: Path, trainer: Trainer, stats: dict[str, Any]) -> None:
    """Write the final Gaussians, heads, config, stats and curves of ``trainer`` (each file atomically)."""
    cfg, inp = trainer.cfg, trainer.inp
    model_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "method": cfg.method,
        "query_dims": {m: cfg.query_dims[m] for m in trainer.models},
        "feature_dims": {m: int(inp.stores[m].shape[2]) for m in trainer.models},
        "tau": cfg.tau,
        "learn_projection": cfg.learn_projection,
        "decoder_hidden": cfg.decoder_hidden,
        "feature_render": cfg.feature_render,
    }
    atomic_write(model_dir / "point_cloud.ply", lambda p: save_ply(p, trainer.params))
    save_heads(model_dir / HEADS_FILE, trainer.heads, spec)
    config = {
        **spec,
        "models": trainer.models,
        "sh_degree": cfg.sh_degree,
        "backend": cfg.backend,
        "feature_sizes": {m: list(inp.stores[m].shape[:2]) for m in trainer.models},
        "test_views": [v.name for v in inp.test],
        "provenance": inp.provenance,
        "max_side": trainer.sched.max_side,  # training image side (0: full size)
    }
    write_json(model_dir / "config.json", config)
    write_json(model_dir / "stats.json", stats)
    keys = list(dict.fromkeys(k for row in trainer.curves for k in row))

    def curves(p: Path) -> None:
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(trainer.curves)

    atomic_write(model_dir / "curves.csv", curves)


class TrainedMemory:
    """Gaussians + heads of a trained scene; renders RGB and every model's features at any view."""

    def __init__(self, params: dict[str, Tensor], heads: torch.nn.ModuleDict, config: dict[str, Any], device: str):
        self.params, self.heads, self.config, self.device = params, heads, config, device
        self.models: list[str] = list(config["models"])
        self.method: str = config["method"]
        self.sh_degree = sh_degree_of(params)
        self.backend = config.get("backend", "auto")
        self.feature_render = config.get("feature_render", "cells")

    @classmethod
    def load(cls, scene: Scene, device: str = "cpu") -> TrainedMemory:
        """Load ``scene.model_dir`` onto ``device``."""
        d = scene.model_dir
        if not (d / "config.json").is_file():
            raise M3Error(f"{d}: no trained model; run `m3 train {scene.name}` first")
        if not (d / HEADS_FILE).is_file() and (d / LEGACY_HEADS_FILE).is_file():
            raise M3Error(
                f"{d / LEGACY_HEADS_FILE}: a pickle written by an older m3, not loaded (loading a pickle can run "
                f"code); retrain with `m3 train {scene.name}` to get {HEADS_FILE}"
            )
        config = read_json(d / "config.json")
        params = {k: v.to(device) for k, v in load_ply(d / "point_cloud.ply").items()}
        heads, _ = load_heads(d / HEADS_FILE, device)
        missing = [m for m in config["models"] if QUERY_PREFIX + m not in params]
        if missing:
            raise M3Error(f"{d / 'point_cloud.ply'}: no queries for {missing[0]}; retrain with `m3 train {scene.name}`")
        return cls(params, heads.eval(), config, device)

    @property
    def means(self) -> Tensor:
        """Gaussian centres ``[N, 3]``."""
        return self.params["means"]

    @property
    def opacities(self) -> Tensor:
        """Gaussian opacities ``[N]`` in [0, 1]."""
        return torch.sigmoid(self.params["opacities"])

    def feature_size(self, model: str) -> tuple[int, int]:
        """The stored feature-map size ``(h, w)`` of ``model``."""
        h, w = self.config["feature_sizes"][model]
        return int(h), int(w)

    @torch.no_grad()
    def render(self, view: View, models: list[str] | None = None) -> RenderOut:
        """RGB at the view's size and each model's (or each of ``models``') features at its feature-map size."""
        unknown = [m for m in models or [] if m not in self.models]
        if unknown:
            raise M3Error(f"model '{unknown[0]}' is not in this memory ({', '.join(self.models)}); pick one of those")
        viewmat = torch.as_tensor(np.asarray(view.w2c), dtype=torch.float32, device=self.device)
        K = torch.as_tensor(np.asarray(view.K), dtype=torch.float32, device=self.device)
        rgb, alpha, _ = render_rgb(self.params, viewmat, K, view.width, view.height, self.sh_degree, self.backend)
        feats = {}
        camera = Camera(viewmat, K, view.width, view.height)
        for m in self.models if models is None else models:
            q = feature_grid_queries(self.params, m, camera, self.feature_size(m), self.feature_render, self.backend)
            feats[m] = self.heads[m](q)
        return RenderOut(rgb.clamp(0, 1), alpha, feats)

    @torch.no_grad()
    def render_depth(self, view: View, width: int, height: int) -> Tensor:
        """Expected depth ``[height, width]`` (camera z, alpha-normalised; inf where nothing is drawn)."""
        from pipeline.splat.gaussians import activated
        from pipeline.splat.raster import rasterize

        viewmat = torch.as_tensor(np.asarray(view.w2c), dtype=torch.float32, device=self.device)
        K = scaled_K(
            torch.as_tensor(np.asarray(view.K), dtype=torch.float32, device=self.device),
            view.width,
            view.height,
            width,
            height,
        )
        means, quats, scales, opac = activated(self.params, detach=True)
        z = means @ viewmat[:3, 2] + viewmat[2, 3]
        d, alpha, _ = rasterize(
            means, quats, scales, opac, z[:, None], viewmat[None], K[None], width, height, backend=self.backend
        )
        a = alpha[0, ..., 0]
        return torch.where(a > 1e-3, d[0, ..., 0] / a.clamp_min(1e-3), torch.full_like(a, float("inf")))

    @torch.no_grad()
    def gaussian_features(self, model: str) -> Tensor:
        """Each Gaussian's own query mapped into ``model``'s space ``[N, d_m]``."""
        if model not in self.models:
            raise M3Error(f"model '{model}' is not in this memory ({', '.join(self.models)}); pick one of those")
        return self.heads[model](self.params[QUERY_PREFIX + model])
