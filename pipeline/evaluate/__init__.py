"""Stage ``evaluate``: ``metrics`` (PSNR, SSIM, LPIPS, feature errors, grounding IoUs), ``evaluation``
(held-out views; :func:`~pipeline.evaluate.evaluation.evaluate_scene` is the stage), ``grounding``
(referring segmentation against user masks), ``lerf`` (the LERF-OVS protocol) and ``config``."""
