"""Command ``m3 view``: the trained memory in the browser, with a text box that queries it.

Reads ``params.yaml: view`` (the query settings plus ``host`` and ``port``). Not a DVC stage.
Starts a local web server (viser; the page renders the Gaussian splats itself, so no GPU is
needed here) at ``http://127.0.0.1:8080`` by default and serves until Ctrl-C; pages of other sites
get HTTP 403. See :mod:`pipeline.view.viewer` for what the page shows.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import M3Error
from pipeline.view.config import ViewConfig
from stages.command import PARAMS, SCENE, Options, command, resolve_scene

if TYPE_CHECKING:
    from pipeline.core.scene import Scene
    from pipeline.view.viewer import Viewer

log = logging.getLogger(__name__)


def start(config: ViewConfig, scene: Scene) -> Viewer:
    """Load ``scene``'s memory and start its viewer (returns at once; :meth:`Viewer.close` stops it)."""
    from pipeline.core.scene import load_views
    from pipeline.query.session import QuerySession
    from pipeline.view.viewer import Viewer

    session = QuerySession(scene, config, "view")
    try:
        viewer = Viewer(session, load_views(scene), config.host, config.port)
    except OSError as exc:
        raise M3Error(f"view: cannot serve on {config.host}:{config.port} ({exc}); pick another --port") from None
    log.info("m3 view %s: %s (Ctrl-C to stop)", scene.name, viewer.url)
    return viewer


def run(config: ViewConfig, scene: Scene, stop: threading.Event | None = None) -> None:
    """Serve ``scene``'s viewer until Ctrl-C or SIGTERM (or until ``stop`` is set), then shut it down."""
    viewer = start(config, scene)
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # our own handlers: a process started in the background by a script inherits SIGINT ignored
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
        log.info("m3 view: stopping")
    finally:
        viewer.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@command(ViewConfig)
def cli(options: Options[ViewConfig], scene: str = SCENE, params: Path = PARAMS) -> None:
    """Open the trained memory in the browser: Gaussian splats, a query box that recolours them by
    relevance and draws the answer's 3D box, RGB / feature PCA colours, the scene's cameras.

    Binds 127.0.0.1:8080 unless --host/--port say otherwise (--host 0.0.0.0 shows the scene to everyone
    on the network); only the viewer's own page may connect. Ctrl-C stops it.
    """
    run(options.load("view", params), resolve_scene(scene))
