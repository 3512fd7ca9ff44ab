"""Share cached stage outputs across machines through a DVC remote and DVC's run-cache.

A lab computes a scene's features and banks once (say on a GPU box) and pushes them; everyone
else pulls them. What travels is each stage's outputs **and its run-cache entry** (the record
"this command, with these dependency hashes and params, produced these outputs"). After a
pull, a plain ``dvc repro`` restores every stage whose inputs and params match a pulled entry
("Stage ... is cached - skipping run") and recomputes exactly the ones that do not.

Remotes are machine-specific, so they live in ``.dvc/config.local`` (never in the committed
``.dvc/config``): ``m3 share remote NAME URL``. Pulls always verify checksums: an object whose
content does not hash to its name is reported and never used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import typer
import yaml

from pipeline.core.errors import M3Error
from stages.command import SCENE, reports_errors, resolve_scene

log = logging.getLogger(__name__)
SHAREABLE = ("demo", "frames", "poses", "features", "bank", "train", "evaluate")
DEFAULT_STAGES = ("features", "bank")


@contextlib.contextmanager
def _open_repo(root: Path, remote: str | None, verify: bool = False) -> Iterator[tuple[Any, str]]:
    """The DVC repo at ``root`` (entered as the working directory, as DVC expects) and its remote."""
    with contextlib.chdir(root):
        repo, remote = _repo_with_remote(remote, verify)
        with repo:
            yield repo, remote


def _repo_with_remote(remote: str | None, verify: bool) -> tuple[Any, str]:
    from dvc.repo import Repo

    root = Path.cwd()
    repo = Repo(".")
    remote = remote or repo.config["core"].get("remote")
    if not remote:
        raise M3Error(
            f"{root}: no DVC remote configured; add one with `m3 share remote NAME URL` "
            "(local folder or ssh://user@host/path)"
        )
    if remote not in repo.config["remote"]:
        raise M3Error(f"DVC remote '{remote}' is not configured; add it with `m3 share remote {remote} URL`")
    if verify:
        repo.close()
        repo = Repo(".", remote=remote, remote_config={"verify": True})
    return repo, remote


def stage_targets(repo: Any, scene: str, stages: list[str]) -> list[str]:
    """DVC stage addresses of ``scene``'s ``stages`` (``bank`` -> ``bank@demo-clip`` ...) and all their
    upstream stages."""
    unknown = [s for s in stages if s not in SHAREABLE]
    if unknown:
        raise M3Error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(SHAREABLE)}")
    selected = []
    for stage in repo.index.stages:
        kind, _, item = getattr(stage, "name", "").partition("@")  # `dvc add`ed inputs (.dvc files) have no name
        if kind in stages and (item == scene or item.startswith(f"{scene}-") or (kind == "demo" and scene == "demo")):
            selected.append(stage)
    if not selected:
        raise M3Error(
            f"no {'/'.join(stages)} stages for scene '{scene}' in dvc.yaml; "
            "is it listed under `scenes:` in params.yaml?"
        )
    # upstream stages come along: a pulled bank is only reusable with the features it was built from
    names = {up.addressing for stage in selected for up in repo.stage.collect(stage.addressing, with_deps=True)}
    return sorted(names)


def _run_entries(repo: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Every run-cache entry in the local cache: ``(key, value) -> lockfile-style record``."""
    runs = Path(repo.stage_cache.cache_dir)
    return {
        (path.parent.name, path.name): yaml.safe_load(path.read_text()) or {}
        for path in runs.glob("*/*/*")
        if path.is_file()
    }


def _outs(record: dict[str, Any]) -> dict[str, str | None]:
    return {o["path"]: o.get("md5") for o in record.get("outs", [])}


def _remote_odb(repo: Any, remote: str, legacy: bool = False) -> Any:
    """The remote's object store: ``files/md5/`` for data, the legacy root (``runs/``) for run-cache."""
    return repo.cloud.get_remote_odb(remote, "m3 share", hash_name="md5-dos2unix" if legacy else "md5")


