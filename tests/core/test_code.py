"""Source closures and code hashes: what provenance records about the code that made an artifact."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.core.code import code_hash, import_closure
from tests.helpers.paths import REPO


def _copy(tmp_path: Path) -> Path:
    for pkg in ("pipeline", "stages"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_code_hash_follows_the_closure_only(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    before = {m: code_hash(m, root=root) for m in ("stages.demo", "stages.bank")}
    with open(root / "pipeline/demo/raycast.py", "a") as f:
        f.write("# a comment is a change\n")
    assert code_hash("stages.demo", root=root) != before["stages.demo"]
    assert code_hash("stages.bank", root=root) == before["stages.bank"]  # the bank does not run the demo
    with open(root / "pipeline/bank/cover.py", "a") as f:
        f.write("\n")
    assert code_hash("stages.bank", root=root) != before["stages.bank"]


def test_closure_is_inside_the_project() -> None:
    files = import_closure("stages.train")
    assert all(p.is_relative_to(REPO) and p.suffix in (".py", ".cpp") for p in files)
    rel = {p.relative_to(REPO).as_posix() for p in files}
    assert {"stages/train.py", "pipeline/splat/train.py", "pipeline/bank/store.py", "pipeline/core/io.py"} <= rel
    assert not any(r.startswith(("pipeline/query/", "pipeline/evaluate/")) for r in rel)
    assert "pipeline/splat/csrc/composite.cpp" in rel  # the compiled rasterizer's source
