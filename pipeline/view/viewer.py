"""The browser viewer: a trained memory's Gaussians as splats in viser, queried from a text box.

viser serves a web page that renders the Gaussian splats itself (WebGL in the browser), so the
machine running ``m3 view`` needs no GPU. The page shows:

* the Gaussians, coloured by the **Colour** selector: ``RGB`` (view-independent, the SH DC
  term), ``<model> PCA`` (each Gaussian's feature through its memory head, 3-component PCA) or
  ``relevance`` (the last query: turbo on the upper half of the relevance range, the rest
  dimmed, as ``m3 export``'s relevance.ply);
* a **Query** text box and a **Search** button: the text (or a phrase of the vectors file) runs
  the query engine (:class:`~pipeline.query.session.QuerySession`), recolours by relevance
  and draws the selected Gaussians' 3D box (red wireframe); the status line says how many;
* the scene's cameras: a **Camera** list (pick one to look through it) and clickable frustums.

New browser tabs start at the first camera.

Only the viewer's own page may talk to it: a request whose ``Origin`` is another site (a page in
the same browser) gets HTTP 403 (:func:`origin_allowed`, :func:`refuse_other_origins`).
"""

from __future__ import annotations

import asyncio
import http
import ipaddress
import logging
import threading
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from torch import Tensor

from pipeline.core.errors import M3Error
from pipeline.core.images import PCA3
from pipeline.core.scene import View
from pipeline.query.colors import base_colors, relevance_colors
from pipeline.query.session import QuerySession
from pipeline.splat.gaussians import QUERY_PREFIX, activated
from pipeline.splat.trained import TrainedMemory

log = logging.getLogger(__name__)

RGB, RELEVANCE = "RGB", "relevance"
PCA_SAMPLE = 20000  # Gaussians the PCA basis is fitted on


def covariances(params: dict[str, Tensor]) -> np.ndarray:
    """World covariances ``R diag(s^2) R^T`` ``[N, 3, 3]`` of the Gaussians."""
    _, quats, scales, _ = activated(params, detach=True)
    w, x, y, z = torch.nn.functional.normalize(quats.float().cpu(), dim=-1).unbind(-1)
    rot = torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )
    m = rot * scales.float().cpu()[:, None, :]
    return (m @ m.transpose(1, 2)).numpy()


def feature_pca_colors(memory: TrainedMemory, model: str, chunk: int = 8192) -> np.ndarray:
    """Each Gaussian's feature in ``model``'s space (chunked) as PCA colours ``[N, 3]`` in [0, 1]."""
    queries = memory.params[QUERY_PREFIX + model].detach()
    head = memory.heads[model]
    step = max(1, len(queries) // PCA_SAMPLE)
    with torch.no_grad():
        pca = PCA3(head(queries[::step]).float().cpu())
        parts = [pca(head(queries[s : s + chunk]).float().cpu()) for s in range(0, len(queries), chunk)]
    return np.concatenate(parts).astype(np.float64) / 255.0


def up_direction(views: list[View]) -> np.ndarray:
    """The scene's up: the mean of the cameras' up axes (-y of OpenCV cameras) in world coordinates."""
    ups = np.array([-np.asarray(v.w2c)[1, :3] for v in views])
    up = ups.mean(0)
    return up / max(float(np.linalg.norm(up)), 1e-12)


def vertical_fov(view: View) -> float:
    """The view's vertical field of view in radians."""
    return float(2 * np.arctan(view.height / 2 / np.asarray(view.K)[1, 1]))


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str | None, host_header: str | None, bind: str, port: int) -> bool:
    """Whether a request with these ``Origin`` and ``Host`` headers may reach a viewer serving on
    ``bind``:``port``, i.e. comes from the viewer's own page (or from no page at all).

    * no ``Origin`` (a client that is not a browser page): yes;
    * bound to loopback: an origin on a loopback name or address (``localhost``, ``127.0.0.1``,
      ``[::1]``) with the viewer's port, or the same origin as the request's ``Host`` (the page
      behind ``ssh -L 9000:localhost:8080``); never another name, so a DNS-rebinding site is out;
    * bound to another address: ``http://<bind>:<port>``, or the same origin as the request's
      ``Host`` with the viewer's port (``--host 0.0.0.0`` browsed as ``http://<machine>:<port>``).
    """
    if origin is None:
        return True
    try:
        parts = urlsplit(origin)
        origin_port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return False
    name = parts.hostname
    if parts.scheme not in ("http", "https") or not name or parts.path or parts.query or parts.username:
        return False
    same = host_header is not None and parts.netloc.lower() == host_header.strip().lower()
    if is_loopback(bind):
        return is_loopback(name) and (origin_port == port or same)
    return origin_port == port and (name == bind.strip("[]").lower() or same)