def push(root: Path, scene: str, stages: list[str], remote: str | None = None) -> dict[str, int]:
    """Push the outputs of ``scene``'s ``stages`` (and everything upstream) plus their run-cache entries.

    Only the entries recording the current outputs (as in ``dvc.lock``) travel, with every object
    they name (metrics kept out of the DVC cache included, which ``dvc push`` alone skips).
    Stage outputs must be present and up to date (run ``dvc repro`` first).
    """
    with _open_repo(root, remote) as (repo, remote):
        targets = stage_targets(repo, scene, stages)
        status = repo.status(targets=targets)
        if status:
            raise M3Error(
                f"stages not up to date: {', '.join(sorted(status))}; "
                f"run `dvc repro {' '.join(targets)}` before pushing"
            )
        lock = (yaml.safe_load(Path("dvc.lock").read_text()) or {}).get("stages", {})
        current = [_outs(lock[name]) for name in targets if name in lock]
        wanted = [kv for kv, record in _run_entries(repo).items() if _outs(record) in current]
        files = repo.push(targets=targets, remote=remote)
        for objs in repo.stage_cache.get_used_objs(wanted).values():
            result = repo.cloud.push(objs, remote=remote)
            if result.failed:
                raise M3Error(
                    f"push to '{remote}' failed for {len(result.failed)} object(s); check the remote and retry"
                )
            files += len(result.transferred)
        odb = _remote_odb(repo, remote, legacy=True)
        for key, value in wanted:
            parent = odb.fs.join(odb.path, "runs", key[:2], key)
            odb.fs.makedirs(parent, exist_ok=True)
            odb.fs.put_file(str(Path(repo.stage_cache.cache_dir) / key[:2] / key / value), odb.fs.join(parent, value))
    log.info(
        "pushed %d file(s) and %d run-cache entr(y/ies) for %s to '%s'", files, len(wanted), ", ".join(targets), remote
    )
    return {"files": files, "runs": len(wanted)}


def _absent(repo: Any, hash_infos: Any) -> list[tuple[str, str]]:
    """``(name, md5)`` of objects (files inside directory outputs included) not in the local cache."""
    from dvc_data.hashfile.tree import Tree

    odb, absent = repo.cache.local, []
    for hi in hash_infos:
        if not odb.exists(hi.value):
            absent.append((hi.obj_name or "?", hi.value))
        elif hi.isdir:
            tree = Tree.load(odb, hi)
            absent += [
                (f"{hi.obj_name}/{'/'.join(key)}", entry.value)
                for key, _, entry in tree
                if entry and not odb.exists(entry.value)
            ]
    return absent


def pull(root: Path, scene: str, stages: list[str], remote: str | None = None) -> dict[str, int]:
    """Pull the run-cache and the outputs it records for ``scene``'s ``stages``, verifying checksums.

    Entries whose objects are not in the remote are skipped (``dvc repro`` recomputes those stages).
    Raises :class:`M3Error` naming every object that is in the remote but fails its checksum:
    such objects are never put in the cache, so they are never used.
    """
    with _open_repo(root, remote, verify=True) as (repo, remote):
        targets = stage_targets(repo, scene, stages)
        paths = {out.def_path for stage in repo.index.stages if stage.addressing in targets for out in stage.outs}
        repo.stage_cache.pull(remote)
        wanted = [kv for kv, record in _run_entries(repo).items() if set(_outs(record)) & paths]
        transferred, absent = 0, []
        for objs in repo.stage_cache.get_used_objs(wanted).values():
            transferred += len(repo.cloud.pull(objs, remote=remote).transferred)
            absent += _absent(repo, objs)
        rodb = _remote_odb(repo, remote)
        corrupt = sorted({f"{name} ({md5})" for name, md5 in absent if rodb.exists(md5)})
    if corrupt:
        raise M3Error(
            f"remote '{remote}': {len(corrupt)} object(s) failed checksum verification and were not used: "
            f"{', '.join(corrupt)}; re-push them from a clone that has them (`m3 share push {scene}`) "
            "or recompute with `dvc repro`"
        )
    if absent:
        log.warning(
            "%d object(s) are not in remote '%s'; `dvc repro` recomputes their stages", len(set(absent)), remote
        )
    log.info(
        "pulled %d run-cache entr(y/ies) and %d file(s) for %s; now `dvc repro` restores them",
        len(wanted),
        transferred,
        ", ".join(targets),
    )
    return {"files": transferred, "runs": len(wanted)}


