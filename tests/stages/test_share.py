"""Sharing cached stages across clones through real DVC remotes (local folder and SSH on loopback).

Clone A runs the demo pipeline up to ``bank`` and pushes outputs + run-cache; clone B pulls and
``dvc repro`` then runs no stage command; a ``bank`` param change in B recomputes only the bank;
a corrupted remote object is detected on pull and not used; a bank pulled with features that
changed since is refused.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers.project import dvc, git, project_copy, run_tool, set_params
from tests.helpers.sshd import ensure_sshd, start_sshd

SCENE = "demo"
TARGET = "bank@demo-clip"
UPSTREAM = ("demo", "frames@demo", "poses@demo", "features@demo-clip", "bank@demo-clip")


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _clone(origin: Path, dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(origin), str(dest)], check=True)
    return dest


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """origin repo (small random-weight config committed), clone A with the pipeline run up to bank."""
    tmp = tmp_path_factory.mktemp("share")
    origin = project_copy(tmp / "origin")
    set_params(
        origin,
        scenes=[SCENE],
        models=["clip"],
        demo={"n_views": 16},
        features={"clip": {"weights": "random"}},
        train={"cpu": {"iterations": 30}},
    )
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "small random-weight demo config")
    a = _clone(origin, tmp / "A")
    out = dvc(a, "repro", TARGET)
    for stage in UPSTREAM:
        assert f"Running stage '{stage}'" in out, out
    remote = tmp / "remote"
    remote.mkdir()
    run_tool(a, "m3", "share", "remote", "lab", str(remote))
    run_tool(a, "m3", "share", "push", SCENE, "--stages", "features,bank")
    return {"tmp": tmp, "origin": origin, "A": a, "remote": remote}


def _pull_and_repro(clone: Path, **env: str) -> str:
    run_tool(clone, "m3", "share", "pull", SCENE, "--stages", "features,bank", **env)
    proc = run_tool(clone, "dvc", "repro", TARGET, **env)
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_local_remote_round_trip_runs_nothing(shared: dict[str, Path]) -> None:
    a, b = shared["A"], _clone(shared["origin"], shared["tmp"] / "B")
    # the committed config holds no machine-specific remote
    assert "url" not in (b / ".dvc" / "config").read_text()
    run_tool(b, "m3", "share", "remote", "lab", str(shared["remote"]))
    assert str(shared["remote"]) in (b / ".dvc" / "config.local").read_text()

    out = _pull_and_repro(b)
    assert "Running stage" not in out, out
    for stage in UPSTREAM:
        assert f"Stage '{stage}' is cached - skipping run" in out, out
    bank = Path("data/demo/bank/clip.zarr")
    assert _tree_digest(b / bank) == _tree_digest(a / bank) != {}
    assert _tree_digest(b / "data/demo/features/clip.zarr") == _tree_digest(a / "data/demo/features/clip.zarr")
    assert "up to date" in dvc(b, "status", TARGET)

    # a bank param changes in B: only the bank recomputes
    set_params(b, bank={"clip": {"threshold": 0.9}})
    out = dvc(b, "repro", TARGET)
    assert "Running stage 'bank@demo-clip'" in out, out
    assert [line for line in out.splitlines() if line.startswith("Running stage")] == [
        "Running stage 'bank@demo-clip':"
    ]
    stats = json.loads((b / "data/demo/stats/bank-clip.json").read_text())
    assert stats["coverage"] == 1.0 and _tree_digest(b / bank) != _tree_digest(a / bank)


@pytest.mark.slow
def test_pulled_bank_with_changed_features_is_refused(shared: dict[str, Path]) -> None:
    from pipeline.bank.store import check_bank_matches, load_bank
    from pipeline.core.errors import M3Error
    from pipeline.features.store import FeatureStore

    c = _clone(shared["origin"], shared["tmp"] / "C")
    run_tool(c, "m3", "share", "remote", "lab", str(shared["remote"]))
    _pull_and_repro(c)
    # features recomputed with another config, the pulled bank kept as it is
    set_params(c, features={"clip": {"input_size": 84}})
    run_tool(c, "m3", "features", SCENE, "--model", "clip")
    _, attrs = load_bank(c / "data/demo/bank/clip.zarr")
    with pytest.raises(M3Error, match="other features"):
        check_bank_matches(attrs, FeatureStore.open(c / "data/demo/features/clip.zarr").attrs)
    train = run_tool(c, "m3", "train", SCENE, check=False)
    assert train.returncode == 2 and "other features" in train.stderr, train.stderr


@pytest.mark.slow
def test_trained_memory_is_shared_like_features_and_banks(shared: dict[str, Path], tmp_path: Path) -> None:
    """``m3 share --stages train``: a clone that pulls a trained memory restores it with ``dvc repro``
    (the train stage's run-cache is on: no output is ``persist``), and resumes nothing."""
    a = shared["A"]
    out = dvc(a, "repro", "train@demo")
    assert "Running stage 'train@demo'" in out, out
    run_tool(a, "m3", "share", "push", SCENE, "--stages", "train")
    e = _clone(shared["origin"], tmp_path / "E")
    run_tool(e, "m3", "share", "remote", "lab", str(shared["remote"]))
    run_tool(e, "m3", "share", "pull", SCENE, "--stages", "train")
    out = dvc(e, "repro", "train@demo")
    assert "Running stage" not in out and "Stage 'train@demo' is cached - skipping run" in out, out
    for name in ("point_cloud.ply", "memory.safetensors", "config.json", "stats.json"):
        assert (e / "data/demo/model" / name).read_bytes() == (a / "data/demo/model" / name).read_bytes(), name
    assert not (e / "data/demo/model/checkpoint.safetensors").exists()  # resume state stays with its run


def _bank_object(a: Path, remote: Path) -> Path:
    """A file of the bank's directory output, as stored in the remote."""
    lock = yaml.safe_load((a / "dvc.lock").read_text())
    dir_md5 = next(o["md5"] for o in lock["stages"][TARGET]["outs"] if o["md5"].endswith(".dir"))
    listing = json.loads((remote / "files" / "md5" / dir_md5[:2] / dir_md5[2:]).read_text())
    md5 = max(listing, key=lambda e: e["relpath"].count("/"))["md5"]
    return remote / "files" / "md5" / md5[:2] / md5[2:]


@pytest.mark.slow
def test_corrupted_remote_object_is_detected_not_used(shared: dict[str, Path], tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    subprocess.run(["cp", "-r", str(shared["remote"]), str(remote)], check=True)
    victim = _bank_object(shared["A"], remote)
    victim.chmod(0o644)
    victim.write_bytes(b"not what was pushed")

    d = _clone(shared["origin"], tmp_path / "D")
    run_tool(d, "m3", "share", "remote", "lab", str(remote))
    pull = run_tool(d, "m3", "share", "pull", SCENE, check=False)
    assert pull.returncode == 2, pull.stdout + pull.stderr
    assert "failed checksum verification" in pull.stderr and victim.name in pull.stderr, pull.stderr
    assert not list((d / ".dvc" / "cache").rglob(victim.name))
    # the bank is recomputed rather than restored from the corrupted object
    out = dvc(d, "repro", TARGET)
    assert "Running stage 'bank@demo-clip'" in out and "Running stage 'features@demo-clip'" not in out, out
    a_bank = _tree_digest(shared["A"] / "data/demo/bank/clip.zarr")
    assert _tree_digest(d / "data/demo/bank/clip.zarr") == a_bank


@pytest.mark.slow
def test_ssh_remote_round_trip(shared: dict[str, Path], tmp_path: Path) -> None:
    reason = ensure_sshd()
    if reason:
        pytest.skip(reason)
    server = start_sshd(tmp_path / "sshd")
    try:
        env = {"HOME": str(server.home)}  # known_hosts trusting the loopback server
        store = tmp_path / "ssh-remote"
        store.mkdir()
        a = shared["A"]
        run_tool(
            a, "m3", "share", "remote", "lab-ssh", server.url(store), "--keyfile", str(server.keyfile), "--no-default"
        )
        run_tool(a, "m3", "share", "push", SCENE, "--remote", "lab-ssh", **env)
        assert list((store / "runs").rglob("*")) and list((store / "files").rglob("*"))

        e = _clone(shared["origin"], tmp_path / "E")
        run_tool(e, "m3", "share", "remote", "lab-ssh", server.url(store), "--keyfile", str(server.keyfile))
        out = _pull_and_repro(e, **env)
        assert "Running stage" not in out, out
        bank = Path("data/demo/bank/clip.zarr")
        assert _tree_digest(e / bank) == _tree_digest(a / bank) != {}
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)


# --- `m3 share remote`: URL checks and credentials (fast: config only, no network) ---


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """A fresh DVC repository (no git) with no remote."""
    from dvc.repo import Repo

    root = tmp_path / "project"
    root.mkdir()
    Repo.init(str(root), no_scm=True).close()
    return root


def _local_config(root: Path) -> Path:
    return root / ".dvc" / "config.local"


def _remote_conf(root: Path, name: str = "lab") -> dict[str, object]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return dict(repo.config["remote"][name])


@pytest.mark.parametrize(
    "url",
    [
        "not a url at all ::",
        "",
        "ssh://",
        "foo://bar/x",
        "ssh://user@/srv/m3",  # no host
        "ssh://host:notaport/srv/m3",
        "me@nas:/srv/m3",  # scp syntax: DVC would take it as a local folder
        "/mnt/shared/m3\nremote",
        "foo://alice:secret@bar/x",  # refused, and the password is not echoed
        "https://alice:secret/secret@host/store",  # an unencoded '/' in a password
        "https://alice:123/secret@host/store",
    ],
)
def test_add_remote_refuses_malformed_url(dvc_repo: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.core.errors import M3Error
    from stages.share import add_remote

    with pytest.raises(M3Error) as err:
        add_remote(dvc_repo, "lab", url)
    message = str(err.value)
    assert "\n" not in message and "ssh://" in message, message  # one line, with an example of a valid URL
    assert "secret" not in message + "".join(capsys.readouterr()), message
    assert "lab" not in (_local_config(dvc_repo).read_text() if _local_config(dvc_repo).exists() else "")


@pytest.mark.parametrize(
    "url",
    ["ABSOLUTE", "relative/store", "ssh://user@host:22/path", "s3://bucket/path", "hdfs://user@namenode:8020/path"],
)
def test_add_remote_accepts_good_urls(dvc_repo: Path, url: str) -> None:
    from stages.share import add_remote

    if url == "ABSOLUTE":
        url = str(dvc_repo.parent / "remote")
    add_remote(dvc_repo, "lab", url)
    conf = _remote_conf(dvc_repo)
    if "://" in url:
        assert conf["url"] == url
    else:  # DVC keeps local folders relative to the config file and resolves them on load
        assert Path(str(conf["url"])) == (dvc_repo / url).resolve()
    assert oct(_local_config(dvc_repo).stat().st_mode & 0o777) == oct(0o600)


def test_add_remote_ssh_keyfile(dvc_repo: Path) -> None:
    from pipeline.core.errors import M3Error
    from stages.share import add_remote

    with pytest.raises(M3Error, match="--keyfile"):
        add_remote(dvc_repo, "lab", "s3://bucket/path", keyfile="~/.ssh/id_ed25519")
    add_remote(dvc_repo, "lab", "ssh://me@nas/srv/m3", keyfile="~/.ssh/id_ed25519")
    conf = _remote_conf(dvc_repo)
    assert conf["keyfile"] == str(Path("~/.ssh/id_ed25519").expanduser()) and conf["verify"] is True
    assert oct(_local_config(dvc_repo).stat().st_mode & 0o777) == oct(0o600)


@pytest.mark.parametrize(
    ("url", "stored", "options"),
    [
        (
            "https://alice:secret@example.com/store",
            "https://example.com/store",  # aiohttp ignores DVC's auth when the URL carries a user
            {"user": "alice", "password": "secret", "auth": "basic"},
        ),
        ("ssh://bob:secret%40x@nas:2222/srv/m3", "ssh://bob@nas:2222/srv/m3", {"password": "secret@x"}),
        ("webdavs://carol:secret@dav.example.com/m3", "webdavs://carol@dav.example.com/m3", {"password": "secret"}),
    ],
)
def test_add_remote_moves_password_out_of_url(
    dvc_repo: Path,
    url: str,
    stored: str,
    options: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from stages.share import add_remote

    config_local = _local_config(dvc_repo)
    config_local.write_text("[core]\n    autostage = false\n")  # an existing, world-readable config.local
    config_local.chmod(0o644)
    with caplog.at_level("DEBUG"):
        add_remote(dvc_repo, "lab", url)
    assert oct(config_local.stat().st_mode & 0o777) == oct(0o600)
    conf = _remote_conf(dvc_repo)
    assert conf["url"] == stored and "secret" not in str(conf["url"])
    assert {key: conf[key] for key in options} == options
    assert "secret" not in caplog.text + "".join(capsys.readouterr())
    assert ":***@" in caplog.text, caplog.text


def test_add_remote_refuses_password_where_dvc_keeps_none(dvc_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.core.errors import M3Error
    from stages.share import add_remote

    with pytest.raises(M3Error, match="dvc remote modify --local lab") as err:
        add_remote(dvc_repo, "lab", "s3://AKIAKEY:secret@bucket/path")
    assert "secret" not in str(err.value) + "".join(capsys.readouterr())
    assert not _local_config(dvc_repo).exists() or "secret" not in _local_config(dvc_repo).read_text()


def test_share_remote_cli_reports_bad_url(dvc_repo: Path) -> None:
    from typer.testing import CliRunner

    from stages.share import cli

    result = CliRunner().invoke(cli, ["remote", "lab", "not a url at all ::", "--root", str(dvc_repo)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
