"""``m3 serve`` answers as the CLI does: the same localization.json, PNG and PLY bytes; warm
answers from concurrent clients; a retrained memory is reloaded without a restart."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import load_config
from pipeline.core.scene import Scene, load_views
from pipeline.query.config import ExportConfig, QueryConfig
from pipeline.query.session import QuerySession
from stages.server.client import M3ServerError
from tests.helpers.paths import REPO
from tests.serve.conftest import PHRASES, Served, train_scene


def cli_query(served: Served, scene: str, out: Path, text=None, vector=None, **options) -> dict:
    """``m3 query`` on the same scene and params, in ``out``."""
    from stages.query import run

    config = load_config(QueryConfig, "query", served.params, options)
    return run(config, served.scenes[scene], text, None if vector is None else np.asarray(vector, np.float32), out)


def test_query_equals_the_cli(served: Served, tmp_path: Path) -> None:
    """localization.json, the heatmap PNG bytes and the relevance equal m3 query's."""
    got = served.client.query("alpha", PHRASES[0], heatmaps=True, relevance=True)
    want = cli_query(served, "alpha", tmp_path / "q", PHRASES[0])
    heatmaps, relevance = got.pop("heatmaps"), got.pop("relevance")
    assert got == json.loads((tmp_path / "q" / "localization.json").read_text()) == json.loads(json.dumps(want))
    assert len(heatmaps) == 2 and set(heatmaps) == set(want["views"])
    for name, png in heatmaps.items():
        assert png == (tmp_path / "q" / f"{Path(name).stem}.png").read_bytes(), name
    config = load_config(QueryConfig, "query", served.params)
    session = QuerySession(served.scenes["alpha"], config)
    expected = session.relevance(session.encode(PHRASES[0])).numpy()
    assert relevance.dtype == np.float32 and relevance.shape == expected.shape
    np.testing.assert_array_equal(relevance, expected)
    np.testing.assert_array_equal(served.client.relevance("alpha", PHRASES[0]), expected)


def test_m3_query_with_server_writes_the_local_files(served: Served, tmp_path: Path) -> None:
    """m3 query --server writes the same localization.json and heatmap PNGs as a local m3 query,
    options given on its command line included; a wrong server URL is one line."""
    from pipeline.core.errors import M3Error
    from stages.query import run_on_server

    config = load_config(QueryConfig, "query", served.params, {"top_k": 5})
    local = cli_query(served, "alpha", tmp_path / "local", PHRASES[1], top_k=5)
    remote = run_on_server(config, served.scenes["alpha"], served.url, None, PHRASES[1], None, tmp_path / "remote")
    assert remote == json.loads(json.dumps(local)) and remote["n_selected"] == 5
    files = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "remote").iterdir()) and len(files) == 4  # 2 PNGs, JSON, marker
    for name in files:
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "remote" / name).read_bytes(), name
    with pytest.raises(M3Error, match="no m3 serve answers there"):
        run_on_server(config, served.scenes["alpha"], "http://127.0.0.1:9", None, PHRASES[1], None, tmp_path / "x")
    with pytest.raises(M3Error, match="is not served"):
        run_on_server(config, Scene(tmp_path / "gamma"), served.url, None, PHRASES[1], None, tmp_path / "y")


