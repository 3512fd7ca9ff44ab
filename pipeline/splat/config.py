"""Config of the ``train`` stage (``params.yaml: train``) and its two named schedules."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pipeline.core.config import Checked, Count, Fraction, Natural, NonNegative, Opacity, Positive, Range


def _default_dims() -> dict[str, int]:
    return {"clip": 16, "siglip": 32, "dinov2": 32, "sam_clip": 16, "seem": 16, "llama3": 32, "llamav": 32}


@dataclass(frozen=True)
class Schedule(Checked):
    """The schedule-dependent part of training: how long, at what image size, with which learning
    rates and densification. The defaults are the M3 / 3DGS reference (a GPU: 30k steps at full
    size); :func:`cpu_schedule` is the short CPU one. ``train.reference`` and ``train.cpu`` hold one
    each; the resolved device picks one unless ``train.schedule`` names it."""

    iterations: Count = 30000
    """Training steps."""
    max_side: Natural = 0
    """Train and evaluate at this longer image side (images and intrinsics downscaled; 0: full size)."""
    patch: Natural = 0
    """Each step renders a random square of this many pixels of the view for the RGB loss (SSIM on
    the patch; 0: the whole view), so a step's cost does not grow with the image size."""
    downscales: Natural = 0
    """Start at 1/2^downscales of the training size, doubling every ``downscale_every`` steps (as
    nerfstudio's splatfacto: the coarse structure is fitted cheaply first; 0: full size throughout)."""
    downscale_every: Count = 250
    """Steps per resolution level while ``downscales`` remain."""
    init_opacity: Opacity = 0.1
    """Opacity of the initial Gaussians."""
    lr_means: Positive = 1.6e-4
    """Learning rate of the means, x the scene scale, decaying exponentially to lr_means_final."""
    lr_sh0: Positive = 2.5e-3
    """Learning rate of the SH DC colour."""
    lr_opacities: Positive = 0.05
    """Learning rate of the opacity logits."""
    lr_scales: Positive = 5e-3
    """Learning rate of the log-scales."""
    lr_query: Positive = 5e-4
    """Learning rate of the principal queries."""
    query_init: Positive = 1.0
    """Standard deviation of the initial random principal queries."""
    sh_increase_every: Count = 1000
    """One more SH band every this many steps."""
    densify_start: Natural = 500
    """First densification step (>= iterations: none)."""
    densify_stop: Natural = 15000
    """Densification, pruning and opacity resets stop at this step."""
    grad_threshold: Positive = 2e-4
    """Mean 2D gradient above which a Gaussian is cloned or split."""
    reset_every: Count = 3000
    """Opacity reset period (reset while step < densify_stop; >= densify_stop: never)."""


def cpu_schedule() -> Schedule:
    """The short CPU schedule (tuned on the demo scene): 320 px, coarse-to-fine (80 px, 160 px, then
    320 px in 128 px patches), raised learning rates, densification while coarse."""
    return Schedule(
        iterations=1600, max_side=320, patch=128, downscales=2, downscale_every=400, init_opacity=0.5, lr_means=4e-4,
        lr_sh0=2.5e-2, lr_opacities=0.1, lr_scales=1e-2, lr_query=5e-3, query_init=0.1, sh_increase_every=500,
        densify_start=100, densify_stop=800, grad_threshold=6e-4,
    )  # fmt: skip


