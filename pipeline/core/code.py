"""Which project source files a module runs: its static import closure, and a hash of them.

A cached artifact is only as fresh as the code that made it. :func:`import_closure` follows every
``import`` statement (at any depth of the file, so imports inside functions count) from the given
modules through the project's own packages (``pipeline``, ``stages``), adding each package's
``__init__.py`` on the way. A package that imports its own modules dynamically
(``pkgutil.iter_modules`` in its ``__init__``, as the model registry does) brings all of them,
and native sources compiled at run time (``csrc/`` beside a module) come along.
:func:`code_hash` hashes the closure's bytes; provenance records it, so a change to any file the
stage runs invalidates the artifact, and the DVC dependency test uses the same closure.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the folder holding pipeline/ and stages/
PACKAGES = ("pipeline", "stages")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of module ``name`` (a package's ``__init__.py``), or None outside the project."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@functools.cache
def _imports(path: Path, name: str) -> tuple[str, ...]:
    """Project modules imported anywhere in ``path`` (module ``name``), including ``from X import m``
    submodules and the modules of a dynamically loading package."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append(mod)
            found += [f"{mod}.{a.name}" for a in node.names]  # kept only where a submodule exists
        elif (
            isinstance(node, ast.Attribute)
            and node.attr == "iter_modules"
            and isinstance(node.value, ast.Name)
            and node.value.id == "pkgutil"
            and path.name == "__init__.py"
        ):
            found += [f"{name}.{p.stem}" for p in sorted(path.parent.glob("*.py")) if p.name != "__init__.py"]
    return tuple(m for m in dict.fromkeys(found) if m.split(".")[0] in PACKAGES)


NATIVE = ("*.cpp", "*.h", "*.cu")
"""Native sources in a ``csrc/`` folder beside a module (compiled at run time) belong to its closure."""


def import_closure(*modules: str, root: Path = ROOT) -> list[Path]:
    """Sorted source files of ``modules`` and of every project module they import, transitively,
    plus the native sources (``csrc/``) beside them."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name, root)
        if path is None:
            if name in modules:
                raise ValueError(f"import_closure: {name} is not a module of {', '.join(PACKAGES)} under {root}")
            continue
        seen[name] = path
        todo += _parents(name) + list(_imports(path, name))
    files = set(seen.values())
    for folder in {p.parent / "csrc" for p in files}:
        files.update(f for pattern in NATIVE for f in folder.rglob(pattern))
    return sorted(files)


def code_hash(*modules: str, root: Path = ROOT) -> str:
    """sha256 (16 hex chars) of the relative paths and bytes of :func:`import_closure` of ``modules``."""
    h = hashlib.sha256()
    for path in import_closure(*modules, root=root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]
