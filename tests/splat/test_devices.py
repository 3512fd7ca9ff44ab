"""The GPU path, checked on the CPU: resume on another device, gsplat's missing CUDA build, the
opacity reset, the two schedules, provenance of device and resolution, threads only on the CPU.

CUDA itself is exercised by the ``gpu`` tests and ``benchmarks/gpu.sh``; here the decisions the
CUDA path depends on run without a GPU.
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import pytest
import torch

import pipeline.splat.train as T
from pipeline.core.config import load_config
from pipeline.core.errors import M3Error
from pipeline.core.scene import Scene
from pipeline.core.tensorfile import load_state
from pipeline.splat import raster
from pipeline.splat.checkpoint import CHECKPOINT_FILE, load_checkpoint
from pipeline.splat.config import Schedule, TrainConfig, cpu_schedule
from pipeline.splat.gaussians import colors_from_sh, init_params
from tests.helpers.paths import REPO
from tests.helpers.training import build_scene, quick_config


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Scene:
    return build_scene(tmp_path_factory.mktemp("devices") / "s", n_views=10, width=64, height=48, n_points=300)


def test_resume_on_another_device_keeps_generator_states_on_the_cpu(scene: Scene) -> None:
    """A checkpoint resumed by a trainer on another device (``meta`` stands in for CUDA: tensors
    move, values do not matter) keeps the random-generator states CPU byte tensors; loading it
    with ``map_location=<device>`` made ``Generator.set_state`` reject them."""
    cfg = quick_config(iterations=2, checkpoint_every=2, seed=3)
    (scene.model_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    T.train(scene, cfg, ["clip"], progress=False)
    tr = T.Trainer(scene, cfg, ["clip"], T.open_inputs(scene, cfg, ["clip"], "cpu"))
    tr.device = "meta"
    assert load_checkpoint(tr, scene.model_dir / CHECKPOINT_FILE)
    assert tr.step == 2 and tr.params["means"].device.type == "meta"
    assert tr.state["grad2d"].device.type == "meta"
    assert tr.gen.get_state().device.type == "cpu"
    blob = load_state(scene.model_dir / CHECKPOINT_FILE)
    assert blob["rng"]["cuda_rng"] is None  # saved only when training on CUDA


def test_gsplat_unbuilt_falls_back_to_torch_with_one_warning(monkeypatch) -> None:
    """Without gsplat's compiled CUDA module, ``auto`` on CUDA rasterizes and evaluates SH with the
    torch backend after one warning saying how to build gsplat; an explicit ``gsplat`` is an error."""
    stub = types.ModuleType("gsplat.cuda._backend")
    stub._C = None
    monkeypatch.setitem(sys.modules, "gsplat.cuda._backend", stub)
    monkeypatch.setattr(sys.modules["gsplat.cuda"], "_backend", stub, raising=False)
    raster.gsplat_cuda.cache_clear()
    raster._warn_fallback.cache_clear()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger(raster.__name__).addHandler(handler)
    try:
        assert raster.resolve_backend("auto", "cuda") == "torch"
        assert raster.resolve_backend("auto", "cuda:0") == "torch"
    finally:
        logging.getLogger(raster.__name__).removeHandler(handler)
    warnings = [r.getMessage() for r in records]
    assert len(warnings) == 1 and "CUDA_HOME" in warnings[0] and "TORCH_CUDA_ARCH_LIST" in warnings[0]
    with pytest.raises(M3Error, match=r"train.backend: gsplat's CUDA extension is unavailable .*MAX_JOBS"):
        raster.resolve_backend("gsplat", "cuda")
    with pytest.raises(M3Error, match="gsplat needs CUDA"):
        raster.resolve_backend("gsplat", "cpu")
    assert raster.resolve_backend("torch", "cuda") == "torch"
    raster.gsplat_cuda.cache_clear()
    raster._warn_fallback.cache_clear()


def test_sh_colours_follow_the_resolved_backend(monkeypatch) -> None:
    """``colors_from_sh`` asks the backend resolver, so backend ``torch`` never reaches gsplat's CUDA
    SH kernel (it used to pick the kernel by tensor device alone)."""
    import gsplat

    asked = []
    monkeypatch.setattr(raster, "resolve_backend", lambda backend, device: asked.append(backend) or "torch")
    monkeypatch.setattr(gsplat, "spherical_harmonics", lambda *a, **k: pytest.fail("CUDA SH kernel called"))
    p = init_params(torch.rand(20, 3).numpy(), (torch.rand(20, 3) * 255).byte().numpy(), {}, 2)
    rgb = colors_from_sh(p, torch.eye(4), 2, backend="torch")
    assert rgb.shape == (20, 3) and asked == ["torch"]


def test_opacity_reset_fires_every_reset_every_steps(scene: Scene, monkeypatch) -> None:
    """gsplat 1.5.3's DefaultStrategy never resets opacities; the trainer does, every
    ``reset_every`` steps while densifying: right after step 3 every opacity is <= 2 x prune_opacity."""
    seen = {}
    real = T.Trainer.reset_opacities

    def spy(self):
        done = real(self)
        if done:
            seen[self.step] = float(torch.sigmoid(self.params["opacities"].detach()).max())
        return done

    monkeypatch.setattr(T.Trainer, "reset_opacities", spy)
    (scene.model_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    cfg = quick_config(iterations=7, densify_start=100, densify_stop=7, reset_every=3, checkpoint_every=100)
    T.train(scene, cfg, ["clip"], progress=False)
    assert sorted(seen) == [3, 6]
    assert all(v <= 2 * cfg.prune_opacity + 1e-6 for v in seen.values()), seen


def test_opacities_reset_once_whether_or_not_gsplat_does_it(scene: Scene, monkeypatch) -> None:
    """With gsplat 1.5.3 (its reset never fires) the trainer resets; with a gsplat whose reset fires
    (the upstream fix, simulated) the trainer leaves it to gsplat: one reset per reset step either way."""
    import gsplat.strategy.default as gs_default

    resets: list[int] = []
    real = gs_default.reset_opa

    def counted(*args, **kwargs):
        resets.append(1)
        return real(*args, **kwargs)

    def fixed(self, params, optimizers, state, step, info, packed=False):  # 1.5.3's, the comparison fixed
        if step >= self.refine_stop_iter:
            return
        self._update_state(params, state, info, packed=packed)
        if step % self.reset_every == 0 and step > 0:
            gs_default.reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)

    monkeypatch.setattr(gs_default, "reset_opa", counted)
    monkeypatch.setattr("gsplat.strategy.ops.reset_opa", counted)
    cfg = quick_config(iterations=7, densify_start=100, densify_stop=7, reset_every=3, checkpoint_every=100)
    for strategy_fixed in (False, True):
        if strategy_fixed:
            monkeypatch.setattr(gs_default.DefaultStrategy, "step_post_backward", fixed)
        T.gsplat_resets_opacities.cache_clear()
        assert T.gsplat_resets_opacities() is strategy_fixed
        resets.clear()
        (scene.model_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        T.train(scene, cfg, ["clip"], progress=False)
        assert len(resets) == 2, (strategy_fixed, resets)  # steps 3 and 6
    T.gsplat_resets_opacities.cache_clear()


def test_schedules_follow_the_device_and_params_show_both() -> None:
    cfg = load_config(TrainConfig, "train", REPO / "params.yaml")
    assert cfg.cpu == cpu_schedule() and cfg.reference == Schedule()  # params.yaml shows both
    assert cfg.resolved("cpu") == cfg.cpu and cfg.resolved("cuda") == cfg.reference
    ref = cfg.reference
    assert (ref.iterations, ref.densify_start, ref.densify_stop, ref.reset_every) == (30000, 500, 15000, 3000)
    assert (ref.lr_query, ref.query_init, ref.sh_increase_every, ref.max_side) == (5e-4, 1.0, 1000, 0)
    forced = TrainConfig(schedule="reference")
    assert forced.resolved("cpu") == forced.reference


def test_provenance_records_device_and_resolution(scene: Scene) -> None:
    """A checkpoint only resumes on the device and at the image size it was trained with."""
    small = T.open_inputs(scene, quick_config(max_side=32), ["clip"], "cpu").provenance
    full = T.open_inputs(scene, quick_config(max_side=0), ["clip"], "cpu").provenance
    assert small["config"]["image_sizes"] == [[32, 24]] and full["config"]["image_sizes"] == [[64, 48]]
    assert small["config"]["device"] == "cpu" and small["config_hash"] != full["config_hash"]
    on_gpu = T.open_inputs(scene, quick_config(max_side=32), ["clip"], "cuda").provenance
    assert on_gpu["config"]["device"] == "cuda" and on_gpu["config_hash"] != small["config_hash"]


@pytest.mark.slow
def test_gpu_extra_resolves() -> None:
    """`pip install --dry-run -c constraints.txt ".[gpu]"` resolves (faiss-gpu replaces faiss-cpu)."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "-c", "constraints.txt", ".[gpu]"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "faiss-gpu-1.15.1" in proc.stdout and "torch-" not in proc.stdout.split("Would install")[-1]


def test_cpu_and_gpu_faiss_are_exclusive_extras() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("faiss")]
    extras = project["optional-dependencies"]
    assert extras["cpu"] == ["faiss-cpu==1.15.1"] and extras["gpu"] == ["faiss-gpu==1.15.1"]
    assert Path(REPO / "Makefile").read_text().count(".[dev,$(FAISS)") == 1
