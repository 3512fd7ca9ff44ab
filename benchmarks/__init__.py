"""Benchmarks: scripts that print tables (run them as `python -m benchmarks.<name>`)."""
