"""Command ``m3 cluster repro``: every stage of every scene of ``params.yaml`` on a Ray cluster.

Scenes run in parallel, one Ray task per scene, each scene's stages in pipeline order inside that
task (:mod:`stages.cluster_scene`: a clone of the project on whichever node Ray picks, pulled and
pushed through the DVC remote with ``m3 share``). The driver (this process, in the project) never
runs a stage: for each finished scene it records the scene's ``dvc.lock`` entries, writes its small
uncached outputs (metrics, plots) and pulls its cached outputs from the remote, so the outputs land
where a local ``dvc repro`` would put them and a later plain ``dvc repro`` / ``dvc status`` finds
everything up to date. Scenes already up to date here are skipped.

A scene task whose worker or node dies is rerun by Ray (``cluster.retries``); a stage that fails
is an error naming the scene, the stage, the node and the stage's own error line. Without a
configured DVC remote, a cluster made of this machine alone uses a scratch folder as the remote.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from pathlib import Path
from typing import Any

import typer
import yaml

from pipeline.cluster.config import ClusterConfig
from pipeline.cluster.session import alive_nodes, ray_session
from pipeline.core.config import load_params
from pipeline.core.errors import M3Error
from pipeline.core.progress import progress
from stages.cluster_scene import PIPELINE_ORDER, Board, SceneJob, run_scene
from stages.command import Options, command
from stages.share import stage_targets

log = logging.getLogger(__name__)
MAX_CHANGES_MB = 64
SCRATCH_REMOTE = "m3-cluster-scratch"


def scene_plan(repo: Any, scene: str) -> tuple[list[str], list[str]]:
    """``(stages, inputs)`` of ``scene``: its DVC stages in pipeline order and the ``.dvc`` files of
    its added inputs."""
    names = stage_targets(repo, scene, list(PIPELINE_ORDER))
    inputs = [n for n in names if n.endswith(".dvc")]
    order = {kind: k for k, kind in enumerate(PIPELINE_ORDER)}
    stages = sorted((n for n in names if not n.endswith(".dvc")), key=lambda n: (order[n.partition("@")[0]], n))
    return stages, inputs


def git_state(root: Path) -> tuple[str, dict[str, bytes | None]]:
    """The project's commit and its uncommitted files (tracked or new, not ignored; ``None``: deleted)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        raise M3Error(
            f"{root}: not a git repository with a commit; cluster nodes clone the project at a commit, "
            "so commit it first"
        ) from exc
    deleted = set(filter(None, git("ls-files", "-z", "--deleted").split("\0")))
    changed = filter(None, git("ls-files", "-z", "--modified", "--others", "--exclude-standard").split("\0"))
    changes = {rel: None if rel in deleted else (root / rel).read_bytes() for rel in changed}
    size = sum(len(data) for data in changes.values() if data) / 2**20
    if size > MAX_CHANGES_MB:
        raise M3Error(
            f"{root}: {size:.0f} MiB of uncommitted files would travel to every node (limit {MAX_CHANGES_MB}); "
            "commit them, or dvc add / git-ignore large files"
        )
    return commit, changes


def choose_remote(repo: Any, ray: Any, root: Path) -> tuple[str, dict[str, Any]]:
    """The DVC remote the scene tasks push to: the configured default, else (for a cluster made of
    this machine alone) a scratch folder under ``.dvc/tmp``."""
    name = repo.config["core"].get("remote")
    if name:
        if name not in repo.config["remote"]:
            raise M3Error(f"DVC remote '{name}' is not configured; add it with `m3 share remote {name} URL`")
        return name, {
            key: value if isinstance(value, bool | int) else str(value)
            for key, value in repo.config["remote"][name].items()
        }
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) == 1 and nodes[0]["NodeManagerAddress"] == ray.util.get_node_ip_address():
        scratch = (root / ".dvc" / "tmp" / "cluster-remote").resolve()
        return SCRATCH_REMOTE, {"url": str(scratch)}
    raise M3Error(
        f"{root}: no DVC remote configured, and the Ray cluster has {len(nodes)} node(s) that share no disk "
        "with this one; add a remote every node can reach: `m3 share remote NAME URL` (ssh://, s3://, a shared mount)"
    )


@contextlib.contextmanager
def _repo(root: Path, remote: str, remote_conf: dict[str, Any]) -> Any:
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(".", remote=remote, remote_config=remote_conf) as repo:
        yield repo


def record(root: Path, result: dict[str, Any], remote: str, remote_conf: dict[str, Any]) -> None:
    """Record a finished scene here: its ``dvc.lock`` entries, its cached outputs pulled from the
    remote into the workspace, its uncached outputs and its outputs' ``.gitignore`` entries."""
    lock_path = root / "dvc.lock"
    lock = (yaml.safe_load(lock_path.read_text()) if lock_path.is_file() else None) or {"schema": "2.0"}
    lock.setdefault("stages", {}).update(result["lock"])
    lock_path.write_text(yaml.safe_dump(lock, sort_keys=False))
    with _repo(root, remote, remote_conf) as repo:
        repo.pull(targets=list(result["lock"]), remote=remote, force=True)
    for rel, data in result["files"].items():  # after the checkout, which leaves uncached outputs out
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    for rel, lines in result["gitignore"].items():  # the outputs' entries, as `dvc repro` adds them
        path = root / rel
        old = path.read_text().splitlines() if path.is_file() else []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(dict.fromkeys(old + lines)) + "\n")


