"""``m3 serve`` refuses bad requests with a 4xx one-line detail, asks for a token off loopback,
and limits body sizes and request rates."""

from __future__ import annotations

import http.client
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from stages.server.client import M3Client, M3ServerError
from tests.helpers.paths import REPO
from tests.serve.conftest import Served, free_port, running, serve_command


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """``(status, JSON body)`` of a raw POST."""
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


BAD = [
    # (name, path, body, status, words in the detail)
    ("malformed JSON", "/scenes/alpha/query", b'{"text": "red', 422, ["json"]),
    ("not an object", "/scenes/alpha/query", b"[1, 2]", 422, ["body"]),
    ("wrong vector size", "/scenes/alpha/query", json.dumps({"vector": [1.0] * 5}).encode(), 400, ["5 dims", "32"]),
    ("zero vector", "/scenes/alpha/relevance", json.dumps({"vector": [0.0] * 32}).encode(), 400, ["all zero"]),
    ("vector too long", "/scenes/alpha/query", json.dumps({"vector": [1.0] * 70000}).encode(), 422, ["vector"]),
    (
        "text and vector",
        "/scenes/alpha/query",
        json.dumps({"text": "a", "vector": [1.0] * 32}).encode(),
        400,
        ["either a text or"],
    ),
    ("neither", "/scenes/alpha/export", b"{}", 400, ["either a text or"]),
    ("unknown scene", "/scenes/nowhere/query", json.dumps({"text": "red thing"}).encode(), 404, ["nowhere", "alpha"]),
    ("bad scene name", "/scenes/..%2E/query", json.dumps({"text": "red thing"}).encode(), 400, ["not allowed"]),
    ("path escape", "/scenes/..%2Fbeta/query", json.dumps({"text": "red thing"}).encode(), 404, ["not found"]),
    ("dotted scene name", "/scenes/.hidden/query", json.dumps({"text": "red thing"}).encode(), 400, ["not allowed"]),
    (
        "unknown model",
        "/scenes/alpha/query",
        json.dumps({"text": "red thing", "model": "sam"}).encode(),
        404,
        ["'sam'", "clip"],
    ),
    (
        "unknown view",
        "/scenes/alpha/query",
        json.dumps({"text": "red thing", "views": ["x.png"]}).encode(),
        404,
        ["x.png"],
    ),
    ("unknown render view", "/scenes/alpha/render", json.dumps({"view": "x.png"}).encode(), 404, ["x.png"]),
    ("view and camera", "/scenes/alpha/render", json.dumps({}).encode(), 400, ["view", "camera"]),
    (
        "bad camera",
        "/scenes/alpha/render",
        json.dumps({"camera": {"viewmat": [[1, 0, 0, 0]] * 4, "K": [[0, 0, 0]] * 3, "width": 8, "height": 8}}).encode(),
        400,
        ["focal"],
    ),
    ("empty text", "/scenes/alpha/query", json.dumps({"text": "  "}).encode(), 400, ["empty"]),
    ("huge text", "/scenes/alpha/query", json.dumps({"text": "duck " * 1000}).encode(), 422, ["text", "1000"]),
    ("top_k 0", "/scenes/alpha/query", json.dumps({"text": "red thing", "top_k": 0}).encode(), 422, ["top_k"]),
    ("unknown field", "/scenes/alpha/query", json.dumps({"text": "red thing", "colour": 1}).encode(), 422, ["colour"]),
    ("bad mode", "/scenes/alpha/query", json.dumps({"text": "red thing", "mode": "fuzzy"}).encode(), 422, ["mode"]),
    ("empty question", "/scenes/alpha/ask", json.dumps({"question": ""}).encode(), 400, ["empty"]),
]


