"""Stage ``evaluate`` and the query tools: ``metrics`` (PSNR, SSIM, LPIPS, feature errors,
grounding IoUs), ``evaluation`` (held-out views, grounding samples) and ``query`` (text or
vector -> relevance in 2D and 3D)."""
