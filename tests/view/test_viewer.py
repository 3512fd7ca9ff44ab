"""The browser viewer: its geometry helpers, and the page in a real headless Chromium."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.scene import View, load_views
from pipeline.view.viewer import (
    Viewer,
    covariances,
    feature_pca_colors,
    is_loopback,
    origin_allowed,
    refuse_other_origins,
    up_direction,
    vertical_fov,
)
from tests.helpers.paths import REPO

W, H = 640, 480  # the browser viewport: the planted scene's 4:3 aspect


def test_covariances_up_and_fov() -> None:
    q = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    s = torch.randn(5, 3) * 0.3
    cov = covariances({"quats": q * 3.0, "scales": s, "means": torch.zeros(5, 3), "opacities": torch.zeros(5)})
    w, x, y, z = q.double().unbind(-1)
    for i in range(5):  # R from the quaternion (scipy's xyzw order), then R S^2 R^T
        from scipy.spatial.transform import Rotation

        R = Rotation.from_quat([x[i], y[i], z[i], w[i]]).as_matrix()
        np.testing.assert_allclose(cov[i], R @ np.diag(np.exp(2 * s[i].double().numpy())) @ R.T, atol=1e-5)
    K = np.array([[100.0, 0, 64], [0, 100.0, 48], [0, 0, 1]])
    tilt = np.radians(20)  # cameras looking along +y, tilted down, in a z-up world
    R = np.array([[1, 0, 0], [0, -np.sin(tilt), -np.cos(tilt)], [0, np.cos(tilt), -np.sin(tilt)]])
    w2c = np.eye(4)
    w2c[:3, :3] = R
    views = [View("a.png", Path("a.png"), K, w2c, 128, 96)]
    assert np.dot(up_direction(views), [0, 0, 1]) == pytest.approx(np.cos(tilt))
    assert vertical_fov(views[0]) == pytest.approx(2 * np.arctan(48 / 100))


def test_feature_pca_colors_follow_the_features() -> None:
    """Gaussians whose features differ along the main direction get different colours."""
    from types import SimpleNamespace

    from pipeline.splat.memory import Decoder

    torch.manual_seed(0)
    dec = Decoder(4, 16)
    q = torch.cat([torch.zeros(50, 4), torch.ones(50, 4)]) + 0.01 * torch.randn(100, 4)
    memory = SimpleNamespace(params={"q_clip": q}, heads={"clip": dec})
    colors = feature_pca_colors(memory, "clip", chunk=32)
    assert colors.shape == (100, 3) and colors.min() >= 0.0 and colors.max() <= 1.0
    # the first component (red) separates the two groups; the others stretch the small noise
    assert abs(colors[:50, 0].mean() - colors[50:, 0].mean()) > 0.8
    assert colors[:50, 0].std() < 0.1 and colors[50:, 0].std() < 0.1


def test_origin_allowed_is_the_viewers_own_page_only() -> None:
    loop, port = "127.0.0.1", 8080
    assert origin_allowed(None, "127.0.0.1:8080", loop, port)  # not a browser page
    for origin in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080"):
        assert origin_allowed(origin, "127.0.0.1:8080", loop, port), origin
    assert origin_allowed("http://localhost:9000", "localhost:9000", loop, port)  # ssh -L 9000:localhost:8080
    for origin, host in [
        ("http://evil.example", "127.0.0.1:8080"),
        ("http://evil.example:8080", "evil.example:8080"),  # DNS rebinding: a foreign name on our address
        ("http://localhost:3000", "localhost:8080"),  # another local site
        ("null", "127.0.0.1:8080"),
        ("file://", "127.0.0.1:8080"),
        ("http://127.0.0.1:8080/x", "127.0.0.1:8080"),
        ("http://127.0.0.1:99999", "127.0.0.1:8080"),
    ]:
        assert not origin_allowed(origin, host, loop, port), origin
    # every interface: the page's own origin as the browser names it, on our port
    assert origin_allowed("http://lab-pc:8080", "lab-pc:8080", "0.0.0.0", port)
    assert origin_allowed("http://10.0.0.5:8080", "10.0.0.5:8080", "0.0.0.0", port)
    assert origin_allowed("http://10.0.0.5:8080", "lab-pc:8080", "10.0.0.5", port)  # the bound address itself
    assert not origin_allowed("http://evil.example", "lab-pc:8080", "0.0.0.0", port)
    assert not origin_allowed("http://lab-pc:9000", "lab-pc:9000", "0.0.0.0", port)
    assert [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2")] == [True] * 5
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "", "10.0.0.5", "lab-pc"))


def test_the_origin_guard_fails_loudly_when_viser_changes() -> None:
    """No websockets server where viser 1.1.1 keeps it: an error, never a viewer without the guard."""
    import asyncio
    import threading
    from types import SimpleNamespace

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        server = SimpleNamespace(_websock_server=SimpleNamespace(_background_event_loop=loop))
        with pytest.raises(RuntimeError, match="internals changed; update pipeline.view.viewer.refuse_other_origins"):
            refuse_other_origins(server, "127.0.0.1", 8080)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _tiny_viewer(host: str) -> Viewer:
    """A :class:`Viewer` of 50 random Gaussians and two cameras (no trained scene), on a free port."""
    from types import SimpleNamespace

    n = 50
    params = {
        "means": torch.randn(n, 3),
        "quats": torch.randn(n, 4),
        "scales": torch.full((n, 3), -3.0),
        "opacities": torch.zeros(n),
        "sh0": torch.randn(n, 1, 3) * 0.3,
    }
    memory = SimpleNamespace(params=params, means=params["means"], opacities=torch.sigmoid(params["opacities"]))
    memory.models, memory.heads = [], {}
    session = SimpleNamespace(memory=memory, model="clip", scene=SimpleNamespace(root=Path("tiny")))
    K = np.array([[100.0, 0, 64], [0, 100.0, 48], [0, 0, 1]])
    views = []
    for i in range(2):
        w2c = np.eye(4)
        w2c[:3, 3] = [0.5 * i, 0, 4]
        views.append(View(f"view_{i}.png", Path(f"view_{i}.png"), K, w2c, 128, 96))
    return Viewer(session, views, host, _free_port())  # type: ignore[arg-type]


def _open(url: str, origin: str | None):
    """A websocket to ``url`` as viser's page opens it, sending ``origin``."""
    import viser
    from websockets.sync.client import connect

    return connect(url, origin=origin, subprotocols=[f"viser-v{viser.__version__}"], open_timeout=20)


