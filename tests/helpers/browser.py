"""A real headless browser for the viewer tests: Debian's Chromium driven by Playwright.

Playwright (pinned in the dev extras) only drives the browser; it never downloads one here:
:func:`ensure_chromium` installs Debian's ``chromium`` with apt when it is missing (as root, as
CI runs), and :func:`launch` starts it with software WebGL (SwiftShader) and without the
background services that stall on a closed network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-angle=swiftshader",  # WebGL in software: no GPU on the test machines
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def ensure_chromium() -> tuple[str | None, str | None]:
    """``(path, None)`` when Chromium is available (installing it with apt if needed), else ``(None, reason)``."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found, None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "chromium is not installed and cannot be installed here (not root or no apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if res.returncode != 0:
            return None, f"could not install chromium: {' '.join(cmd)} failed: {res.stderr.strip()[-400:]}"
    found = shutil.which("chromium")
    return (found, None) if found else (None, "apt installed chromium but no chromium executable is on PATH")


def launch(playwright: Any, executable: str, profile: Path, width: int, height: int) -> Any:
    """A headless Chromium context with a fresh profile folder and a ``width x height`` viewport."""
    return playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=executable,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": width, "height": height},
    )


def screenshot(page: Any) -> np.ndarray:
    """The page as ``[H, W, 3] float`` in [0, 1]."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(page.screenshot())) as im:
        return np.asarray(im.convert("RGB"), np.float64) / 255.0


def settled(page: Any, timeout: float = 90.0, interval: float = 1.5, tol: float = 0.002) -> np.ndarray:
    """The first screenshot that differs from the previous one by less than ``tol`` (mean absolute)
    and is not blank (the splats are drawn and sorted); the last one on ``timeout``."""
    prev = screenshot(page)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(interval)
        cur = screenshot(page)
        if np.abs(cur - prev).mean() < tol and cur.std() > 0.05:
            return cur
        prev = cur
    return prev
