"""A small client of ``m3 serve`` on the standard library alone (urllib; no server extra needed).

    from stages.server.client import M3Client

    m3 = M3Client()  # http://127.0.0.1:8765; M3Client(url, token=...) for a server with --token
    for text in ["a yellow duck", "a red chair"]:
        print(text, m3.query("kitchen", text)["centroid"])

An HTTP error raises :class:`M3ServerError` carrying the server's one-line ``detail``.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np


class M3ServerError(RuntimeError):
    """The server refused a request: ``status`` (HTTP) and its one-line ``detail``."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class M3Client:
    """Calls of ``m3 serve``'s API at ``url`` (with the bearer ``token`` when the server has one)."""

    def __init__(self, url: str = "http://127.0.0.1:8765", token: str | None = None, timeout: float = 600.0):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[bytes, str]:
        """``(response bytes, content type)`` of one request; :class:`M3ServerError` on an HTTP error."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 (the server's own URL)
                return resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                detail = str(json.loads(raw)["detail"])
            except (ValueError, KeyError, TypeError):
                detail = raw.decode(errors="replace")[:200] or str(exc.reason)
            raise M3ServerError(exc.code, detail) from None

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return json.loads(self._call(method, path, body)[0])

    @staticmethod
    def _scene(scene: str) -> str:
        return "/scenes/" + urllib.parse.quote(scene, safe="")

    @staticmethod
    def _query(text: str | None, vector: Sequence[float] | np.ndarray | None, options: dict[str, Any]) -> dict:
        body = {k: v for k, v in options.items() if v is not None}
        if text is not None:
            body["text"] = text
        if vector is not None:
            body["vector"] = np.asarray(vector, dtype=np.float64).reshape(-1).tolist()
        return body

    def health(self) -> dict[str, Any]:
        """``{"status": "ok"}`` when the server is up."""
        return self._json("GET", "/health")

    def scenes(self) -> list[str]:
        """The scenes served."""
        return self._json("GET", "/scenes")["scenes"]

    def scene(self, name: str) -> dict[str, Any]:
        """Scene ``name``'s models, Gaussians, views, method and provenance."""
        return self._json("GET", self._scene(name))

    def query(
        self, scene: str, text: str | None = None, vector: Sequence[float] | np.ndarray | None = None, **options: Any
    ) -> dict[str, Any]:
        """``m3 query``'s localization.json; ``options``: model, mode, threshold, top_k, quantile,
        attention_k, views, heatmaps (``{view: PNG bytes}`` then), relevance (``float32 [N]`` then)."""
        out = self._json("POST", self._scene(scene) + "/query", self._query(text, vector, options))
        if "heatmaps" in out:
            out["heatmaps"] = {k: base64.b64decode(v) for k, v in out["heatmaps"].items()}
        if "relevance" in out:
            out["relevance"] = np.frombuffer(base64.b64decode(out["relevance"]), dtype="<f4")
        return out

    def relevance(
        self, scene: str, text: str | None = None, vector: Sequence[float] | np.ndarray | None = None, **options: Any
    ) -> np.ndarray:
        """Every Gaussian's relevance ``float32 [N]``."""
        raw, _ = self._call("POST", self._scene(scene) + "/relevance", self._query(text, vector, options))
        return np.frombuffer(raw, dtype="<f4")

    def render(
        self,
        scene: str,
        view: str | None = None,
        camera: dict[str, Any] | None = None,
        what: str = "rgb",
        text: str | None = None,
        vector: Sequence[float] | np.ndarray | None = None,
        **options: Any,
    ) -> bytes:
        """PNG bytes of a registered ``view`` or a ``camera`` ``{"viewmat": 4x4 world-to-camera, "K": 3x3,
        "width", "height"}``: ``what`` is rgb, features (``model``'s PCA) or relevance (of ``text``/``vector``)."""
        body = self._query(text, vector, {**options, "view": view, "camera": camera, "what": what})
        return self._call("POST", self._scene(scene) + "/render", body)[0]

    def export(
        self, scene: str, text: str | None = None, vector: Sequence[float] | np.ndarray | None = None, **options: Any
    ) -> bytes:
        """``m3 export``'s object.ply bytes: the Gaussians answering the query."""
        return self._call("POST", self._scene(scene) + "/export", self._query(text, vector, options))[0]

    def ask(self, scene: str, question: str, view: str | None = None, region: str | None = None) -> dict[str, Any]:
        """``m3 ask``'s answer.json (memories holding llamav)."""
        body = {"question": question, "view": view, "region": region}
        return self._json("POST", self._scene(scene) + "/ask", {k: v for k, v in body.items() if v is not None})
