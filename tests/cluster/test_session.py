"""Ray is an optional extra: without it, the ray executor and `m3 cluster repro` are one clear error
naming the extra; the local executor never imports Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cluster.config import ClusterConfig
from pipeline.cluster.session import ray_session
from pipeline.core.errors import M3Error
from tests.helpers.paths import REPO
from tests.helpers.scenes import posed_scene

EXTRA = r'install m3\'s ray extra \(`pip install -c constraints.txt -e "\.\[ray\]"`\)'


def test_without_ray_the_ray_executor_names_the_extra(monkeypatch, demo_input, tmp_path):
    from stages.cli import app
    from stages.features import run

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when not installed
    scene = posed_scene(tmp_path / "scene", demo_input, 3)
    with pytest.raises(M3Error, match=f"^cluster: Ray is not installed .*; {EXTRA} or set cluster.executor: local$"):
        run({"weights": "random"}, scene, "clip", cluster=ClusterConfig(executor="ray"))
    with pytest.raises(M3Error, match=EXTRA), ray_session(ClusterConfig()):
        pass  # m3 cluster repro connects through the same session
    params = tmp_path / "params.yaml"
    params.write_text("models: [clip]\nfeatures:\n  clip: {weights: random}\ncluster: {executor: ray}\n")
    result = CliRunner().invoke(app, ["features", str(scene.root), "--params", str(params)])
    assert result.exit_code == 2 and "ray extra" in result.output and "Traceback" not in result.output
    # the local executor works without Ray
    result = CliRunner().invoke(app, ["features", str(scene.root), "--params", str(params), "--executor", "local"])
    assert result.exit_code == 0, result.output


def test_local_executor_never_imports_ray():
    code = (
        "import sys, stages.features, stages.cli, pipeline.features.extract; "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_checks_values():
    with pytest.raises(M3Error, match="ClusterConfig.actors: 0 is out of range; use >= 1"):
        ClusterConfig(actors=0)
    with pytest.raises(M3Error, match="ClusterConfig.object_store_mb: 10 is out of range; use >= 80"):
        ClusterConfig(object_store_mb=10)


# A client without the token (an empty HOME, RAY_AUTH_MODE=disabled) asks the GCS at argv[1] for its keys.
KNOCK = """
import sys
from ray._raylet import GcsClient
try:
    GcsClient(address=sys.argv[1]).internal_kv_keys(b"", None, timeout=10)
    print("accepted")
except Exception as exc:
    print("refused", type(exc).__name__, exc)
"""

# Runs in a fresh interpreter (a Ray already initialised in the test process would be reused): starts a
# private Ray through ray_session, runs a task, then knocks as that client on its GCS and its runtime-env
# agent (both listen on this machine's network address); prints what happened as JSON.
PROBE = """
import json, os, subprocess, sys, urllib.error, urllib.request
from pipeline.cluster.config import ClusterConfig
from pipeline.cluster.session import ray_session

knock, empty = sys.argv[1:3]
with ray_session(ClusterConfig(local_cpus=1, object_store_mb=100)) as ray:
    mode = os.environ.get("RAY_AUTH_MODE")
    task = ray.get(ray.remote(lambda: 7).remote())
    node = ray._private.worker._global_node
    tokenless = {**os.environ, "HOME": empty, "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-c", knock, node.gcs_address]
    gcs = subprocess.run(cmd, env=tokenless, capture_output=True, text=True, timeout=120).stdout.strip()
    request = urllib.request.Request(node.runtime_env_agent_address + "/get_runtime_envs_info", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            agent = r.status
    except urllib.error.HTTPError as exc:
        agent = exc.code
after = os.environ.get("RAY_AUTH_MODE")
print(json.dumps({"mode": mode, "task": task, "gcs": gcs, "agent": agent, "mode_after": after}))
"""


def test_a_private_ray_refuses_clients_without_its_token(tmp_path: Path) -> None:
    """Ray cannot be bound to loopback (its gRPC servers listen on every interface), so the private Ray
    must require Ray's token, even when the user opted out of it (``RAY_AUTH_MODE=disabled``, e.g. for
    an old cluster): a client on the network without the token is refused by the GCS and the agent."""
    pytest.importorskip("ray", reason='the ray extra is not installed (pip install -e ".[ray]")')
    (tmp_path / "home").mkdir()
    (tmp_path / "empty").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_AUTH_MODE="disabled", HOME=str(tmp_path / "home"))  # Ray makes its token there
    cmd = [sys.executable, "-c", PROBE, KNOCK, str(tmp_path / "empty")]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["gcs"].startswith("refused AuthenticationError"), probe  # "token is missing or incorrect"
    assert probe["agent"] == 401, probe  # "Unauthorized: Missing authentication token"
    assert probe["task"] == 7  # the driver and its workers hold the token
    assert probe["mode_after"] == "disabled"  # the user's setting is back after the session
