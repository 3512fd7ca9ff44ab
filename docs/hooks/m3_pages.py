"""MkDocs hook: the pages generated at build time, so that no docs edit is needed when a module moves
or appears, or when a default changes.

- ``api/``: one page per module of the ``pipeline`` and ``stages`` packages, found by walking the
  source tree (mkdocstrings renders each from its docstrings), their navigation, and ``api/index.md``,
  the code map (every module with the first paragraph of its docstring).
- ``parameters.md``: every key of every ``params.yaml`` section with its value, default and help, as
  ``m3 params`` prints them (the config dataclasses' field docstrings).
- ``benchmarks.md``: ``benchmarks/README.md``.

It also expands references in the pages, outside code (an unknown key or name fails the build):

- ``[[train.cpu.max_side]]``: `max_side: 320`, linked to the key's row of the Parameters page (the
  value ``m3 params`` reports: params.yaml's, else the default); ``[[=train.cpu.max_side]]``: the
  value alone; ``[[=train.query_dims.clip]]``: an entry of a mapping-valued key.
- ``[[table:train.cpu,train.reference]]``: a table of the keys under each prefix, side by side.
- ``[[api:GaussianRelevance]]``: the object's (or module's) entry in the API pages, found by its name
  or the end of its dotted path wherever its module lives now.
- ``[[codemap]]``: a table of the packages with the first paragraph of their docstrings.
"""

from __future__ import annotations

import ast
import dataclasses
import html
import logging
import posixpath
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

PACKAGES = ("pipeline", "stages")
"""The packages whose modules get API pages (folders beside mkdocs.yml)."""
API_INDEX = "api/index.md"
"""The nav entry that the API pages' navigation replaces (its section keeps the entry's title)."""
PARAMETERS = "parameters.md"
BENCHMARKS = ("benchmarks/README.md", "benchmarks.md")
"""A page included whole: (source beside mkdocs.yml, page in the site)."""

log = logging.getLogger(f"mkdocs.hooks.{__name__}")
REFERENCE = re.compile(r"\[\[(api:|table:|=)?([^\[\]\s]+)\]\]")
CODE = re.compile(r"(^ *(?:```|~~~).*?^ *(?:```|~~~)[^\n]*$|(?<!`)(?:``[^\n]+?``|`[^`\n]+`)(?!`))", re.M | re.S)
"""Fenced code blocks and inline code spans."""
ROLE = re.compile(r":(?:py:)?[a-z]+:`~?([^`]+)`")


@dataclasses.dataclass
class Module:
    name: str
    """Dotted module name."""
    page: str
    """Its API page (``api/pipeline/core/config.md``; a package: ``api/pipeline/core/index.md``)."""
    package: bool
    summary: str
    """The first paragraph of its docstring, on one line."""


@dataclasses.dataclass
class Param:
    key: str
    """Full dotted key (``train.cpu.max_side``)."""
    value: str
    """YAML of the value a stage reads: params.yaml's setting, else the default."""
    default: str | None
    """YAML of the default (None: required)."""
    set_to: str | None
    """YAML of params.yaml's setting where it differs from the default."""
    help: str
    raw: Any = None
    """The value itself (None where its text is not a Python literal)."""


class State:
    root = Path()
    modules: dict[str, Module] = {}
    objects: dict[str, str | None] = {}
    """Dotted path of every documented module, class, function and attribute -> its API page (None:
    its module has none)."""
    skipped: list[str] = []
    """Modules without a page (in a folder without ``__init__.py``)."""
    params: dict[str, Param] = {}


# --- modules and objects -------------------------------------------------------------------------


def _summary(doc: str | None) -> str:
    first = (doc or "").strip().split("\n\n")[0]
    return " ".join(ROLE.sub(r"`\1`", first).split())


def _is_docstring(nodes: list[ast.stmt]) -> bool:
    """``nodes`` is one string expression (an attribute docstring after an assignment)."""
    value = nodes[0].value if len(nodes) == 1 and isinstance(nodes[0], ast.Expr) else None
    return isinstance(value, ast.Constant) and isinstance(value.value, str)