@pytest.mark.parametrize(("name", "path", "body", "status", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_one_line(served: Served, name, path, body, status, words) -> None:
    got, answer = post(served.url + path, body)
    detail = answer["detail"]
    assert got == status, detail
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail and detail
    for word in words:
        assert word.lower() in detail.lower(), detail


@pytest.mark.parametrize("chunked", [False, True])
def test_a_huge_body_is_refused(served: Served, chunked: bool) -> None:
    """Over 1 MiB: 413 as soon as the declared length says so, or once the chunks read exceed it."""
    conn = http.client.HTTPConnection("127.0.0.1", int(served.url.rsplit(":", 1)[1]), timeout=60)
    conn.putrequest("POST", "/scenes/alpha/query")
    conn.putheader("Content-Type", "application/json")
    conn.putheader(*(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(2 << 20))))
    conn.endheaders()
    if chunked:
        chunk = b"a" * (64 << 10)
        try:
            for _ in range(20):
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:  # the server answered and closed: what follows reads its answer
            pass
    resp = conn.getresponse()
    detail = json.loads(resp.read())["detail"]
    conn.close()
    assert resp.status == 413 and "over 1048576 bytes" in detail


def test_the_client_raises_the_detail(served: Served) -> None:
    with pytest.raises(M3ServerError) as err:
        served.client.query("alpha", vector=[1.0, 2.0])
    assert err.value.status == 400 and "2 dims" in err.value.detail and str(err.value).startswith("HTTP 400: ")
    assert served.process.poll() is None  # the server is still up


def test_off_loopback_needs_a_token(tmp_path: Path) -> None:
    """--host 0.0.0.0 without a token is refused at start with one line."""
    proc = subprocess.run(
        serve_command("--host", "0.0.0.0", "--port", str(free_port())),
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--token" in lines[0] and "0.0.0.0" in lines[0], proc.stderr


def test_a_port_in_use_is_one_line(served: Served) -> None:
    port = served.url.rsplit(":", 1)[1]
    proc = subprocess.run(serve_command("--port", port), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "--port" in proc.stderr


def test_token_and_rate_limit(tmp_path: Path) -> None:
    """With --token every endpoint but /health wants the bearer header; one client gets --rate a minute."""
    port, token = free_port(), "s3cret-token"
    url = f"http://127.0.0.1:{port}"
    args = ["--host", "0.0.0.0", "--port", str(port), "--token", token, "--rate", "30"]
    with running(args, tmp_path / "server.log", url):
        anonymous, wrong, right = M3Client(url), M3Client(url, "nope"), M3Client(url, token)
        assert anonymous.health() == {"status": "ok"}
        for client, why in [(anonymous, "no bearer token"), (wrong, "a wrong bearer token")]:
            with pytest.raises(M3ServerError) as err:
                client.scenes()
            assert err.value.status == 401 and why in err.value.detail
        assert isinstance(right.scenes(), list)
        statuses = []
        for _ in range(40):
            try:
                right.health()
                statuses.append(200)
            except M3ServerError as exc:
                statuses.append(exc.status)
                assert "at most 30 a minute" in exc.detail
        assert 200 in statuses and statuses[-1] == 429 and statuses.count(200) <= 30
        assert "bearer token required" in " ".join((tmp_path / "server.log").read_text().split())


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "http://evil.example"}, 403),  # a page of another site
        ({"Origin": "http://127.0.0.1:1"}, 403),  # a loopback page on another port
        ({"Host": "rebind.example"}, 403),  # DNS rebinding: a name resolving to 127.0.0.1
        ({}, 200),  # a program
        ({"Host": "localhost"}, 200),  # through a tunnel or by name
    ],
)
def test_other_sites_are_refused(served: Served, headers: dict[str, str], status: int) -> None:
    """A browser page of another site (Origin) or a foreign Host is refused before any work; the
    server's own origin and programs (no Origin) are not."""
    body = json.dumps({"text": "red thing", "top_k": 3}).encode()
    got, answer = post(served.url + "/scenes/alpha/query", body, headers)
    assert got == status, answer
    if status == 403:
        assert "other sites" in answer["detail"]
    same = {"Origin": served.url}
    assert post(served.url + "/scenes/alpha/query", body, same)[0] == 200