def refuse_other_origins(server: Any, bind: str, port: int) -> None:
    """Make the running viser ``server`` answer HTTP 403 to every request (the page's files and the
    websocket) that :func:`origin_allowed` refuses, before it reaches viser.

    viser 1.1.1 (pinned) has no option for it, and binds in its constructor with its own
    ``process_request`` (page files). Its websockets ``Server`` is the local ``serve_future`` of
    viser's ``start_server`` task; its ``process_request`` is read per connection, so wrapping it
    there guards every later connection. Done in viser's event loop, which then also drops the
    connections accepted before (no page of ours can have one yet: the scene is drawn after this).
    Raises ``RuntimeError`` if viser's internals are not what this expects.
    """
    import viser
    from websockets.asyncio.server import Server

    loop = server._websock_server._background_event_loop
    refused: set[str | None] = set()

    async def install() -> None:
        found = [
            frame.f_locals.get("serve_future")
            for task in asyncio.all_tasks(loop)
            if (frame := getattr(task.get_coro(), "cr_frame", None)) is not None
            and frame.f_code.co_name == "start_server"
        ]
        if len(found) != 1 or not isinstance(found[0], Server):
            raise RuntimeError(
                f"view: found no websockets server in viser {viser.__version__} to guard: its internals "
                "changed; update pipeline.view.viewer.refuse_other_origins for it"
            )
        ws = found[0]
        inner = ws.process_request

        def process_request(connection: Any, request: Any) -> Any:
            origins, hosts = request.headers.get_all("Origin"), request.headers.get_all("Host")
            origin, host = next(iter(origins), None), next(iter(hosts), None)
            if len(origins) <= 1 and len(hosts) <= 1 and origin_allowed(origin, host, bind, port):
                return inner(connection, request) if inner is not None else None
            if origin not in refused:
                refused.add(origin)
                log.warning("view: refused a request from the page %s (not this viewer's page)", origin)
            return connection.respond(http.HTTPStatus.FORBIDDEN, "Forbidden: not this viewer's page\n")

        ws.process_request = process_request
        for connection in list(ws.handlers):  # accepted before: not guarded
            connection.transport.abort()

    asyncio.run_coroutine_threadsafe(install(), loop).result(timeout=30)


