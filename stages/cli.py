"""The ``m3`` command: one sub-command per stage (for reruns outside DVC) plus tools.

Each command is defined in its stage module as ``cli`` and only registered here.
"""
from __future__ import annotations

import typer

from stages.common import setup_logging

app = typer.Typer(
    name="m3",
    help="M3 spatial multimodal memory: frames -> poses -> features -> bank -> train -> evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    """M3: turn a video or photo set of a static scene into a queryable 3D memory."""
    setup_logging(verbose)


def _register() -> None:
    from stages import bank, demo, evaluate, features, frames, poses, query, render, share, train

    app.command("demo-scene", help=demo.cli.__doc__)(demo.cli)
    app.command("frames", help=frames.cli.__doc__)(frames.cli)
    app.command("poses", help=poses.cli.__doc__)(poses.cli)
    app.command("features", help=features.cli.__doc__)(features.cli)
    app.command("bank", help=bank.cli.__doc__)(bank.cli)
    app.command("train", help=train.cli.__doc__)(train.cli)
    app.command("render", help=render.cli.__doc__)(render.cli)
    app.command("evaluate", help=evaluate.cli.__doc__)(evaluate.cli)
    app.command("query", help=query.cli.__doc__)(query.cli)
    app.add_typer(share.app, name="share")


_register()

if __name__ == "__main__":
    app()