@dataclass(frozen=True)
class TrainConfig(Checked):
    """``params.yaml: train``: Gaussians, principal queries and memory heads.

    The schedule-dependent keys (iterations, image size, learning rates, densification) live in
    two named schedules, ``cpu`` (short, small images) and ``reference`` (M3's GPU schedule);
    ``schedule: auto`` takes the CPU one on the CPU and the reference on CUDA.
    """

    method: Literal["memory", "distill"] = "memory"
    """memory (M3 memory attention over the bank) | distill (F-3DGS style latent + decoder)."""
    schedule: Literal["auto", "cpu", "reference"] = "auto"
    """Which schedule runs: auto (cpu on the CPU, reference on CUDA) | cpu | reference."""
    cpu: Schedule = field(default_factory=cpu_schedule)
    """The short CPU schedule (options --cpu.<key>)."""
    reference: Schedule = field(default_factory=Schedule)
    """The M3 reference schedule for a GPU (options --reference.<key>)."""
    query_dims: dict[str, Count] = field(default_factory=_default_dims)
    """Principal query dims per model (used for the models listed in ``models`` only)."""
    sh_degree: Annotated[int, Range(0, 3)] = 3
    """Spherical-harmonics degree of the colours."""
    tau: Positive = 0.05
    """Memory attention softmax temperature."""
    learn_projection: bool = True
    """W_m learnable (lower held-out feature error in every run measured); false: fixed random, as the reference."""
    decoder_hidden: Natural = 0
    """Distill: 0 = a linear 1x1 conv decoder, else a 2-layer MLP of this width."""
    pixels: Count = 2000
    """Sampled valid feature cells (or pixels) per view and model in each step."""
    feature_render: Literal["cells", "pixels"] = "pixels"
    """Render the queries for the feature loss at the image size of the step's window (pixels,
    supervised by the stored features interpolated bilinearly, as the reference; lower held-out
    feature error on the demo and lund) or at the feature-map size (cells, supervised by the stored
    cells; cheaper per step)."""
    feature_weight: NonNegative = 1.0
    """Weight of every model's feature loss against the RGB loss."""
    feature_grad_geometry: bool = False
    """Let feature gradients move the geometry (the reference does not)."""
    ssim_weight: Fraction = 0.2
    """RGB loss: (1 - w) L1 + w (1 - SSIM)."""
    lr_means_final: Positive = 1.6e-6
    """Final learning rate of the means (x the scene scale)."""
    lr_shN: Positive = 1.25e-4
    """Learning rate of the higher SH bands."""
    lr_quats: Positive = 1e-3
    """Learning rate of the rotations."""
    lr_heads: Positive = 1e-3
    """Learning rate of the learnt heads (W_m or decoders)."""
    densify_every: Count = 100
    """Densify and prune every this many steps."""
    prune_opacity: Annotated[float, Range(0, 0.5, below=True)] = 0.005
    """Gaussians more transparent than this are pruned (an opacity reset sets 2x this)."""
    test_every: Natural = 8
    """Held-out views, never trained on: every test_every-th view (keep equal to evaluate.test_every;
    LLFF's protocol: 8); a dataset split imported by the poses stage (colmap/split.json) replaces it."""
    background: Literal["white", "black", "random"] = "white"
    """Colour behind views whose images have alpha (RGBA inputs): their transparent pixels and the
    render are composited over it (white: the NeRF-synthetic convention; random: a new colour each
    step, as 3DGS's --random_background; evaluate then uses white). Views without alpha: unchanged."""
    checkpoint_every: Count = 500
    """Save the resumable checkpoint every this many steps."""
    checkpoint_minutes: NonNegative = 2.0
    """... and at least every this many minutes of training (a killed short or slow run loses little)."""
    log_every: Count = 20
    """A curves.csv row every this many steps."""
    cpu_threads: Natural = 0
    """torch threads when training on the CPU (0: one per core that other processes leave idle,
    re-measured every 10 s, see pipeline.core.threads: every core on an idle machine, fewer beside
    other jobs, where more threads only wait; n: exactly n, e.g. 1 for bit-identical reruns and
    resumes: parallel float sums differ in the last bits run to run)."""
    device: str = "auto"
    """auto | cpu | cuda."""
    backend: Literal["auto", "cpp", "torch", "gsplat"] = "auto"
    """Rasterizer: auto (gsplat on CUDA when its extension is built, the compiled CPU kernel on the
    CPU when it builds, else torch) | cpp | torch | gsplat."""
    seed: Natural = 0
    """Seed of the initial queries, the view order and the sampled cells."""

    def with_schedule(self, name: Literal["cpu", "reference"] = "cpu", **changes: Any) -> TrainConfig:
        """This config running schedule ``name`` with ``changes`` to its keys (scripts and tests)."""
        schedule: dict[str, Any] = {name: dataclasses.replace(getattr(self, name), **changes)}
        return dataclasses.replace(self, schedule=name, **schedule)

    def resolved(self, device: str) -> Schedule:
        """The schedule that runs on ``device`` (``cpu`` or ``cuda``)."""
        name = self.schedule if self.schedule != "auto" else ("cpu" if device == "cpu" else "reference")
        return self.cpu if name == "cpu" else self.reference
