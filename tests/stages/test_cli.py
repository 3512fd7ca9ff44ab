"""`m3 --help` and every sub-command's `--help` describe every option and argument, and load no
heavy library (a fresh process runs each)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import click
import pytest
import typer.main
from typer.testing import CliRunner

from stages import cli as cli_module
from stages.cli import app, source_help
from tests.helpers.paths import REPO


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every leaf command of the app (sub-groups such as ``share`` recurse), with its path."""
    found = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        path = (*prefix, name)
        if isinstance(cmd, click.Group):
            found += [(path, cmd)] + _commands(cmd, path)
        else:
            found.append((path, cmd))
    return found


ROOT = typer.main.get_command(app)
COMMANDS = _commands(ROOT)  # type: ignore[arg-type]


def test_root_help_lists_every_command() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "poses" in [path[0] for path, _ in COMMANDS]
    for (name, *sub), cmd in COMMANDS:
        if sub:
            continue
        assert name in result.output
        assert (cmd.help or cmd.short_help or "").strip(), f"m3 {name} has no help text"
    for param in ROOT.params:
        assert getattr(param, "help", None), f"m3 option {param.name} has no help text"


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_has_help(path: tuple[str, ...], cmd: click.Command) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert (cmd.help or "").strip(), f"m3 {' '.join(path)} has no docstring/help"
    for param in cmd.params:
        if param.name == "help":
            continue
        assert (getattr(param, "help", None) or "").strip(), f"m3 {' '.join(path)}: {param.name} has no help text"
        if isinstance(param, click.Option):
            assert any(opt in result.output for opt in param.opts), f"{param.opts} missing from --help"


def test_poses_help_names_its_options() -> None:
    result = CliRunner().invoke(app, ["poses", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for opt in (
        "--source",
        "--import-path",
        "--matcher",
        "--camera-model",
        "--single-camera",
        "--max-num-features",
        "--min-registered",
        "--seed",
        "--params",
    ):
        assert opt in result.output


def test_scene_arguments_names_paths_and_dvc_stage_addresses(tmp_path, monkeypatch) -> None:
    from pipeline.core.errors import M3Error
    from stages.command import scene_target

    assert scene_target("demo") == (scene_target("data/demo")[0], None)
    assert scene_target(str(tmp_path / "any name"))[0].root == tmp_path / "any name"  # a path: any folder
    for address, scene, model in (
        ("features@my-scene.v2-sam_clip", "my-scene.v2", "sam_clip"),
        ("../dvc.yaml:train@demo", "demo", None),
    ):
        monkeypatch.setenv("DVC_STAGE", address)  # what `dvc repro` sets for the command
        assert (scene_target(address)[0].name, scene_target(address)[1]) == (scene, model)
    for bad in ("frames@x; touch /tmp/INJECTED #", "bank@../../etc-clip", "frames@my scene"):
        monkeypatch.setenv("DVC_STAGE", bad)
        with pytest.raises(M3Error, match="is not allowed"):
            scene_target(bad)
    for bad in ("my scene", "..", "-rf", "x;y"):
        with pytest.raises(M3Error, match="is not allowed"):
            scene_target(bad)


HEAVY = ("torch", "numpy", "zarr", "dvc", "pycolmap", "transformers")
"""Libraries a command's help must not load (torch alone takes seconds)."""
HELP_RUN = """
import sys
from stages.cli import app
try:
    app({args!r})
except SystemExit as exc:
    assert exc.code == 0, f"exit status {{exc.code}}"
print("loaded:", *(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("args", [["--help"]] + [[name, "--help"] for name in cli_module.COMMANDS], ids=" ".join)
def test_help_loads_no_heavy_library(args: list[str]) -> None:
    code = HELP_RUN.format(args=args, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stdout.rpartition("loaded:")[2].split()
    assert loaded == [], f"m3 {' '.join(args)} imports {', '.join(loaded)} (import it inside the command's function)"


def test_root_help_is_read_from_the_sources() -> None:
    for (name, *sub), cmd in COMMANDS:
        if not sub:
            assert source_help(cli_module.COMMANDS[name]) == inspect.cleandoc(cmd.help or ""), name


def test_a_command_without_help_is_a_caller_bug(tmp_path, monkeypatch) -> None:
    (tmp_path / "helpless_command.py").write_text("def cli() -> None:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TypeError, match="needs a docstring"):
        source_help("helpless_command")
