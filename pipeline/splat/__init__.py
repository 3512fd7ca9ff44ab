"""Stage ``train``: ``gaussians`` (parameters, SH colours, PLY), ``raster`` / ``raster_torch``
(gsplat on CUDA, plain torch anywhere), ``memory`` (memory attention and distillation heads),
``losses``, ``train`` (the training loop) and ``trained`` (a trained memory on disk, rendering)."""
