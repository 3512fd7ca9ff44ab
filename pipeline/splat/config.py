"""Config of the ``train`` stage (``params.yaml: train``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


def _default_dims() -> dict[str, int]:
    return {"clip": 16, "siglip": 32, "dinov2": 32, "sam_clip": 16, "seem": 16, "llama3": 32, "llamav": 32}


@dataclass(frozen=True)
class TrainConfig:
    """``params.yaml: train``: Gaussians, principal queries and memory heads.

    The defaults are a short CPU schedule tuned on the demo scene; the reference 3DGS/M3 schedule
    on a GPU is 30000 iterations, densification 500..15000 every 100, opacity 0.1, lr sh0 2.5e-3,
    opacities 0.05, scales 5e-3, means 1.6e-4.
    """

    method: Literal["memory", "distill"] = "memory"
    """memory (M3 memory attention over the bank) | distill (F-3DGS style latent + decoder)."""
    iterations: int = 1000
    """Training steps (reference: 30000)."""
    query_dims: dict[str, int] = field(default_factory=_default_dims)
    """Principal query dims per model (used for the models listed in ``models`` only)."""
    sh_degree: int = 3
    """Spherical-harmonics degree of the colours."""
    sh_increase_every: int = 400
    """One more SH band every this many steps."""
    tau: float = 0.05
    """Memory attention softmax temperature."""
    learn_projection: bool = True
    """W_m learnable (lower held-out feature error in every run measured); false: fixed random, as the reference."""
    decoder_hidden: int = 0
    """Distill: 0 = a linear 1x1 conv decoder, else a 2-layer MLP of this width."""
    pixels: int = 2000
    """Sampled valid feature cells per view and model in each step."""
    feature_weight: float = 1.0
    """Weight of every model's feature loss against the RGB loss."""
    feature_grad_geometry: bool = False
    """Let feature gradients move the geometry (the reference does not)."""
    ssim_weight: float = 0.2
    """RGB loss: (1 - w) L1 + w (1 - SSIM)."""
    init_opacity: float = 0.5
    """Opacity of the initial Gaussians (reference: 0.1)."""
    lr_means: float = 4e-4
    """Learning rate of the means, x the scene scale, decaying exponentially to lr_means_final (reference 1.6e-4)."""
    lr_means_final: float = 1.6e-6
    """Final learning rate of the means (x the scene scale)."""
    lr_sh0: float = 2.5e-2
    """Learning rate of the SH DC colour (reference 2.5e-3)."""
    lr_shN: float = 1.25e-4
    """Learning rate of the higher SH bands."""
    lr_opacities: float = 0.1
    """Learning rate of the opacity logits (reference 0.05)."""
    lr_scales: float = 1e-2
    """Learning rate of the log-scales (reference 5e-3)."""
    lr_quats: float = 1e-3
    """Learning rate of the rotations."""
    lr_query: float = 5e-3
    """Learning rate of the principal queries (reference 5e-4)."""
    lr_heads: float = 1e-3
    """Learning rate of the learnt heads (W_m or decoders)."""
    densify_start: int = 100
    """First densification step (>= iterations: none; reference 500)."""
    densify_stop: int = 700
    """Last densification step (reference 15000)."""
    densify_every: int = 100
    """Densify and prune every this many steps."""
    grad_threshold: float = 6e-4
    """Mean 2D gradient above which a Gaussian is cloned or split (reference 2e-4: more Gaussians, slower on CPU)."""
    reset_every: int = 3000
    """Opacity reset period (>= iterations: never)."""
    prune_opacity: float = 0.005
    """Gaussians more transparent than this are pruned."""
    test_every: int = 8
    """Held-out views, never trained on: every test_every-th view (keep equal to evaluate.test_every)."""
    checkpoint_every: int = 500
    """Save the resumable checkpoint every this many steps."""
    log_every: int = 20
    """A curves.csv row every this many steps."""
    cpu_max_side: int = 80
    """On CPU, train and evaluate at this longer image side (0: full size); CUDA always trains at full size."""
    cpu_threads: int = 1
    """torch CPU threads (0: torch's default; 1 is fastest on a loaded 2-core machine)."""
    device: str = "auto"
    """auto | cpu | cuda."""
    backend: Literal["auto", "torch", "gsplat"] = "auto"
    """Rasterizer: auto (gsplat on CUDA, torch on CPU) | torch | gsplat."""
    seed: int = 0
    """Seed of the initial queries, the view order and the sampled cells."""
