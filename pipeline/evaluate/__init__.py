"""Stage ``evaluate`` and the query tools: ``metrics`` (PSNR, SSIM, LPIPS, feature errors,
grounding IoUs), ``evaluation`` (held-out views, grounding samples), ``lerf`` (the LERF-OVS
protocol), ``query`` (text or vector -> relevance in 2D and 3D), ``relevance`` (per-Gaussian
relevance from the bank), ``session`` (a memory ready for queries) and ``export`` (answers as
Gaussians)."""
