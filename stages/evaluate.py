"""Stage ``evaluate``: metrics of a trained memory on held-out views (+ grounding, LERF-OVS when given).

Reads ``params.yaml: evaluate``. Every ``test_every``-th registered view (0, 8, 16, ... — keep it
equal to the views the train stage held out) is rendered once, at the image size the memory was
trained at (the schedule's ``max_side``, recorded in the model) unless ``max_side`` names another; outputs::

    data/<scene>/eval/metrics.json     DVC metrics: test_views, psnr, ssim (lpips when available),
                                       features.<model>.{cosine, l2, cells} (Table 1 protocol) and
                                       {baseline_cosine, baseline_l2} (the constant mean feature of
                                       the training views, for reference), gaussians, model_size_mb,
                                       banks.<model>.{slots, size_mb}, grounding.{mIoU, cIoU,
                                       precision@0.5, precision@0.6, samples} when
                                       data/<scene>/grounding.json exists, lerf_ovs.{
                                       localization_accuracy, mIoU, queries, frames, 3d.{mIoU,
                                       precision, recall, labels}} when the evaluate.lerf.labels
                                       folder exists, seconds
    data/<scene>/eval/per_view.json    method, image_size, notes (e.g. why LPIPS is missing),
                                       per-view metrics, grounding IoUs, LERF-OVS per query
    data/<scene>/eval/provenance.json  config, inputs (the model files) and code hashes
    data/<scene>/eval/renders/         <view>.png: render | ground truth, for the first n_renders views

Compare memory and distillation on the same scene with ``dvc exp run -S train.method=distill``
and ``dvc metrics diff`` / ``dvc exp show`` (see the docs). The work is
:func:`pipeline.evaluate.evaluation.evaluate_scene`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.evaluate.config import EvaluateConfig
from stages.command import PARAMS, SCENE, Options, command, resolve_scene

if TYPE_CHECKING:
    from pipeline.core.scene import Scene

log = logging.getLogger(__name__)


def run(config: EvaluateConfig, scene: Scene) -> dict[str, Any]:
    """Evaluate ``scene``'s trained memory; returns the metrics plus method, image_size and notes."""
    from pipeline.evaluate.evaluation import evaluate_scene

    metrics, details = evaluate_scene(config, scene)
    feats = ", ".join(
        f"{m} cos {v['cosine']:.4f} (mean feature {v['baseline_cosine']:.4f}) / L2 {v['l2']:.4f}"
        for m, v in metrics["features"].items()
    )
    log.info(
        "%s (%s): %d held-out views, PSNR %.2f dB, SSIM %.4f, %s; %d Gaussians, %.2f MB", scene.name,
        details["method"], metrics["test_views"], metrics["psnr"], metrics["ssim"], feats, metrics["gaussians"],
        metrics["model_size_mb"],
    )  # fmt: skip
    return {**metrics, **{k: details[k] for k in ("method", "image_size", "notes")}}


@command(EvaluateConfig)
def cli(options: Options[EvaluateConfig], scene: str = SCENE, params: Path = PARAMS) -> None:
    """Evaluate the trained memory on held-out views: PSNR, SSIM, feature cosine/L2 per model, sizes.

    Writes data/<scene>/eval/metrics.json (DVC metrics), per_view.json and renders/; adds grounding
    mIoU/cIoU/precision when data/<scene>/grounding.json exists.
    """
    run(options.load("evaluate", params), resolve_scene(scene))
