"""Ray is an optional extra: without it, the ray executor and `m3 cluster repro` are one clear error
naming the extra; the local executor never imports Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pipeline.cluster.config import ClusterConfig
from pipeline.cluster.session import ray_session
from pipeline.core.errors import M3Error
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
    with pytest.raises(M3Error, match="actors=0"):
        ClusterConfig(actors=0)
    with pytest.raises(M3Error, match="object_store_mb"):
        ClusterConfig(object_store_mb=10)
