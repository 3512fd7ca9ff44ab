"""DVC dependencies cannot go stale: every file a stage command imports is covered by its deps.

For each stage of ``dvc.yaml`` the command (``m3 <name> ...``) is mapped to its module
(:data:`stages.cli.COMMANDS`), the module's import closure inside ``pipeline/`` and ``stages/``
is computed (:func:`pipeline.core.code.import_closure`, the same closure the provenance code
hashes cover) and every file of it must lie under one of the stage's ``deps``.
"""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from pipeline.core.code import import_closure
from stages.cli import COMMANDS
from tests.helpers.paths import REPO


def stage_specs(dvc: dict) -> dict[str, dict]:
    """``stage name -> {"cmd", "deps"}`` for every stage (``foreach``/``matrix`` bodies once each)."""
    specs = {}
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        specs[name] = {
            "cmd": body["cmd"],
            "deps": [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])],
        }
    return specs


def uncovered(dvc: dict) -> list[tuple[str, str]]:
    """``(stage, file)`` for every imported project file that no dependency of the stage covers."""
    missing = []
    for name, spec in stage_specs(dvc).items():
        words = spec["cmd"].split()
        assert words[0] == "m3" and words[1] in COMMANDS, f"stage {name}: cmd {spec['cmd']!r} is not an m3 command"
        deps = [d.rstrip("/") for d in spec["deps"] if "${" not in d]
        for path in import_closure("stages.cli", COMMANDS[words[1]]):
            rel = path.relative_to(REPO).as_posix()
            if not any(rel == d or rel.startswith(d + "/") for d in deps):
                missing.append((name, rel))
    return missing


@pytest.fixture(scope="module")
def dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_every_imported_file_is_a_dependency(dvc: dict) -> None:
    missing = uncovered(dvc)
    assert not missing, "dvc.yaml deps miss imported files:\n" + "\n".join(
        f"  stage {stage}: {file} (add it or its folder to the stage's deps)" for stage, file in missing
    )


def test_removing_a_dependency_is_caught(dvc: dict) -> None:
    """The check can fail: without ``pipeline/bank`` the train stage misses the bank store, and
    without ``stages/command.py`` every stage misses the command builder."""
    broken = copy.deepcopy(dvc)
    broken["stages"]["train"]["do"]["deps"].remove("pipeline/bank")
    assert ("train", "pipeline/bank/store.py") in uncovered(broken)
    for stage in broken["stages"].values():
        body = stage.get("do", stage)
        body["deps"].remove("stages/command.py")
    assert {stage for stage, file in uncovered(broken) if file == "stages/command.py"} == set(broken["stages"])


def test_the_query_tools_are_no_dependency_of_evaluate(dvc: dict) -> None:
    """``m3 ask``, ``export`` and ``query`` live in ``pipeline/query`` beside what evaluate uses:
    changing them must not rerun the evaluate stage."""
    deps = stage_specs(dvc)["evaluate"]["deps"]
    for tool in ("pipeline/query/ask.py", "pipeline/query/export.py", "pipeline/query/find.py"):
        assert not any(tool == d or tool.startswith(d.rstrip("/") + "/") for d in deps), tool


def test_closure_follows_function_level_and_registry_imports() -> None:
    files = {p.relative_to(REPO).as_posix() for p in import_closure("stages.features")}
    assert "pipeline/features/models/sam_clip.py" in files  # loaded by the registry (pkgutil)
    assert "pipeline/core/errors.py" in files and "pipeline/__init__.py" in files
    assert not any(re.match(r"pipeline/(splat|query|evaluate|demo)/", f) for f in files)
    query = {p.relative_to(REPO).as_posix() for p in import_closure("pipeline.query.encode")}
    assert "pipeline/features/models/clip.py" in query  # imported inside a function