def test_the_viewer_refuses_other_sites_pages(caplog) -> None:
    """A page of another site in the user's browser gets 403 (websocket and page files); the viewer's
    own page, and clients that are not pages, get the scene."""
    from websockets.exceptions import InvalidStatus

    viewer = _tiny_viewer("127.0.0.1")
    try:
        ws_url, port = f"ws://127.0.0.1:{viewer.port}", viewer.port
        assert viewer.url == f"http://127.0.0.1:{port}"
        for origin in ("http://evil.example", f"http://evil.example:{port}", "http://localhost:3000", "null"):
            with pytest.raises(InvalidStatus) as refused:
                _open(ws_url, origin)
            assert refused.value.response.status_code == 403, origin
        assert "refused a request from the page http://evil.example" in caplog.text
        for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", None):
            with _open(ws_url, origin) as ws:
                assert ws.recv(timeout=20), origin  # viser's messages: the scene reaches this page
        request = urllib.request.Request(viewer.url, headers={"Origin": "http://evil.example"})
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(request, timeout=20)
        with urllib.request.urlopen(viewer.url, timeout=20) as page:  # a browser's navigation: no Origin
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        viewer.close()
    assert "network" not in caplog.text


def test_a_viewer_on_every_interface_warns_and_takes_its_own_origin(caplog) -> None:
    from websockets.exceptions import InvalidStatus

    viewer = _tiny_viewer("0.0.0.0")
    try:
        assert "view: --host 0.0.0.0 shows the scene to everyone on the network" in caplog.text
        ws_url = f"ws://127.0.0.1:{viewer.port}"  # Host: 127.0.0.1:<port>, as the browser names the page
        with _open(ws_url, f"http://127.0.0.1:{viewer.port}") as ws:
            assert ws.recv(timeout=20)
        with pytest.raises(InvalidStatus, match="403"):
            _open(ws_url, "http://evil.example")
    finally:
        viewer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"m3 view exited ({proc.returncode}):\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"m3 view did not serve {url} within {timeout:.0f} s")


