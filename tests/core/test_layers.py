"""The library's layers: a subpackage imports only those below it, and nothing in it knows the CLI or DVC.

Imports are read from the source (module- and function-level alike), so a lazy import that
reaches upward fails here too.
"""

from __future__ import annotations

import ast

from tests.helpers.paths import REPO

BELOW = {
    "core": set(),
    "cluster": {"core"},
    "demo": {"core"},
    "poses": {"core"},
    "features": {"core", "cluster"},
    "bank": {"core", "features"},
    "splat": {"core", "features", "bank"},
    "query": {"core", "features", "bank", "splat"},
    "evaluate": {"core", "features", "bank", "splat", "query"},
    "view": {"core", "features", "bank", "splat", "query"},
}
"""Subpackage -> the subpackages it may import (besides itself)."""
FORBIDDEN = ("stages", "dvc", "typer", "click")


def imports(path) -> list[str]:
    """Every module ``path`` imports (absolute names)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def test_subpackages_import_only_downward_and_never_the_cli() -> None:
    packages = {p.name for p in (REPO / "pipeline").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(BELOW), f"a new subpackage: give it its layer in BELOW ({packages ^ set(BELOW)})"
    wrong = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        rel = path.relative_to(REPO / "pipeline").parts
        own = rel[0] if len(rel) > 1 else None
        for name in imports(path):
            top, _, rest = name.partition(".")
            if top in FORBIDDEN:
                wrong.append(f"{path.relative_to(REPO)} imports {name} (the library knows no CLI or DVC)")
            elif top == "pipeline" and own and rest:
                target = rest.split(".")[0]
                if target in BELOW and target != own and target not in BELOW[own]:
                    wrong.append(f"{path.relative_to(REPO)} imports {name} ({target} is not below {own})")
    assert not wrong, "\n".join(wrong)
