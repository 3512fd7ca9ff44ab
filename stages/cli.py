"""The ``m3`` command: one sub-command per stage (for reruns outside DVC) plus tools.

Each command lives in its own module (``cli`` there) and is imported only when it runs, so
``m3 train`` executes exactly ``stages/train.py`` and what it imports: the files its DVC stage
depends on (``tests/stages/test_dvc_deps.py`` checks that ``dvc.yaml`` covers them).
"""

from __future__ import annotations

import importlib
from typing import Any

import click
import typer
from typer.core import TyperGroup

from pipeline.core.progress import set_progress
from stages.command import setup_logging, stop_on_sigterm

COMMANDS = {
    "demo-scene": "stages.demo",
    "frames": "stages.frames",
    "poses": "stages.poses",
    "features": "stages.features",
    "bank": "stages.bank",
    "train": "stages.train",
    "evaluate": "stages.evaluate",
    "render": "stages.render",
    "query": "stages.query",
    "export": "stages.export",
    "view": "stages.view",
    "ask": "stages.ask",
    "share": "stages.share",
    "cluster": "stages.cluster",
    "params": "stages.params",
}
"""Command name -> the module defining it (``cli``: a function or a typer app with sub-commands)."""


class LazyGroup(TyperGroup):
    """Lists :data:`COMMANDS` in pipeline order and imports a command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        cli: Any = importlib.import_module(COMMANDS[name]).cli
        if isinstance(cli, typer.Typer):
            group = typer.main.get_group(cli)
            group.name = name
            return group
        sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
        sub.command(name, help=cli.__doc__)(cli)
        return typer.main.get_command(sub)


app = typer.Typer(
    name="m3",
    cls=LazyGroup,
    help="M3 spatial multimodal memory: frames -> poses -> features -> bank -> train -> evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: option names are never truncated to fit a narrow terminal
)


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging"),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="progress bars (default: when stderr is a terminal)"
    ),
) -> None:
    """M3: turn a video or photo set of a static scene into a queryable 3D memory."""
    setup_logging(verbose)
    set_progress(progress)
    stop_on_sigterm()


if __name__ == "__main__":
    app()