def test_m3_query_with_server_loads_no_torch(served: Served, tmp_path: Path) -> None:
    """The --server path answers without loading torch in the command's process (its point)."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from pipeline.core.config import load_config; "
        "from pipeline.core.scene import Scene; "
        "from pipeline.query.config import QueryConfig; from stages.query import run_on_server; "
        f"c = load_config(QueryConfig, 'query', {str(served.params)!r}); "
        f"r = run_on_server(c, Scene(Path({str(served.scenes['alpha'].root)!r})), {served.url!r}, None, "
        f"{PHRASES[0]!r}, None, {str(tmp_path / 'q')!r}); "
        "assert 'torch' not in sys.modules, 'torch loaded'; print(r['n_inliers'])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) > 0 and (tmp_path / "q" / "localization.json").is_file()


def test_request_options_override_the_params(served: Served, tmp_path: Path) -> None:
    """A vector query with top_k and named views equals m3 query with the same options."""
    vector = np.random.default_rng(1).normal(size=32)
    views = [v.name for v in load_views(served.scenes["alpha"])[3:5]]
    got = served.client.query("alpha", vector=vector, top_k=7, attention_k=2, views=views, heatmaps=True)
    want = cli_query(served, "alpha", tmp_path / "v", vector=vector, top_k=7, attention_k=2, views=views)
    assert set(got.pop("heatmaps")) == set(views)
    assert got == json.loads(json.dumps(want))
    alone = served.client.query("alpha", vector=vector, top_k=7, attention_k=2, views=views)  # no render
    assert alone["views"] == {} and {**alone, "views": got["views"]} == got
    assert got["query"] == "<vector>" and got["config"]["top_k"] == 7 and list(got["views"]) == views
    assert got["n_selected"] == 7


def test_export_equals_the_cli(served: Served, tmp_path: Path) -> None:
    from stages.export import run

    ply = served.client.export("alpha", PHRASES[1], quantile=0.9)
    config = load_config(ExportConfig, "export", served.params, {"quantile": 0.9})
    sel = run(config, served.scenes["alpha"], PHRASES[1], None, tmp_path / "e")
    assert ply == (tmp_path / "e" / "object.ply").read_bytes() and ply.startswith(b"ply\n")
    assert f"element vertex {sel['n_inliers']}\n".encode() in ply[:2000]


def test_render_equals_the_cli(served: Served, tmp_path: Path) -> None:
    """rgb and feature PCA PNGs equal m3 render's; a camera given by its matrices renders as its
    view; a relevance render equals m3 query's heatmap on that view alone."""
    from stages.render import run

    view = load_views(served.scenes["alpha"])[2]
    run(served.scenes["alpha"], [view.name], tmp_path / "r", "cpu")
    stem = Path(view.name).stem
    rgb = served.client.render("alpha", view.name)
    assert rgb == (tmp_path / "r" / f"{stem}_rgb.png").read_bytes()
    pca = served.client.render("alpha", view.name, what="features")
    assert pca == (tmp_path / "r" / f"{stem}_clip_pca.png").read_bytes()
    camera = {"viewmat": view.w2c.tolist(), "K": view.K.tolist(), "width": view.width, "height": view.height}
    assert served.client.render("alpha", camera=camera) == rgb
    heat = served.client.render("alpha", view.name, what="relevance", text=PHRASES[0])
    cli_query(served, "alpha", tmp_path / "h", PHRASES[0], views=[view.name])
    assert heat == (tmp_path / "h" / f"{stem}.png").read_bytes() != rgb


def test_scene_listing_and_info(served: Served) -> None:
    assert served.client.scenes() == ["alpha", "beta"]
    info = served.client.scene("alpha")
    views = [v.name for v in load_views(served.scenes["alpha"])]
    assert info["models"] == ["clip"] and info["method"] == "memory" and info["views"] == views
    assert info["gaussians"] > 100 and info["provenance"] and len(info["digest"]) == 16


def test_concurrent_clients_get_their_own_answers(served: Served) -> None:
    """Two threads querying different things at once each get the answer a lone query gets."""
    alone = {p: served.client.query("alpha", p) for p in PHRASES}
    answers: dict[str, list[dict]] = {p: [] for p in PHRASES}
    errors: list[BaseException] = []

    def ask(phrase: str) -> None:
        try:
            for _ in range(3):
                answers[phrase].append(served.client.query("alpha", phrase))
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(p,)) for p in PHRASES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    for p in PHRASES:
        assert answers[p] == [alone[p]] * 3
    assert alone[PHRASES[0]]["centroid"] != alone[PHRASES[1]]["centroid"]


def test_a_retrained_memory_is_reloaded(served: Served, tmp_path: Path) -> None:
    """Retraining ``beta`` with another seed: the next answer comes from the new memory, as the CLI's."""
    before = served.client.query("beta", PHRASES[0], relevance=True)
    digest = served.client.scene("beta")["digest"]
    train_scene(served.scenes["beta"], seed=7)
    after = served.client.query("beta", PHRASES[0], relevance=True, heatmaps=True)
    assert served.client.scene("beta")["digest"] != digest
    assert not np.array_equal(before.pop("relevance"), after.pop("relevance"))
    after.pop("heatmaps")
    assert after == json.loads(json.dumps(cli_query(served, "beta", tmp_path / "b", PHRASES[0])))
    assert after != before


def test_ask_needs_a_vlm_memory(served: Served) -> None:
    with pytest.raises(M3ServerError) as err:
        served.client.ask("alpha", "What is on the table?")
    assert err.value.status == 409 and "llamav" in err.value.detail


def test_engines_per_scene_are_bounded(served: Served) -> None:
    """Requests choose attention_k: a scene keeps at most MAX_ENGINES relevance engines (the oldest go)."""
    import dataclasses

    from stages.server.pool import MAX_ENGINES, WarmScene

    warm = WarmScene(served.scenes["alpha"], "cpu")
    warm.refresh()
    config = load_config(QueryConfig, "query", served.params)
    engines = [warm.engine("clip", dataclasses.replace(config, attention_k=k)) for k in range(1, MAX_ENGINES + 3)]
    assert len(warm._engines) == MAX_ENGINES and MAX_ENGINES >= 2
    assert warm.engine("clip", dataclasses.replace(config, attention_k=MAX_ENGINES + 2)) is engines[-1]  # kept
    assert warm.engine("clip", dataclasses.replace(config, attention_k=1)) is not engines[0]  # dropped, rebuilt
