"""The ``m3`` command: one sub-command per stage (for reruns outside DVC) plus tools.

Each command lives in its own module (``cli`` there) and is imported only when it runs, so
``m3 train`` executes exactly ``stages/train.py`` and what it imports: the files its DVC stage
depends on (``tests/stages/test_dvc_deps.py`` checks that ``dvc.yaml`` covers them). ``m3 --help``
reads each command's help from its module's source and imports none of them; a command module
imports its library code inside its functions, so ``m3 <command> --help`` loads no torch either
(``benchmarks/cold_start.py`` times both).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
from pathlib import Path
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
    "serve": "stages.serve",
    "ask": "stages.ask",
    "share": "stages.share",
    "cluster": "stages.cluster",
    "params": "stages.params",
}
"""Command name -> the module defining it (``cli``: a function or a typer app with sub-commands)."""


def source_help(module: str) -> str:
    """The help of the command ``module`` defines, read from its source without importing it: the
    docstring of its ``cli`` function, or the string literal ``help=`` of ``cli = typer.Typer(...)``."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"command module {module} not found")
    for node in ast.parse(Path(spec.origin).read_text(), spec.origin).body:
        if isinstance(node, ast.FunctionDef) and node.name == "cli":
            doc = ast.get_docstring(node)
            if doc:
                return doc
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "cli" for t in node.targets):
            keywords = node.value.keywords if isinstance(node.value, ast.Call) else []
            for kw in keywords:
                if kw.arg == "help" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    return inspect.cleandoc(kw.value.value)
    raise TypeError(f"{spec.origin}: `cli` needs a docstring (or typer.Typer(help=<a string literal>)) for m3 --help")


class LazyGroup(TyperGroup):
    """Lists :data:`COMMANDS` in pipeline order and imports a command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands' one-line helps, as click shortens them, read from their sources (:func:`source_help`)."""
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        rows = [
            (name, click.Command(name, help=source_help(mod)).get_short_help_str(limit))
            for name, mod in COMMANDS.items()
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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
