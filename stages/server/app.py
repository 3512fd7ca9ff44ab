"""The FastAPI app of ``m3 serve`` (:func:`create_app`): queries, relevance, renders, exports, questions.

Endpoints (OpenAPI docs at ``/docs``)::

    GET  /health                    {"status": "ok"} (no token needed)
    GET  /scenes                    the scenes served
    GET  /scenes/{scene}            models, Gaussians, view names, method, provenance
    POST /scenes/{scene}/query      m3 query's localization.json (+ heatmaps, relevance)
    POST /scenes/{scene}/relevance  every Gaussian's relevance: little-endian float32 [N]
    POST /scenes/{scene}/render     a PNG: rgb, features (PCA) or relevance, at a view or a camera
    POST /scenes/{scene}/export     m3 export's object.ply bytes
    POST /scenes/{scene}/ask        m3 ask's answer.json (memories holding llamav)

Query options in a request override the ``params.yaml`` sections the server started with
(``query``; ``export`` for exports), checked as the command line's are. Every bad request gets a
4xx ``{"detail": "<one line>"}``: an :class:`~pipeline.core.errors.M3Error` 400 (404 unknown
scene / model / view, 409 not answerable by this memory), a bad field 422, a body over
``max_body`` 413, more than ``rate`` requests a minute from one address 429, a missing or wrong
bearer token 401, a browser page of another site (``Origin``) or a foreign ``Host`` on loopback
403. :class:`Guard` (an ASGI middleware) checks the last four before the app runs.
"""

from __future__ import annotations

import base64
import hmac
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image

from pipeline.core.config import from_dict, to_dict
from pipeline.core.errors import M3Error
from pipeline.core.images import png_bytes
from pipeline.core.scene import View
from pipeline.query.colors import heatmap_overlay, normalize_relevance
from pipeline.query.config import AskConfig, ExportConfig, QueryConfig, SelectConfig
from pipeline.query.export import extract
from pipeline.query.find import answer, relevance_maps
from pipeline.splat.gaussians import save_ply
from pipeline.view.render import render_images
from pipeline.view.viewer import is_loopback, origin_allowed
from stages.server.ask import ask_view
from stages.server.config import ServeConfig
from stages.server.models import AskRequest, QueryOptions, QueryRequest, RenderRequest
from stages.server.pool import Conflict, NotFound, ScenePool, WarmScene

log = logging.getLogger(__name__)

PNG, BINARY = "image/png", "application/octet-stream"


def ply_bytes(params: dict[str, Any]) -> bytes:
    """Gaussians as the bytes of a standard 3DGS PLY (:func:`~pipeline.splat.gaussians.save_ply`)."""
    with tempfile.TemporaryDirectory(prefix="m3-serve-") as tmp:
        path = Path(tmp) / "object.ply"
        save_ply(path, params)
        return path.read_bytes()


def configured(base: SelectConfig, overrides: dict[str, Any]) -> Any:
    """``base`` with a request's ``overrides``, every field checked as ``params.yaml``'s are."""
    if not overrides:
        return base
    return from_dict(type(base), {**to_dict(base), **overrides}, f"request (options {', '.join(overrides)})")


def query_vector(vector: list[float] | None) -> np.ndarray | None:
    """A request's vector as ``float32 [d]``; :class:`M3Error` if it is all zero."""
    if vector is None:
        return None
    vec = np.asarray(vector, dtype=np.float32)
    if not np.isfinite(vec).all() or not vec.any():
        raise M3Error("vector: all zero or not finite; give d finite numbers (the model's feature dims)")
    return vec


def camera_view(req: RenderRequest, warm: WarmScene) -> View:
    """The camera a render request names: a registered view, or its ``camera``."""
    if (req.view is None) == (req.camera is None):
        raise M3Error("render: give either a view (an image name) or a camera, not both or neither")
    if req.view is not None:
        return warm.view(req.view)
    cam = req.camera
    assert cam is not None  # checked above
    w2c, K = np.asarray(cam.viewmat, dtype=np.float64), np.asarray(cam.K, dtype=np.float64)
    if w2c.shape != (4, 4) or K.shape != (3, 3):
        raise M3Error(f"camera: viewmat must be 4x4 and K 3x3, got {w2c.shape} and {K.shape}")
    if not (np.isfinite(w2c).all() and np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0):
        raise M3Error("camera: viewmat and K must be finite, with positive focal lengths")
    return View("camera", Path("camera"), K, w2c, cam.width, cam.height)


