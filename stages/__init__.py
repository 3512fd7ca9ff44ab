"""Pipeline stages: one module per stage, each a ``run(config, scene) -> outputs`` function.

The typer commands (``stages/cli.py``) and the DVC ``cmd`` lines are thin adapters over them.
"""