def _documented(body: list[ast.stmt], prefix: str) -> list[str]:
    """Dotted paths of the public classes, functions and attributes with a docstring in ``body``."""
    found: list[str] = []
    for i, node in enumerate(body):
        names: list[str] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if ast.get_docstring(node):
                names = [node.name]
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                found += _documented(node.body, f"{prefix}.{node.name}")
        elif isinstance(node, ast.Assign | ast.AnnAssign) and _is_docstring(body[i + 1 : i + 2]):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
        found += [f"{prefix}.{name}" for name in names if not name.startswith("_")]
    return found


def scan(root: Path) -> None:
    """Every public module of :data:`PACKAGES`, with its page, summary and documented objects. A
    module in a folder without ``__init__.py`` (a package being built) gets no page (griffe cannot
    load it) until the folder has one; its objects are known, shown as code without a link."""
    State.modules, State.objects, State.skipped = {}, {}, []
    for top in PACKAGES:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root)
            parts = rel.with_suffix("").parts
            if any(p.startswith(("_", ".")) for p in parts if p != "__init__"):
                continue
            package = parts[-1] == "__init__"
            dotted = parts[:-1] if package else parts
            name = ".".join(dotted)
            folders = rel.parent.parts
            loadable = all((root.joinpath(*folders[:i]) / "__init__.py").is_file() for i in range(1, len(folders) + 1))
            page = ("api/" + "/".join(dotted) + ("/index.md" if package else ".md")) if loadable else None
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            except SyntaxError as exc:
                raise PluginError(f"cannot document {rel}: {exc}") from exc
            State.objects[name] = page
            State.objects.update(dict.fromkeys(_documented(tree.body, name), page))
            if page is None:
                State.skipped.append(rel.as_posix())
                continue
            State.modules[name] = Module(name, page, package, _summary(ast.get_docstring(tree)))
    if not State.modules:
        raise PluginError(f"no modules found under {', '.join(PACKAGES)} in {root}")
    if State.skipped:
        log.info("no API page (its folder has no __init__.py): %s", ", ".join(State.skipped))


def api_nav(package: str) -> list[Any]:
    """Nav entries of ``package``: its own page, then its modules and subpackages by name."""
    items: list[Any] = [State.modules[package].page]
    for name in sorted(n for n in State.modules if n.rpartition(".")[0] == package):
        leaf = name.rpartition(".")[2]
        items.append({leaf: api_nav(name) if State.modules[name].package else State.modules[name].page})
    return items


def _splice_nav(nav: list[Any]) -> bool:
    for i, item in enumerate(nav):
        if isinstance(item, dict):
            (title, value), *_ = item.items()
            if value == API_INDEX:
                tops = [{top: api_nav(top)} for top in PACKAGES if top in State.modules]
                nav[i] = {title: [API_INDEX, *tops]}
                return True
            if isinstance(value, list) and _splice_nav(value):
                return True
    return False


def _cell(text: str) -> str:
    """``text`` for a Markdown table cell: pipes escaped, ``<`` outside code escaped."""
    parts = re.split(r"(``.+?``|`[^`]+`)", text)
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace("|", "\\|")
    return "".join(parts)


def api_index() -> str:
    lines = [
        "# API reference",
        "",
        "Generated at build time from the docstrings: one page per module of "
        + " and ".join(f"`{p}`" for p in PACKAGES)
        + ", found by walking the source tree, so a module that moves or appears needs no docs edit. "
        "The code map below lists every module with the first paragraph of its docstring.",
        "",
    ]
    for top in PACKAGES:
        lines += [f"## `{top}`", "", "| Module | What it holds |", "|---|---|"]
        for name in sorted(n for n in State.modules if n == top or n.startswith(top + ".")):
            module = State.modules[name]
            link = posixpath.relpath(module.page, "api")
            lines.append(f"| [`{name}`]({link}) | {_cell(module.summary)} |")
        lines.append("")
    if State.skipped:
        lines += [
            "Not rendered yet (a folder without `__init__.py`, which griffe cannot load): "
            + ", ".join(f"`{path}`" for path in State.skipped)
            + ".",
            "",
        ]
    return "\n".join(lines)


# --- parameters ----------------------------------------------------------------------------------


