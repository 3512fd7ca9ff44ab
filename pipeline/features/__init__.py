"""Stage ``features``: ``store`` (the per-model zarr feature store, streamed one view at a time)
and ``models`` (the registry of foundation-model adapters, one module each)."""
