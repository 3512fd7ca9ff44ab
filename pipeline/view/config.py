"""Config of the browser viewer (``params.yaml: view``)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config import Port
from pipeline.query.config import SelectConfig


@dataclass(frozen=True)
class ViewConfig(SelectConfig):
    """``params.yaml: view``: the ``m3 view`` browser viewer (not a DVC stage)."""

    host: str = "127.0.0.1"
    """Address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface, and the scene is
    visible to everyone on the network)."""
    port: Port = 8080
    """Port of the web page (http://host:port)."""
