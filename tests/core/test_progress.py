"""One progress policy: bars at a terminal, none otherwise; `m3 --progress/--no-progress` decide."""

from __future__ import annotations

import io
import sys

from typer.testing import CliRunner

from pipeline.core import progress as P


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_follow_the_terminal_unless_told(monkeypatch) -> None:
    monkeypatch.setattr(P, "_ENABLED", None)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not P.progress_enabled() and P.progress(range(3)).disable  # a log file, CI, dvc into a pipe
    monkeypatch.setattr(sys, "stderr", Tty())
    assert P.progress_enabled() and not P.progress(range(3)).disable
    assert P.progress(range(3), show=False).disable  # one bar's own override
    P.set_progress(False)
    assert P.progress(range(3)).disable
    P.set_progress(True)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not P.progress(range(3)).disable


def test_the_root_option_sets_the_policy(monkeypatch) -> None:
    from stages.cli import app

    monkeypatch.setattr(P, "_ENABLED", None)
    for flag, expected in (("--no-progress", False), ("--progress", True)):
        assert CliRunner().invoke(app, [flag, "params", "demo"]).exit_code == 0
        assert P._ENABLED is expected
    P.set_progress(None)
