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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
import yaml

from pipeline.core.errors import M3Error
from pipeline.core.scene import Scene
from stages.command import SCENE, reports_errors

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


def add_remote(root: Path, name: str, url: str, keyfile: str | None = None, default: bool = True) -> None:
    """Add (or replace) a remote in ``.dvc/config.local`` (machine-specific, not committed)."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(".") as repo:
        with repo.config.edit("local") as conf:
            section = {"url": url, "verify": True}
            if keyfile:
                section["keyfile"] = os.path.expanduser(keyfile)
            conf["remote"][name] = section
            if default:
                conf["core"]["remote"] = name
    log.info("remote '%s' -> %s (in .dvc/config.local%s)", name, url, ", default" if default else "")


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
    push(root, Scene.resolve(scene).name, _split(stages), remote)


@cli.command("pull")
@reports_errors
def pull_cli(scene: str = SCENE, stages: str = STAGES, remote: str | None = REMOTE, root: Path = ROOT) -> None:
    """Pull run-cache entries and outputs so that `dvc repro` skips matching stages."""
    pull(root, Scene.resolve(scene).name, _split(stages), remote)


@cli.command("remote")
@reports_errors
def remote_cli(
    name: str = typer.Argument(..., help="remote name"),
    url: str = typer.Argument(..., help="a local folder, or ssh://user@host[:port]/path"),
    keyfile: str | None = typer.Option(None, "--keyfile", help="SSH private key for ssh:// remotes"),
    default: bool = typer.Option(True, "--default/--no-default", help="make it the default remote"),
    root: Path = ROOT,
) -> None:
    """Add a remote to .dvc/config.local (machine-specific; checksums verified on pull)."""
    add_remote(root, name, url, keyfile, default)
