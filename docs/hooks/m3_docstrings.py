"""Griffe extension for the API pages: the project's docstrings as Markdown.

The docstrings are free-form prose in reST habits: Sphinx roles (:func:`name`, :class:`~a.b.C`),
literal blocks after ``text::`` and paths like ``data/<scene>/`` outside code. Before rendering,
each docstring gets:

- every role turned into the object's name as code, linked to its API entry when the name resolves
  in the docstring's own scope (a name defined or imported there, or a full dotted path) and the
  object is rendered (an optional cross-reference: no link, and no warning, otherwise);
- ``text::`` before a literal block turned into ``text:`` (the indented block is Markdown code);
- ``<`` outside code written as ``&lt;``, so that ``<scene>`` is shown, not read as an HTML tag.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?[a-z]+:`(~?)([^`]+)`")
CODE_SPAN = re.compile(r"(``.+?``|`[^`]+`)")
ROOTS = ("pipeline", "stages")


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)  # type: ignore[arg-type]


def _target(obj: griffe.Object, name: str) -> str | None:
    """Full path of ``name`` as the docstring of ``obj`` means it, or None."""
    name = name.strip().removesuffix("()")
    if name.split(".")[0] in ROOTS:
        return name
    head, _, rest = name.partition(".")
    try:
        base = obj.resolve(head)
    except Exception:  # noqa: BLE001 (griffe raises several kinds for names it cannot resolve)
        return None
    return f"{base}.{rest}" if rest else base


def convert(text: str, obj: griffe.Object) -> str:
    """``text`` (a docstring) as the API pages render it (see the module docstring)."""
    refs: list[str] = []

    def role(match: re.Match[str]) -> str:
        name = match[2].strip()
        title = html.escape(name.rsplit(".", 1)[-1] if match[1] else name)
        path = _target(obj, name)
        code = f"<code>{title}</code>"
        refs.append(f'<autoref optional identifier="{html.escape(path)}">{code}</autoref>' if path else code)
        return f"\x00{len(refs) - 1}\x00"

    text = ROLE.sub(role, text)
    lines, code, blank = [], False, True
    for line in text.split("\n"):
        indented = line.startswith("    ") or line.startswith("\t")
        code = bool(line.strip()) and indented and (blank or code) or (code and not line.strip())
        if not code:
            parts = CODE_SPAN.split(line)
            parts[::2] = [p.replace("<", "&lt;") for p in parts[::2]]
            line = "".join(parts)
            if line.rstrip().endswith("::"):
                line = line.rstrip()[:-1] if line.strip() != "::" else ""
        lines.append(line)
        blank = not line.strip()
    return re.sub("\x00(\\d+)\x00", lambda m: refs[int(m[1])], "\n".join(lines))


class SphinxRoles(griffe.Extension):
    """Converts every docstring of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = convert(obj.docstring.value, obj)
