"""The README stays a five-minute read that points into the docs (the site itself is built, with
``mkdocs build --strict``, by ``make docs`` in ``make test``)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details into docs/ (at most 200)"


def test_readme_links_only_to_docs_pages_that_exist() -> None:
    targets = LINK.findall(README.read_text(encoding="utf-8"))
    local = [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]
    assert local, "README.md links to no docs page"
    for target in local:
        path = (ROOT / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT / "docs") and path.suffix == ".md", f"README links to {target}, not a docs page"
        assert path.is_file(), f"README links to {target}, which does not exist"


def test_readme_states_the_test_command() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Tests\n", 1)
    assert len(section) == 2, "README.md has no '## Tests' section"
    assert "`make test`" in section[1].split("\n## ", 1)[0], "the Tests section does not state `make test`"