def _yaml(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def _yaml_of_repr(text: str) -> str:
    try:
        return _yaml(ast.literal_eval(text))
    except (ValueError, SyntaxError, yaml.YAMLError):
        return text


LINE = re.compile(r"(?P<key>\S+) = (?P<rest>.*)")
DEFAULT = re.compile(r"(?P<value>.*?)  \(default(?: (?P<default>.*))?\)")


def m3_params(root: Path) -> str:
    """Output of ``m3 params`` (every section) for the project's params.yaml."""
    m3 = shutil.which("m3", path=str(Path(sys.executable).parent)) or shutil.which("m3")
    if m3 is None:
        raise PluginError("the `m3` command is not installed (make install) to list the parameters")
    run = subprocess.run(
        [m3, "params", "--params", str(root / "params.yaml")], capture_output=True, text=True, cwd=root, check=False
    )
    if run.returncode:
        raise PluginError(f"`m3 params` failed (exit {run.returncode}): {run.stderr.strip() or run.stdout.strip()}")
    return run.stdout


def parse_params(text: str) -> dict[str, Param]:
    """Keys of ``m3 params``' output: ``key = value  (default d)`` lines, each followed by its help."""
    params: dict[str, Param] = {}
    last: Param | None = None
    for line in text.splitlines():
        if line.startswith("    ") and last is not None:
            last.help = " ".join(f"{last.help} {line.strip()}".split())
            continue
        match = LINE.fullmatch(line)
        if not match:
            if line.strip():
                raise PluginError(f"unexpected line in the output of `m3 params`: {line!r}")
            continue
        key, rest = match["key"], match["rest"]
        if rest == "(required, missing)":
            last = Param(key, "(required)", None, None, "")
        else:
            tail = DEFAULT.fullmatch(rest)
            shown = tail["value"] if tail else rest
            value = _yaml_of_repr(shown)
            differs = tail is not None and tail["default"] is not None
            default = _yaml_of_repr(tail["default"]) if differs else value
            last = Param(key, value, default, value if differs else None, "", _literal(shown))
        params[key] = last
    return params


def parameters_page(root: Path) -> str:
    State.params = parse_params(m3_params(root))
    sections: dict[str, list[Param]] = {}
    for param in State.params.values():
        sections.setdefault(param.key.split(".")[0], []).append(param)
    lines = [
        "# Parameters",
        "",
        "Every key of `params.yaml`, generated at build time from `m3 params` (the field docstrings of "
        "the stage configs, the one place an option is written) and the project's `params.yaml`. "
        "**Default** is the config's default, followed by the project's `params.yaml` setting where "
        "it differs. Every key of a stage's section is also an option of its command "
        "(`m3 train --cpu.iterations 500`); `m3 params [section]` prints this list for your own "
        "`params.yaml`, `m3 <command> --help` the options.",
        "",
        "`scenes:` lists the scenes (folders `data/<scene>/`) and `models:` the foundation models whose "
        "features are stored, banked and trained ([Models](models.md)).",
        "",
    ]
    for section, params in sections.items():
        lines += [f"## `{section}`", ""]
        nested = all(p.key.count(".") >= 2 for p in params)
        groups: dict[str, list[Param]] = {}
        for param in params:
            groups.setdefault(".".join(param.key.split(".")[:2]) if nested else section, []).append(param)
        for group, members in groups.items():
            if nested:
                lines += [f"### `{group}`", ""]
            lines += ["| Key | Default | Meaning |", "|---|---|---|"]
            for p in members:
                short = p.key[len(group) + 1 :]
                default = "(required)" if p.default is None else f"`{p.default}`"
                if p.set_to is not None:
                    default += f"<br>params.yaml: `{p.set_to}`"
                anchor = html.escape(p.key, quote=True)
                lines.append(f'| <span id="{anchor}"></span>`{short}` | {default} | {_cell(p.help)} |')
            lines.append("")
    return "\n".join(lines)


# --- references in pages -------------------------------------------------------------------------


def _expand(match: re.Match[str], page: Page) -> str:
    kind, target = match[1], match[2]
    if kind == "api:":
        hits = sorted(p for p in State.objects if p == target or p.endswith("." + target))
        if len(hits) != 1:
            found = f"several objects: {', '.join(hits)}" if hits else "no documented object"
            raise PluginError(f"{page.file.src_uri}: [[api:{target}]] names {found}")
        return f"[`{target}`][{hits[0]}]" if State.objects[hits[0]] else f"`{target}`"
    here = posixpath.dirname(page.file.src_uri) or "."
    if kind is None and target == "codemap":
        return _codemap(here)
    link = posixpath.relpath(PARAMETERS, here)
    if kind == "table:":
        return _table(target.split(","), link, page)
    param, value = State.params.get(target), None
    if param is None:  # an entry of a mapping-valued key: train.query_dims.clip
        key, _, entry = target.rpartition(".")
        mapping = State.params.get(key)
        if mapping is not None and isinstance(mapping.raw, dict) and entry in mapping.raw:
            param, value = mapping, _yaml(mapping.raw[entry])
    if param is None:
        close = [k for k in State.params if k.endswith("." + target.rpartition(".")[2])][:5]
        hint = f" (keys with that name: {', '.join(close)})" if close else ""
        raise PluginError(f"{page.file.src_uri}: [[{match[1] or ''}{target}]] is not a key of `m3 params`{hint}")
    value = param.value if value is None else value
    text = value if kind == "=" else f"{target.rpartition('.')[2]}: {value}"
    return f"[`{text}`]({link}#{param.key})"


def _codemap(here: str) -> str:
    """A table of every package with the first paragraph of its docstring, linked to its API page."""
    lines = ["| Package | What it holds |", "|---|---|"]
    for module in sorted((m for m in State.modules.values() if m.package), key=lambda m: m.name):
        link = posixpath.relpath(module.page, here)
        lines.append(f"| [`{module.name}`]({link}) | {_cell(module.summary)} |")
    folders = sorted({path.rpartition("/")[0] for path in State.skipped})
    lines += [f"| `{folder.replace('/', '.')}` | (being built: no `__init__.py` yet) |" for folder in folders]
    return "\n".join(lines)


def _table(prefixes: list[str], link: str, page: Page) -> str:
    """Side-by-side values of the keys under each of ``prefixes`` (e.g. the two training schedules)."""
    rows: dict[str, dict[str, Param]] = {}
    for prefix in prefixes:
        members = [p for key, p in State.params.items() if key.startswith(prefix + ".")]
        if not members:
            raise PluginError(f"{page.file.src_uri}: [[table:{','.join(prefixes)}]]: no key under {prefix!r}")
        for p in members:
            rows.setdefault(p.key[len(prefix) + 1 :], {})[prefix] = p
    lines = [
        "| Key | " + " | ".join(f"`{prefix}`" for prefix in prefixes) + " | Meaning |",
        "|---|" + "---|" * (len(prefixes) + 1),
    ]
    for key, found in rows.items():
        cells = [f"[`{found[x].value}`]({link}#{found[x].key})" if x in found else "" for x in prefixes]
        meaning = next((p.help for p in found.values() if p.help), "")
        lines.append(f"| `{key}` | " + " | ".join(cells) + f" | {_cell(meaning)} |")
    return "\n".join(lines)


# --- mkdocs events -------------------------------------------------------------------------------


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    State.root = Path(config.config_file_path).parent.resolve()
    scan(State.root)
    if not config.nav or not _splice_nav(config.nav):
        raise PluginError(f"mkdocs.yml: the nav needs an entry `- <title>: {API_INDEX}` for the API pages")
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    generated = {module.page: f"::: {module.name}\n" for module in State.modules.values()}
    generated[API_INDEX] = api_index()
    generated[PARAMETERS] = parameters_page(State.root)
    source, page = BENCHMARKS
    generated[page] = (State.root / source).read_text(encoding="utf-8")
    for uri, content in generated.items():
        if files.get_file_from_path(uri) is not None:
            raise PluginError(f"docs/{uri} is generated at build time; remove the file")
        files.append(File.generated(config, uri, content=content))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    parts = CODE.split(markdown)  # references inside code (odd parts) are shown as written
    parts[::2] = [REFERENCE.sub(lambda m: _expand(m, page), part) for part in parts[::2]]
    return "".join(parts)