class Guard:
    """ASGI middleware: per-client rate limit (429), bearer token (401, all but ``/health``), body size (413)."""

    def __init__(self, app: Any, token: str | None, max_body: int, rate: int, bind: str, port: int):
        self.app, self.token, self.max_body, self.rate = app, token, max_body, rate
        self.bind, self.port = bind, port
        self.buckets: dict[str, tuple[float, float]] = {}  # client address -> (tokens, last refill)
        self.lock = threading.Lock()

    def allow(self, client: str) -> bool:
        """Take one request from ``client``'s bucket (``rate`` a minute, bursts up to ``rate``)."""
        now = time.monotonic()
        with self.lock:
            if len(self.buckets) > 10000:  # forget idle clients
                self.buckets = {k: v for k, v in self.buckets.items() if now - v[1] < 60}
            tokens, last = self.buckets.get(client, (float(self.rate), now))
            tokens = min(float(self.rate), tokens + (now - last) * self.rate / 60.0)
            self.buckets[client] = (tokens - 1.0, now) if tokens >= 1.0 else (tokens, now)
            return tokens >= 1.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = (scope.get("client") or ("?", 0))[0]
        if not self.allow(client):
            return await refuse(429, f"too many requests from {client}; at most {self.rate} a minute")(
                scope, receive, send
            )
        if not self.same_site(headers.get("origin"), headers.get("host")):
            return await refuse(403, "requests from other sites are refused; call the API from a program or this host")(
                scope, receive, send
            )
        if self.token is not None and scope["path"] != "/health":
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                what = "a wrong" if given else "no"
                return await refuse(
                    401, f"{what} bearer token; send the header 'Authorization: Bearer <token>'", bearer=True
                )(scope, receive, send)
        try:
            declared = int(headers.get("content-length", "0"))
        except ValueError:
            return await refuse(400, "content-length is not a number")(scope, receive, send)
        if declared > self.max_body:
            return await refuse(413, self.too_large())(scope, receive, send)
        body, more = bytearray(), True
        while more:  # read it all (bounded) before the app: a chunked body cannot exceed the limit either
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await refuse(413, self.too_large())(scope, receive, send)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def same_site(self, origin: str | None, host: str | None) -> bool:
        """Whether a request may come in: no browser page of another site (``Origin``, as the
        viewer's :func:`~pipeline.view.viewer.origin_allowed`) and, bound to loopback, a loopback
        ``Host`` (a DNS-rebinding name that resolves to 127.0.0.1 is refused)."""
        if not origin_allowed(origin, host, self.bind, self.port):
            return False
        if host is None or not is_loopback(self.bind):
            return True
        try:
            name = urlsplit("//" + host).hostname
        except ValueError:
            return False
        return name is not None and is_loopback(name)

    def too_large(self) -> str:
        return f"request body over {self.max_body} bytes; send a smaller one"


def refuse(status: int, detail: str, bearer: bool = False) -> JSONResponse:
    """The error response: ``{"detail": "<one line>"}``."""
    headers = {"WWW-Authenticate": "Bearer"} if bearer else None
    return JSONResponse({"detail": " ".join(detail.split())}, status_code=status, headers=headers)


def one_line(exc: RequestValidationError) -> str:
    """The first validation error as one line: where and what."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    e = errors[0]
    where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {e.get('msg', 'invalid')}{more}"


def create_app(
    pool: ScenePool,
    query: QueryConfig,
    export: ExportConfig,
    ask: AskConfig,
    serve: ServeConfig,
    token: str | None = None,
) -> FastAPI:
    """The app over ``pool`` (see the module docstring); ``query`` / ``export`` / ``ask`` are the
    params sections requests override, ``token`` (None: no auth) the bearer token every endpoint
    but ``/health`` asks for."""
    app = FastAPI(title="m3", summary="Warm 3D spatial multimodal memories: queries, renders, exports")

    @app.exception_handler(M3Error)
    async def m3_error(request: Request, exc: M3Error) -> JSONResponse:
        return refuse(404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return refuse(422, one_line(exc))

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("serve: %s %s failed", request.method, request.url.path)
        return refuse(500, f"internal error ({type(exc).__name__}); see the server log")

    def warm(scene: str) -> WarmScene:
        return pool.get(scene)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/scenes")
    def scenes() -> dict[str, Any]:
        return {"scenes": pool.names()}

    @app.get("/scenes/{scene}")
    def scene_info(scene: str) -> dict[str, Any]:
        w = warm(scene)
        with w.lock:
            w.refresh()
            return w.describe()

    @app.post("/scenes/{scene}/query")
    def query_scene(scene: str, req: QueryRequest) -> dict[str, Any]:
        """m3 query's localization.json for ``text`` or ``vector`` (+ heatmaps, relevance)."""
        config, vector, w = configured(query, req.overrides()), query_vector(req.vector), warm(scene)
        with w.lock:
            w.refresh()
            for name in config.views:
                w.view(name)
            found = answer(w.session(config), config, w.views, req.text, vector, req.heatmaps)
        out = dict(found.result)
        if req.heatmaps:
            out["heatmaps"] = {n: base64.b64encode(png_bytes(img)).decode() for n, img in found.heatmaps.items()}
        if req.relevance:
            out["relevance"] = base64.b64encode(found.relevance.numpy().astype("<f4").tobytes()).decode()
        return out

    @app.post("/scenes/{scene}/relevance", response_class=Response)
    def relevance(scene: str, req: QueryOptions) -> Response:
        """Every Gaussian's relevance: little-endian float32 [N]."""
        config, vector, w = configured(query, req.overrides()), query_vector(req.vector), warm(scene)
        with w.lock:
            w.refresh()
            session = w.session(config)
            rel = session.relevance(session.encode(req.text, vector))
        return Response(rel.numpy().astype("<f4").tobytes(), media_type=BINARY)

    @app.post("/scenes/{scene}/render", response_class=Response)
    def render(scene: str, req: RenderRequest) -> Response:
        """A PNG at a view or camera: rgb, features (PCA of one model) or relevance (heatmap of a query)."""
        config, w = configured(query, req.overrides()), warm(scene)
        vector = query_vector(req.vector)
        with w.lock:
            w.refresh()
            view = camera_view(req, w)
            if req.what == "rgb":
                img = render_images(w.memory, view, {}, [])["rgb"]
            elif req.what == "features":
                model = config.model or w.memory.models[0]
                if model not in w.memory.models:
                    raise NotFound(f"model '{model}' is not in {scene}'s memory ({', '.join(w.memory.models)})")
                img = render_images(w.memory, view, {}, [model])[f"{model}_pca"]
            else:
                session = w.session(config)
                [(_, rgb, rel)] = relevance_maps(w.memory, [view], session.model, session.encode(req.text, vector))
                norm = normalize_relevance(rel, float(rel.min()), float(rel.max()))
                img = Image.fromarray(heatmap_overlay(rgb, norm, config.alpha))
        return Response(png_bytes(img), media_type=PNG)

    @app.post("/scenes/{scene}/export", response_class=Response)
    def export_scene(scene: str, req: QueryOptions) -> Response:
        """m3 export's object.ply: the Gaussians answering the query, every parameter kept."""
        config, vector, w = configured(export, req.overrides()), query_vector(req.vector), warm(scene)
        with w.lock:
            w.refresh()
            _, obj, _ = extract(w.session(config, "export"), config, req.text, vector)
        headers = {"Content-Disposition": 'attachment; filename="object.ply"', "X-M3-Gaussians": str(len(obj["means"]))}
        return Response(ply_bytes(obj), media_type=BINARY, headers=headers)

    @app.post("/scenes/{scene}/ask")
    def ask_scene(scene: str, req: AskRequest) -> dict[str, Any]:
        """m3 ask's answer.json: the memory's VLM answers a question about a view (memories with llamav)."""
        w = warm(scene)
        with w.lock:
            w.refresh()
            return ask_view(w, ask, req.question, req.view, req.region)

    app.add_middleware(Guard, token=token, max_body=serve.max_body, rate=serve.rate, bind=serve.host, port=serve.port)
    return app
