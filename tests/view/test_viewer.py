"""The browser viewer: its geometry helpers, and the page in a real headless Chromium."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.scene import View, load_views
from pipeline.view.viewer import covariances, feature_pca_colors, up_direction, vertical_fov
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
