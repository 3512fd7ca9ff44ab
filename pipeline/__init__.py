"""m3 library: everything reusable, nothing that knows about DVC or the CLI.

Grouped by pipeline stage (each subpackage's docstring lists its modules)::

    core/      errors, typed configs, atomic I/O + output folders + provenance, tensor files,
               scenes and views, images, devices, progress bars
    cluster/   the cluster section and the Ray connection
    poses/     frames from a video or photos, pycolmap SfM, COLMAP / transforms.json import
    features/  the zarr feature store and the foundation-model adapters (``models/`` registry)
    bank/      PSC memory banks: streamed cover, re-centring caps, stored banks
    splat/     3D Gaussians, rasterizer backends, memory heads, losses, training, trained memory
    query/     using a trained memory: text/vector queries, relevance, 3D selection, query /
               export / ask
    evaluate/  metrics, held-out evaluation, grounding, LERF-OVS (above query/)
    view/      the browser viewer and m3 render (above query/)
    demo/      the procedural demo scene

Each stage's work on one scene is one library function (``pipeline/<subpackage>/stage.py``, or
``evaluate.evaluation.evaluate_scene``, ``query.find.find`` ...); ``stages/`` only parses options,
calls it and prints.

Modules log through ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

from pipeline.core.errors import M3Error

__all__ = ["M3Error"]
