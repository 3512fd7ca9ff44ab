"""Command ``m3 serve``: a local HTTP API over trained scene memories, warm between queries.

Reads ``params.yaml: query`` (and ``export``, ``ask``) as the settings requests override; the
server's own options (``--host``, ``--port``, ``--max-body``, ``--rate``) are
:class:`~stages.server.config.ServeConfig`'s. Binds 127.0.0.1:8765 by default; another address
needs ``--token`` (bearer auth on every endpoint but ``/health``). Serves until Ctrl-C or SIGTERM.
See :mod:`stages.server.app` for the endpoints and ``docs/serve.md`` for a walk-through.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import typer

from pipeline.core.config import load_config
from pipeline.core.errors import M3Error
from stages.command import PARAMS, Options, command, resolve_scene
from stages.server.config import ServeConfig

log = logging.getLogger(__name__)


def check_bind(host: str, token: str | None) -> None:
    """:class:`M3Error` when ``host`` is not loopback and no ``token`` protects the API."""
    from pipeline.view.viewer import is_loopback

    if not is_loopback(host) and not token:
        raise M3Error(
            f"serve: --host {host} exposes the API to the network; give --token (or M3_SERVE_TOKEN) "
            "so that clients must authenticate, or bind 127.0.0.1"
        )


def check_port(host: str, port: int) -> None:
    """:class:`M3Error` when ``host``:``port`` cannot be listened on (in use, not an address of this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host.strip("[]"), port), family=family):
            pass
    except OSError as exc:
        raise M3Error(f"serve: cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port") from None


def run(config: ServeConfig, scenes: list[str], params: Path, token: str | None = None) -> None:
    """Load the named ``scenes`` (none: every trained scene of ``data/``, on first use) and serve
    the API until Ctrl-C or SIGTERM."""
    check_bind(config.host, token)
    check_port(config.host, config.port)
    import uvicorn

    from pipeline.query.config import AskConfig, ExportConfig, QueryConfig
    from stages.server.app import create_app
    from stages.server.pool import ScenePool

    query = load_config(QueryConfig, "query", params)
    export = load_config(ExportConfig, "export", params)
    ask = load_config(AskConfig, "ask", params)
    pool = ScenePool([resolve_scene(s) for s in scenes], query.device, threads=query.threads)
    app = create_app(pool, query, export, ask, config, token)
    auth = "bearer token required" if token else "loopback only, no token"
    host = f"[{config.host}]" if ":" in config.host else config.host
    log.info("m3 serve: http://%s:%d (%s; scenes: %s; Ctrl-C to stop)", host, config.port, auth,
             ", ".join(pool.names()) or "none yet")  # fmt: skip
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", server_header=False)


@command(ServeConfig)
def cli(
    options: Options[ServeConfig],
    scenes: list[str] | None = typer.Argument(
        None, help="scenes to load now (names under data/ or folders); none: every trained scene, on first use"
    ),
    token: str | None = typer.Option(
        None, envvar="M3_SERVE_TOKEN", help="bearer token clients must send (required off loopback)"
    ),
    params: Path = PARAMS,
) -> None:
    """Serve trained memories over a local HTTP API: queries, relevance, renders, exports, questions.

    Loads each scene's memory and text towers once and answers many requests; a memory retrained on
    disk is reloaded on the next request. Binds 127.0.0.1:8765 unless --host/--port say otherwise;
    any other --host needs --token. OpenAPI docs at http://127.0.0.1:8765/docs.
    """
    run(options.load("serve", params), list(scenes or []), params, token)