class Viewer:
    """The viser server of one :class:`QuerySession` (see the module docstring)."""

    def __init__(self, session: QuerySession, views: list[View], host: str = "127.0.0.1", port: int = 8080):
        import viser
        import viser.transforms as tf

        if not views:
            raise M3Error(f"{session.scene.root}: no registered views; run the poses stage first")
        self.session, self.views = session, {v.name: v for v in views}
        memory = session.memory
        self.lock = threading.Lock()
        self.server = viser.ViserServer(host=host, port=port, label="m3", verbose=False)
        self.host, self.port = host, self.server.get_port()  # viser takes the next free port if need be
        try:
            refuse_other_origins(self.server, host, self.port)
        except BaseException:
            self.server.stop()
            raise
        if not is_loopback(host):
            log.warning("view: --host %s shows the scene to everyone on the network; 127.0.0.1 keeps it private", host)
        self.server.scene.set_up_direction(tuple(up_direction(views)))
        means = memory.means.detach().float().cpu().numpy()
        self.splat_args = {
            "centers": means,
            "covariances": covariances(memory.params),
            "opacities": memory.opacities.detach().float().cpu().numpy()[:, None],
        }
        self.colors: dict[str, np.ndarray] = {RGB: base_colors(memory.params)}
        gui = self.server.gui
        options = [RGB, *(f"{m} PCA" for m in memory.models), RELEVANCE]
        self.mode = gui.add_dropdown("Colour", options, initial_value=RGB)
        self.text = gui.add_text("Query", "", hint="what to look for, e.g. a yellow duck")
        self.search = gui.add_button("Search")
        self.status = gui.add_markdown(f"{len(means)} Gaussians; model **{session.model}**. Type a query.")
        self.camera = gui.add_dropdown("Camera", list(self.views), initial_value=views[0].name)
        centres = np.array([v.center for v in views])
        size = 0.05 * max(float(np.ptp(centres, axis=0).max()), 1e-3)
        self.frustums = {}
        for i, v in enumerate(views):
            frustum = self.server.scene.add_camera_frustum(
                f"/cameras/{i:05d}",
                fov=vertical_fov(v),
                aspect=v.width / v.height,
                scale=size,
                thickness=1.5,
                thickness_units="screen",
                wxyz=tf.SO3.from_matrix(np.asarray(v.w2c)[:3, :3].T).wxyz,
                position=v.center,
            )

            def clicked(event: viser.SceneNodePointerEvent[viser.CameraFrustumHandle], name: str = v.name) -> None:
                self.look_through(name, event.client)

            frustum.on_click(clicked)
            self.frustums[v.name] = frustum

        def search(event: viser.GuiEvent[viser.GuiButtonHandle]) -> None:
            self.query(self.text.value)

        self.search.on_click(search)
        self.mode.on_update(lambda event: self.draw(self.mode.value))
        self.camera.on_update(lambda event: self.look_through(self.camera.value, event.client))
        self.server.on_client_connect(lambda client: self.look_through(views[0].name, client))
        self.draw(RGB)

    def draw(self, mode: str) -> None:
        """Show the Gaussians coloured by ``mode`` (computing a PCA on first use)."""
        with self.lock:
            if mode not in self.colors:
                if mode == RELEVANCE:
                    self.status.content = "No query yet: type one and press Search."
                    mode = RGB
                else:
                    self.colors[mode] = feature_pca_colors(self.session.memory, mode.removesuffix(" PCA"))
            s = self.splat_args
            self.server.scene.add_gaussian_splats(
                "/gaussians",
                centers=s["centers"],
                covariances=s["covariances"],
                rgbs=self.colors[mode],
                opacities=s["opacities"],
            )

    def query(self, text: str) -> dict[str, Any] | None:
        """Run ``text`` through the query engine, colour by relevance and draw the box; returns the answer."""
        try:
            qv = self.session.encode(text.strip())
            rel = self.session.relevance(qv)
            loc = self.session.localize(rel)
        except M3Error as exc:
            self.status.content = f"**Error:** {exc}"
            return None
        lo, hi = loc.box_min, loc.box_max
        self.colors[RELEVANCE] = relevance_colors(self.colors[RGB], rel.numpy())
        self.server.scene.add_box(
            "/answer/box",
            color=(255, 40, 40),
            dimensions=np.maximum(hi - lo, 1e-3),
            position=(lo + hi) / 2,
            wireframe=True,
        )
        self.status.content = (
            f"**{text.strip()}**: {loc.inliers.size} Gaussians, centroid "
            f"({', '.join(f'{c:.2f}' for c in loc.centroid)})"
        )
        if self.mode.value != RELEVANCE:
            # its update callback draws; viser defines value's setter apart from its getter: read-only to mypy
            self.mode.value = RELEVANCE  # type: ignore[misc]
        else:
            self.draw(RELEVANCE)
        log.info("view: %r -> %d Gaussians, box %s .. %s", text, loc.inliers.size, lo.round(3), hi.round(3))
        return loc.to_json()

    def look_through(self, name: str, client: Any) -> None:
        """Move ``client``'s camera to the scene camera ``name`` (pose and vertical field of view)."""
        import viser.transforms as tf

        view = self.views[name]
        if client is None:
            return
        for other, frustum in self.frustums.items():  # the camera looked through would fill the view
            frustum.visible = other != name
        with client.atomic():
            client.camera.fov = vertical_fov(view)
            client.camera.wxyz = tf.SO3.from_matrix(np.asarray(view.w2c)[:3, :3].T).wxyz
            client.camera.position = view.center

    @property
    def url(self) -> str:
        """The page's address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop the web server."""
        self.server.stop()