EXAMPLE_REMOTES = "/mnt/shared/m3-remote or ssh://user@host/srv/m3-remote"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP = re.compile(r"[^/:]+:")  # `[user@]host:path` (scp syntax), which DVC would take for a local folder
_HTTP = ("http", "https")  # DVC's HTTP remote sends a password only with `auth` set, and never with a URL user


def masked_url(url: str) -> str:
    """``url`` with any password in its userinfo replaced by ``***`` (everything between the first ``:``
    after ``scheme://`` and the last ``@``) and control characters escaped: safe to log or print on one line."""
    start = url.find("://") + 3 if "://" in url else 0
    at = url.rfind("@")
    colon = url.find(":", start, at) if at >= start else -1
    if colon >= 0:
        url = f"{url[: colon + 1]}***{url[at:]}"
    return "".join(c if unicodedata.category(c) != "Cc" else ascii(c)[1:-1] for c in url)


def _bad_url(url: str, cause: str) -> M3Error:
    return M3Error(
        f"remote URL '{masked_url(url)}': {cause}; give a local folder or a DVC remote URL, e.g. {EXAMPLE_REMOTES}"
    )


def _check_folder(url: str) -> None:
    """Refuse a local folder path that is empty or that DVC would take for a folder by mistake."""
    if not url.strip():
        raise _bad_url(url, "it is empty")
    if "::" in url or "://" in url:
        raise _bad_url(url, "it is neither a folder path nor a URL ('::' or '://' in a path)")
    if os.name != "nt" and _SCP.match(url):
        raise _bad_url(url, "scp-style HOST:PATH is taken by DVC for a local folder (write ./NAME for one)")