def repro(root: Path, config: ClusterConfig, scenes: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run every stage of ``scenes`` (default: all of ``params.yaml``) on the Ray cluster (see the
    module docstring); returns per scene ``{node, ran, restored, seconds}`` (``{}`` when it was
    already up to date)."""
    from dvc.repo import Repo

    root = Path(root).resolve()
    listed = list(load_params(root / "params.yaml").get("scenes") or [])
    unknown = sorted(set(scenes or []) - set(listed))
    if unknown:
        raise M3Error(
            f"{root / 'params.yaml'}: scene(s) {', '.join(unknown)} not under scenes:; add them or fix --scenes"
        )
    with contextlib.chdir(root), Repo(".") as repo:
        plans = {scene: scene_plan(repo, scene) for scene in scenes or listed}
        todo = {scene: plan for scene, plan in plans.items() if repo.status(targets=plan[0])}
        if not todo:
            log.info("every stage of %s is up to date", ", ".join(plans))
            return {scene: {} for scene in plans}
        commit, changes = git_state(root)
        with ray_session(config) as ray:
            remote, remote_conf = choose_remote(repo, ray, root)
            inputs = [dvc for _, scene_inputs in todo.values() for dvc in scene_inputs]
            if inputs:
                with _repo(root, remote, remote_conf) as pusher:
                    pusher.push(targets=inputs, remote=remote)
            results = _run_scenes(ray, root, todo, config, commit, changes, remote, remote_conf)
    with contextlib.chdir(root), Repo(".") as repo:  # a fresh index: dvc.lock changed
        left = repo.status(targets=[stage for stages, _ in todo.values() for stage in stages])
    if left:
        log.warning("after recording, DVC still sees changes in %s", ", ".join(sorted(left)))
    return {scene: results.get(scene, {}) for scene in plans}


def _run_scenes(
    ray: Any,
    root: Path,
    todo: dict[str, tuple[list[str], list[str]]],
    config: ClusterConfig,
    commit: str,
    changes: dict[str, bytes | None],
    remote: str,
    remote_conf: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Submit one task per scene, show one bar per scene, record each scene as it finishes."""
    board = ray.remote(num_cpus=0)(Board).remote()
    task = ray.remote(
        num_cpus=config.scene_cpus,
        num_gpus=config.scene_gpus,
        max_retries=config.retries,
        scheduling_strategy="SPREAD",  # scenes over all nodes before two on one
    )(run_scene)
    address = ray.get_runtime_context().gcs_address
    pending = {}
    for scene, (stages, inputs) in todo.items():
        job = SceneJob(
            scene=scene,
            stages=stages,
            inputs=inputs,
            source=config.source or str(root),
            commit=commit,
            changes=changes,
            remote=remote,
            remote_conf=remote_conf,
            workdir=config.workdir,
            ray_address=address,
        )
        pending[task.remote(job, board)] = scene
    bars = {
        scene: progress(total=len(stages), desc=scene, unit="stage", position=k, leave=True)
        for k, (scene, (stages, _)) in enumerate(todo.items())
    }
    results, failed, shown = {}, {}, {}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            workers = alive_nodes(ray)
            for scene, (done, stage) in ray.get(board.snapshot.remote()).items():
                state = (done, f"{stage}, workers {workers}")
                if scene not in results and scene not in failed and shown.get(scene) != state:
                    shown[scene], bars[scene].n = state, done
                    bars[scene].set_postfix_str(state[1])
            for ref in ready:
                scene = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause
                    failed[scene] = str(cause) if isinstance(cause, M3Error) else f"{scene}: {cause!r}"
                    bars[scene].set_postfix_str("failed")
                    continue
                except ray.exceptions.RayError as exc:
                    failed[scene] = f"{scene}: its task died {config.retries + 1} times ({str(exc).splitlines()[0]})"
                    continue
                record(root, result, remote, remote_conf)
                results[scene] = {k: result[k] for k in ("node", "ran", "restored", "seconds")}
                bars[scene].n = bars[scene].total
                bars[scene].set_postfix_str(f"done on {result['node']} in {result['seconds']:.0f} s")
    finally:
        for bar in bars.values():
            bar.close()
        ray.kill(board)
    for scene, result in results.items():
        log.info(
            "%s: ran %s; restored %s (node %s, %.0f s)",
            scene,
            result["ran"],
            result["restored"],
            result["node"],
            result["seconds"],
        )
    if failed:
        raise M3Error(f"cluster: {len(failed)} scene(s) failed: " + "; ".join(failed.values()))
    return results


cli = typer.Typer(
    help="Run the pipeline on a Ray cluster (see `m3 cluster repro --help`).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@cli.command("repro")
@command(ClusterConfig)
def repro_cli(
    options: Options[ClusterConfig],
    scenes: str | None = typer.Option(
        None, "--scenes", help="comma-separated scenes (default: every scene in params.yaml)"
    ),
    root: Path = typer.Option(Path("."), "--root", help="project root (the folder holding dvc.yaml and params.yaml)"),
) -> None:
    """Run every stage of every scene on a Ray cluster: scenes in parallel, each scene's stages in order.

    Outputs land where `dvc repro` puts them, recorded in dvc.lock (a later `dvc repro` runs nothing)
    and pushed with their run-cache to the DVC remote. Options: the cluster section of params.yaml.
    """
    names = [s.strip() for s in scenes.split(",") if s.strip()] if scenes else None
    repro(root, options.load("cluster", Path(root) / "params.yaml"), names)
