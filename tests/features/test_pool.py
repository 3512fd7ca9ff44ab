"""The Ray executor of the features stage, on a local Ray started by the tests (2 CPUs).

The demo scene's store made by 2 actors is byte-identical to the local executor's; a worker process
killed during extraction is restarted and its views retried by Ray, and the store is still
identical; an unreadable view is the local executor's error, raised on the worker.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from pipeline.cluster.config import ClusterConfig
from pipeline.core.errors import M3Error
from stages.features import run
from tests.helpers.cluster import actor_processes, tree_digest
from tests.helpers.scenes import posed_scene

CONF = {"weights": "random", "input_size": 224}  # make demo WEIGHTS=random: 16 x 21 x 32 maps
TWO = ClusterConfig(executor="ray", actors=2)
VIEWS = 36  # the whole demo scene


@pytest.fixture(scope="module")
def local_digest(demo_input: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The demo scene's clip store made by the local executor (file -> sha256)."""
    scene = posed_scene(tmp_path_factory.mktemp("pool") / "local", demo_input, VIEWS)
    assert run(CONF, scene, "clip")["computed_views"] == VIEWS
    digest = tree_digest(scene.features_path("clip"))
    assert sum(name.startswith("features/c/") for name in digest) == VIEWS  # one chunk per view
    return digest


def _gone(class_name: str, timeout: float = 20.0) -> bool:
    """True once no actor process of ``class_name`` is left (ended actors exit asynchronously)."""
    deadline = time.monotonic() + timeout
    while actor_processes(class_name) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not actor_processes(class_name)


@pytest.mark.slow
def test_two_actors_write_the_local_store_byte_for_byte(
    local_ray, local_digest, demo_input, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("pipeline.core.progress._ENABLED", True)  # bars on, as at a terminal
    scene = posed_scene(tmp_path / "ray", demo_input, VIEWS)
    stats = run(CONF, scene, "clip", cluster=TWO)
    assert stats["views"] == VIEWS and stats["computed_views"] == VIEWS and stats["map_size"] == [16, 21, 32]
    assert tree_digest(scene.features_path("clip")) == local_digest
    bar = capsys.readouterr().err
    assert f"{VIEWS}/{VIEWS}" in bar and "workers=2" in bar  # progress: views, views/s, live actors
    assert _gone("FeatureWorker")  # the actors end with the stage


@pytest.mark.slow
def test_killed_worker_is_retried_and_the_store_is_identical(local_ray, local_digest, demo_input, tmp_path):
    scene = posed_scene(tmp_path / "killed", demo_input, VIEWS)
    pids: dict[str, set[int]] = {}

    def kill_a_worker(i: int) -> None:
        if i == 0:  # the first view is stored: both actors hold views in flight
            workers = actor_processes("FeatureWorker")
            assert len(workers) == 2
            workers[0].kill()
            pids["before"], pids["killed"] = {w.pid for w in workers}, {workers[0].pid}
        if i == VIEWS - 1:  # the last view is stored: the pool is whole again
            pids["after"] = {w.pid for w in actor_processes("FeatureWorker")}

    stats = run(CONF, scene, "clip", cluster=TWO, on_view=kill_a_worker)
    assert not any(psutil.pid_exists(pid) for pid in pids["killed"])
    restarted = pids["after"] - pids["before"]
    assert len(pids["after"]) == 2 and len(restarted) == 1  # Ray restarted the killed actor in a new process
    assert stats["computed_views"] == VIEWS
    assert tree_digest(scene.features_path("clip")) == local_digest
    assert _gone("FeatureWorker")


def test_unreadable_view_is_the_local_error_naming_it(local_ray, demo_input, tmp_path):
    scene = posed_scene(tmp_path / "bad", demo_input, 4)
    (scene.images_dir / "00002.png").write_bytes(b"not a png")
    with pytest.raises(M3Error) as local:
        run(CONF, scene, "clip")
    with pytest.raises(M3Error) as remote:  # raised by the actor decoding the view, re-raised as it is
        run(CONF, scene, "clip", cluster=TWO)
    assert str(remote.value) == str(local.value)
    assert str(local.value) == (
        f"{scene.images_dir / '00002.png'}: cannot read the view's image (not a known image format); "
        "rerun the poses stage"
    )
    assert _gone("FeatureWorker")
