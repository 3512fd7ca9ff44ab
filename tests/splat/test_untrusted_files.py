"""A trained memory or checkpoint from a DVC remote or a colleague is data: reading it never runs code.

A pickle payload (an object whose unpickling opens a file) is planted wherever m3 reads or used
to read a trained scene's tensors: ``memory.pt`` (the pickle earlier versions loaded), the heads
file and the checkpoint. Loading the memory and resuming training must never run it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from pipeline.core.errors import M3Error
from pipeline.core.scene import Scene
from pipeline.core.tensorfile import load_state, save_state
from pipeline.splat.checkpoint import CHECKPOINT_FILE
from pipeline.splat.train import train
from pipeline.splat.trained import HEADS_FILE, TrainedMemory, write_model
from tests.helpers.training import build_scene, quick_config


class Payload:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Scene:
    scene = build_scene(tmp_path_factory.mktemp("untrusted") / "s", n_views=10, width=64, height=48, n_points=300)
    tr = train(scene, quick_config(), ["clip"], progress=False)
    write_model(scene.model_dir, tr, {"steps": tr.step})
    return scene


def test_planted_pickles_never_run(trained: Scene, tmp_path: Path, caplog) -> None:
    marker = tmp_path / "PAYLOAD-RAN"
    model = trained.model_dir
    torch.save({"spec": Payload(marker), "state": {}}, model / "memory.pt")  # what m3 used to unpickle
    memory = TrainedMemory.load(trained)  # reads the tensors + JSON file, never the pickle
    assert memory.models == ["clip"] and not marker.exists()

    good = (model / HEADS_FILE).read_bytes()
    torch.save({"spec": Payload(marker)}, model / HEADS_FILE)  # a pickle under the new name
    with pytest.raises(M3Error, match=rf"{HEADS_FILE}: not an m3 tensor file"):
        TrainedMemory.load(trained)
    (model / HEADS_FILE).write_bytes(good)
    (model / HEADS_FILE).unlink()
    with pytest.raises(M3Error, match=r"memory\.pt: a pickle written by an older m3, not loaded"):
        TrainedMemory.load(trained)  # only the old pickle left: refused, not read
    (model / HEADS_FILE).write_bytes(good)

    for name in (CHECKPOINT_FILE, "checkpoint.pt"):
        torch.save({"provenance": Payload(marker)}, model / name)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        tr = train(trained, quick_config(iterations=1), ["clip"], progress=False)  # starts over
    assert tr.step == 1 and "not an m3 tensor file" in caplog.text
    assert not marker.exists()


def test_state_files_round_trip_exactly(tmp_path: Path) -> None:
    """Optimiser-style states (int keys, tuples, None, tensors of any dtype) come back as they were."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.randn(3, 2))], lr=0.1, betas=(0.8, 0.9))
    opt.zero_grad()
    opt.param_groups[0]["params"][0].sum().backward()
    opt.step()
    state = {"opt": opt.state_dict(), "rng": torch.get_rng_state(), "curves": [{"step": 1, "loss": 0.5}], "x": None}
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert back["opt"]["param_groups"][0]["betas"] == (0.8, 0.9)
    assert list(back["opt"]["state"]) == [0] and torch.equal(
        back["opt"]["state"][0]["exp_avg"], state["opt"]["state"][0]["exp_avg"]
    )
    assert torch.equal(back["rng"], state["rng"]) and back["rng"].dtype == torch.uint8
    assert back["curves"] == state["curves"] and back["x"] is None
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(M3Error, match="bad.safetensors: not an m3 tensor file"):
        load_state(tmp_path / "bad.safetensors")
