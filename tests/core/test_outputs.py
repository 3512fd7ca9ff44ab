"""Output folders a user names (``--out``) never lose what m3 did not write.

``m3 query``, ``export``, ``ask`` and ``render`` write into a new or empty folder, or into an
earlier output of the same command (its marker file); a folder holding anything else, a file, the
current folder or the scene folder are refused with one line before any work, and nothing in them
changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.core.errors import M3Error
from pipeline.core.io import OUTPUT_MARKER, output_dir
from pipeline.core.scene import Scene
from pipeline.splat.train import train
from pipeline.splat.trained import write_model
from stages.cli import app
from tests.helpers.training import build_scene, quick_config


def test_output_dir_refuses_what_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_dir(out, "query") as tmp:
        (tmp / "a.png").write_text("1")
        (tmp / "localization.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "a.png", "localization.json"]
    with output_dir(out, "query") as tmp:  # an earlier output of the same command: replaced
        (tmp / "b.png").write_text("2")
        (tmp / "localization.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "b.png", "localization.json"]
    (out / "notes.txt").write_text("mine")  # a user's file inside an earlier output: kept
    with output_dir(out, "query") as tmp:
        (tmp / "c.png").write_text("3")
    assert (out / "notes.txt").read_text() == "mine" and not (out / "b.png").exists()
    with pytest.raises(M3Error, match="not an earlier output of `m3 export`"):
        with output_dir(out, "export"):
            pass
    with pytest.raises(M3Error, match="notes.txt: exists and was not written by `m3 query`"):
        with output_dir(out, "query") as tmp:
            (tmp / "notes.txt").write_text("overwrite?")
    assert (out / "notes.txt").read_text() == "mine"

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("p")
    with pytest.raises(M3Error, match="not empty and not an earlier output of `m3 query`; nothing was written"):
        with output_dir(mine, "query") as tmp:
            (tmp / "a.png").write_text("1")
    assert [p.name for p in mine.iterdir()] == ["keep.txt"] and (mine / "keep.txt").read_text() == "p"
    (tmp_path / "file").write_text("f")
    with pytest.raises(M3Error, match="file: is a file, not a folder"):
        with output_dir(tmp_path / "file", "render"):
            pass
    assert (tmp_path / "file").read_text() == "f"
    with pytest.raises(RuntimeError):  # a failure while writing leaves no trace of a new folder
        with output_dir(tmp_path / "new", "query") as tmp:
            (tmp / "half.png").write_text("x")
            raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()
    renders = tmp_path / "renders"
    for name in ("v1.png", "v2.png"):  # render keeps other views' files
        with output_dir(renders, "render", replace=False) as tmp:
            (tmp / name).write_text(name)
    assert json.loads((renders / OUTPUT_MARKER).read_text())["files"] == ["v1.png", "v2.png"]


def test_unwritable_output_folder_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """A read-only folder (simulated: the tests may run as root, who writes anyway)."""
    import pipeline.core.io as io

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(io.tempfile, "mkdtemp", denied)
    with pytest.raises(M3Error, match=r"ro: cannot write the output \(Permission denied\); give a writable folder"):
        with output_dir(tmp_path / "ro", "query"):
            pass
    monkeypatch.undo()
    monkeypatch.setattr(io.os, "replace", denied)
    with pytest.raises(M3Error, match="ro2: cannot write the output"):
        with output_dir(tmp_path / "ro2", "query") as tmp:
            (tmp / "a.png").write_text("1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Scene:
    scene = build_scene(tmp_path_factory.mktemp("outputs") / "s", n_views=10, width=64, height=48, n_points=300)
    tr = train(scene, quick_config(), ["clip"], progress=False)
    write_model(scene.model_dir, tr, {"steps": tr.step})
    (scene.root / "input").mkdir()
    (scene.root / "input" / "photo.jpg").write_text("the user's photo")
    return scene


@pytest.mark.parametrize("command", ["query", "export", "render"])
def test_out_never_deletes_data(trained: Scene, tmp_path: Path, command: str, monkeypatch) -> None:
    """The report's cases through the CLI: a folder with a user's file, the scene folder, the
    current folder (``--out .``), a file; then a new folder works and can be written again."""
    vector = tmp_path / "q.npy"
    np.save(vector, np.ones(32, np.float32))
    args = {
        "query": ["query", str(trained.root), "--vector", str(vector), "--mode", "cosine", "--device", "cpu"],
        "export": ["export", str(trained.root), "--vector", str(vector), "--mode", "cosine", "--device", "cpu"],
        "render": ["render", str(trained.root), "--device", "cpu"],
    }[command]
    params = tmp_path / "params.yaml"
    params.write_text("query: {}\nexport: {}\n")
    args += [] if command == "render" else ["--params", str(params)]
    keep = tmp_path / "x"
    keep.mkdir()
    (keep / "keep.txt").write_text("p")
    (tmp_path / "a-file").write_text("f")
    monkeypatch.chdir(keep)
    runner = CliRunner()
    for out, why in (
        (keep, "not empty"),
        (trained.root, "not empty"),
        (Path("."), "not empty"),
        (tmp_path / "a-file", "is a file"),
    ):
        res = runner.invoke(app, [*args, "--out", str(out)])
        assert res.exit_code == 2 and why in res.output and res.output.count("\n") == 1, res.output
    assert (keep / "keep.txt").read_text() == "p" and sorted(p.name for p in keep.iterdir()) == ["keep.txt"]
    assert (trained.root / "input" / "photo.jpg").read_text() == "the user's photo"
    assert (tmp_path / "a-file").read_text() == "f"
    for _ in range(2):  # a new folder, then the same output again
        res = runner.invoke(app, [*args, "--out", str(tmp_path / "new")])
        assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "new" / OUTPUT_MARKER).read_text())["command"] == command


def test_query_folder_names_keep_different_texts_apart() -> None:
    from pipeline.core.io import slug

    assert slug("a yellow duck") == "a-yellow-duck"
    names = {slug(t) for t in ("黄色的鸭子", "红色的盒子", "кот", "a duck?", "a duck!", "x" * 61, "x" * 62)}
    assert len(names) == 7 and all(n and "/" not in n and len(n) <= 69 for n in names)
    assert slug("黄色的鸭子").startswith("query-") and slug("a duck?").startswith("a-duck-")


def test_demo_scene_never_replaces_a_scenes_own_input(tmp_path: Path) -> None:
    from pipeline.demo.config import DemoConfig
    from stages.demo import run as demo

    photos = tmp_path / "mine" / "input"
    photos.mkdir(parents=True)
    (photos / "IMG_0001.jpg").write_text("a photo")
    with pytest.raises(M3Error, match="holds a scene's own input, not a rendered demo; nothing was replaced"):
        demo(DemoConfig(n_views=3, width=32, height=24), tmp_path / "mine")
    assert [p.name for p in photos.iterdir()] == ["IMG_0001.jpg"]
    cfg = DemoConfig(n_views=3, width=32, height=24, label_every=0)
    demo(cfg, tmp_path / "demo")
    demo(cfg, tmp_path / "demo")  # a rendered demo is replaced by the next render
    assert (tmp_path / "demo" / "input" / "ground_truth.json").is_file()


def test_atomic_outputs_get_the_usual_permissions(tmp_path: Path) -> None:
    """Written atomically, yet readable as any file (mkstemp / mkdtemp alone give 0600 / 0700)."""
    import os

    from pipeline.core.io import atomic_dir, write_json

    mask = os.umask(0o022)
    os.umask(mask)
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("x")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask
