"""Config of the HTTP API (``m3 serve``'s options; the query settings come from ``params.yaml: query``)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config import Checked, Count, Port


@dataclass(frozen=True)
class ServeConfig(Checked):
    """``m3 serve``: where the API listens and what one client may send."""

    host: str = "127.0.0.1"
    """Address to bind (127.0.0.1: this machine only; any other address needs --token)."""
    port: Port = 8765
    """Port of the API (http://host:port)."""
    max_body: Count = 1 << 20
    """Largest request body in bytes (larger: HTTP 413)."""
    rate: Count = 600
    """Requests per minute one client address may send (bursts up to this many; more: HTTP 429)."""