def _object_mask(planted, view: View, name: str) -> np.ndarray:
    """The object's pixels at the viewport size, seen through ``view`` (scaled intrinsics)."""
    K = np.asarray(view.K) * np.array([[W / view.width], [H / view.height], [1.0]])
    _, _, ids = planted.demo.render(K, np.asarray(view.w2c), W, H)
    return ids == [o.name for o in planted.demo.objects].index(name)


@pytest.mark.slow
@pytest.mark.browser
def test_viewer_in_headless_chromium(trained_planted, tmp_path: Path) -> None:
    """``m3 view`` in Chromium: splats drawn, a query typed into the page recolours the planted
    object and boxes it, the camera list moves the view, Ctrl-C stops the server."""
    from playwright.sync_api import sync_playwright

    from tests.helpers.browser import ensure_chromium, launch, settled

    chromium, reason = ensure_chromium()
    if chromium is None:
        pytest.fail(f"the browser test needs Chromium: {reason}")
    scene = trained_planted.scene
    port = _free_port()
    cmd = [sys.executable, "-m", "stages.cli", "view", str(scene.root), "--port", str(port), "--device", "cpu"]
    cmd += ["--vectors", "vectors.json", "--mode", "cosine"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its log reaches us even if it must be killed
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    shots = {}
    try:
        _wait_http(f"http://127.0.0.1:{port}", proc)
        with sync_playwright() as p:
            ctx = launch(p, chromium, tmp_path / "profile", W, H)
            page = ctx.new_page()
            page.goto(f"http://127.0.0.1:{port}", wait_until="load")
            page.locator(".mantine-Notification-closeButton").click()  # the "software WebGL" notice
            shots["before"] = settled(page)
            page.locator("xpath=//*[text()='Query']/following::input[1]").fill("blue sphere")
            page.get_by_role("button", name="Search").click()
            page.get_by_text("blue sphere:").wait_for(timeout=60000)
            shots["after"] = settled(page)
            page.locator("xpath=//*[text()='Camera']/following::input[1]").click()
            page.get_by_role("option", name="view_008.png").click()
            shots["camera"] = settled(page)
            ctx.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=120)  # a busy machine: the server's threads wind down
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        for name, img in shots.items():
            Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / f"{name}.png")
        print(f"screenshots in {tmp_path}")
    assert proc.returncode == 0 and "m3 view: stopping" in out, out
    before, after, camera = shots["before"], shots["after"], shots["camera"]
    panel = np.zeros((H, W), bool)
    panel[:240, W // 2 - 40 :] = True  # the control panel (top right)
    # splats are drawn: a varied picture, not the empty background
    assert before[~panel].std() > 0.1 and len(np.unique((before[~panel] * 31).astype(int), axis=0)) > 200
    # the query changed the picture, and what it highlights (saturated turbo colours where the
    # picture changed, the red box included) lies on the planted object
    diff = np.abs(after - before).mean(-1)
    assert diff[~panel].mean() > 0.05
    mx, mn = after.max(-1), after.min(-1)
    hot = (mx - mn > 0.5 * mx) & (mx > 0.35) & (diff > 0.1) & ~panel
    ys, xs = np.nonzero(hot)
    view = load_views(scene)[0]
    obj = _object_mask(trained_planted, view, "blue sphere")
    oy, ox = np.nonzero(obj)
    grown = np.zeros_like(obj)
    grown[max(oy.min() - 15, 0) : oy.max() + 16, max(ox.min() - 15, 0) : ox.max() + 16] = True
    share = grown[ys, xs].mean()
    print(f"hot pixels {hot.sum()}, centroid ({xs.mean():.0f}, {ys.mean():.0f}), on the object's box {share:.3f}")
    assert hot.sum() > 2000 and share > 0.8
    assert ox.min() <= xs.mean() <= ox.max() and oy.min() <= ys.mean() <= oy.max()
    # the camera list moved the view
    assert np.abs(camera - after).mean(-1)[~panel].mean() > 0.05