def _url_parts(url: str, scheme: str, known: list[str]) -> SplitResult:
    """``url`` split, once checked: a remote type DVC knows, no spaces, a host (or bucket) and a valid port."""
    if scheme not in known:
        raise _bad_url(url, f"'{scheme}://' is not a remote type DVC knows ({', '.join(known)})")
    if any(c.isspace() for c in url):
        raise _bad_url(url, "a URL cannot contain spaces (percent-encode them as %20)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number in 0-65535)
    except ValueError:  # its message may quote part of a password: not shown
        parts = None
    if parts is None or ("@" not in parts.netloc and ":" in parts.netloc and "@" in parts.path):
        raise _bad_url(url, "its host[:port] does not parse (percent-encode '/', ':', '@' in a user or password)")
    if not parts.hostname:
        raise _bad_url(url, f"no host or bucket after '{scheme}://'")
    return parts


def remote_section(name: str, url: str, keyfile: str | None = None) -> dict[str, Any]:
    """The ``.dvc/config.local`` section of remote ``name`` at ``url`` (a local folder, or a URL of a remote
    type DVC knows, with a host or bucket): checksums verified on pull, and a password in the URL moved to the
    remote's ``password`` option. Raises :class:`M3Error` (the URL shown with its password masked) otherwise."""
    from dvc.config_schema import REMOTE_SCHEMAS

    if any(unicodedata.category(c) == "Cc" for c in url):
        raise _bad_url(url, "it contains control characters")
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else ""
    section: dict[str, Any] = {"url": url}
    if not match:
        _check_folder(url)
    elif (parts := _url_parts(url, scheme, sorted(s for s in REMOTE_SCHEMAS if s))).password is not None:
        userinfo, _, host = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        if parts.password and "password" not in REMOTE_SCHEMAS[scheme]:
            raise M3Error(
                f"remote URL '{masked_url(url)}': DVC keeps no password for {scheme}:// remotes, and m3 does not "
                f"write one into .dvc/config.local's URL; remove it from the URL and set this remote's credentials "
                f"with `dvc remote modify --local {name} OPTION VALUE` (see `dvc remote modify --help`)"
            )
        if scheme in _HTTP and parts.password:
            netloc = host
            section |= {"auth": "basic", "user": unquote(user)}
        else:
            netloc = f"{user}@{host}" if user else host
        start = match.end()
        section["url"] = url[:start] + netloc + url[start + len(parts.netloc) :]
        if parts.password:
            section["password"] = unquote(parts.password)
    if "verify" in REMOTE_SCHEMAS[scheme]:  # hdfs has no such option
        section["verify"] = True
    if keyfile:
        if scheme != "ssh":
            raise M3Error(
                f"--keyfile {keyfile}: a key file is for ssh:// remotes, not '{masked_url(url)}'; "
                "drop --keyfile or give an ssh://user@host/path URL"
            )
        section["keyfile"] = os.path.expanduser(keyfile)
    return section


def _private(path: Path) -> None:
    """Create ``path`` if need be and make it readable by its owner only (0600)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    path.chmod(0o600)


def add_remote(root: Path, name: str, url: str, keyfile: str | None = None, default: bool = True) -> None:
    """Add (or replace) a remote in ``.dvc/config.local`` (machine-specific, not committed; mode 0600).

    ``url`` is checked first (:func:`remote_section`); a password in it is stored as the remote's
    ``password`` option, never in the URL, and never logged.
    """
    from dvc.repo import Repo

    section = remote_section(name, url, keyfile)
    with contextlib.chdir(root), Repo(".") as repo:
        config_local = Path(repo.config.files["local"])
        _private(config_local)  # before DVC writes credentials into it
        with repo.config.edit("local") as conf:
            conf["remote"][name] = section
            if default:
                conf["core"]["remote"] = name
        _private(config_local)  # DVC rewrites the file: keep it 0600 whatever it did
    log.info(
        "remote '%s' -> %s (in .dvc/config.local%s%s)",
        name,
        masked_url(url),
        ", its password as the remote's password option" if "password" in section else "",
        ", default" if default else "",
    )


cli = typer.Typer(
    help="Share cached stage outputs (features, banks, ...) through a DVC remote + run-cache.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
STAGES = typer.Option(
    ",".join(DEFAULT_STAGES), "--stages", help=f"comma-separated stages to share (upstream stages come along): "
    f"{', '.join(SHAREABLE)}"
)  # fmt: skip
REMOTE = typer.Option(None, "--remote", "-r", help="DVC remote name (default: the default remote)")
ROOT = typer.Option(Path("."), "--root", help="project root (the folder holding dvc.yaml)")


def _split(stages: str) -> list[str]:
    return [s.strip() for s in stages.split(",") if s.strip()]


@cli.command("push")
@reports_errors
def push_cli(scene: str = SCENE, stages: str = STAGES, remote: str | None = REMOTE, root: Path = ROOT) -> None:
    """Push a scene's stage outputs and their run-cache entries to a DVC remote."""
    push(root, resolve_scene(scene).name, _split(stages), remote)


@cli.command("pull")
@reports_errors
def pull_cli(scene: str = SCENE, stages: str = STAGES, remote: str | None = REMOTE, root: Path = ROOT) -> None:
    """Pull run-cache entries and outputs so that `dvc repro` skips matching stages."""
    pull(root, resolve_scene(scene).name, _split(stages), remote)


@cli.command("remote")
@reports_errors
def remote_cli(
    name: str = typer.Argument(..., help="remote name"),
    url: str = typer.Argument(
        ..., help="a local folder, or a DVC remote URL: ssh://user@host[:port]/path, s3://bucket/path, https://..."
    ),
    keyfile: str | None = typer.Option(None, "--keyfile", help="SSH private key for ssh:// remotes"),
    default: bool = typer.Option(True, "--default/--no-default", help="make it the default remote"),
    root: Path = ROOT,
) -> None:
    """Add a remote to .dvc/config.local (machine-specific, mode 0600; checksums verified on pull).

    A password in the URL is stored as the remote's password option, not in the URL; for remotes
    without one (s3, gs, azure, ...) set credentials with `dvc remote modify --local NAME ...`.
    """
    add_remote(root, name, url, keyfile, default)
