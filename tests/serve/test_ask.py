"""``POST /scenes/{scene}/ask`` answers as ``m3 ask`` does, on a memory trained with llamav (a
random-weight Llama-3.2-Vision family VLM)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import load_config
from pipeline.core.scene import Scene, load_views
from pipeline.query.config import AskConfig
from stages.server.client import M3Client, M3ServerError
from tests.helpers.scenes import gt_scene
from tests.serve.conftest import free_port, running

QUESTION = "What is on the table?"


@pytest.mark.slow
def test_ask_equals_the_cli(tmp_path: Path) -> None:
    from pipeline.bank.config import BankConfig
    from pipeline.demo.scene import build_demo_scene
    from pipeline.query.ask import ask
    from pipeline.splat.config import TrainConfig
    from stages.bank import run as bank_run
    from stages.features import run as features_run
    from stages.train import run as train_run

    demo = build_demo_scene(12, 128, 96, seed=0)
    posed = gt_scene(tmp_path / "posed", demo, 128, 96, 1500, stride=11)
    scene = Scene(tmp_path / "vlm")
    shutil.copytree(posed.colmap_dir, scene.colmap_dir)
    features_run({"weights": "random", "family": "mllama"}, scene, "llamav")
    bank_run(BankConfig(threshold=0.6), scene, "llamav")
    cfg = TrainConfig(query_dims={"llamav": 8}, pixels=300, device="cpu", backend="torch", checkpoint_every=1000)
    train_run(cfg.with_schedule("cpu", iterations=4, densify_start=1000), scene, ["llamav"], progress=False)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"ask": {"max_new_tokens": 6, "device": "cpu"}, "query": {"device": "cpu"}}))
    view = load_views(scene)[3].name
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running([str(scene.root), "--port", str(port), "--params", str(params)], tmp_path / "server.log", url):
        client = M3Client(url)
        config = load_config(AskConfig, "ask", params)
        for region in (None, "0,0,64,48"):
            got = client.ask("vlm", QUESTION, view=view, region=region)
            want, _ = ask(config, scene, QUESTION, view, None, region, tmp_path / f"cli-{region}")
            assert got == json.loads(json.dumps(want)) and got["answer"]
            assert got["image_tokens"] == (64 if region is None else 16)
        with pytest.raises(M3ServerError) as err:
            client.ask("vlm", QUESTION, view="nope.png")
        assert err.value.status == 404 and "nope.png" in err.value.detail
