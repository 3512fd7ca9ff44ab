"""m3 library: everything reusable, nothing that knows about DVC or the CLI.

Grouped by pipeline stage (each subpackage's docstring lists its modules)::

    core/      errors, typed config, atomic I/O + provenance, scenes and views, images, devices
    poses/     frames from a video or photos, pycolmap SfM, COLMAP / transforms.json import
    features/  the zarr feature store and the foundation-model adapters (``models/`` registry)
    bank/      PSC memory banks: streamed cover, re-centring caps, stored banks
    splat/     3D Gaussians, rasterizer backends, memory heads, losses, training, trained memory
    evaluate/  metrics, held-out evaluation, grounding, text/vector queries
    demo/      the procedural demo scene

Modules log through ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

from pipeline.core.errors import M3Error

__all__ = ["M3Error"]
