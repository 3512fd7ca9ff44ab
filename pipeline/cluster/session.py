"""Connecting to Ray: a private local Ray, the cluster this node joined, or a head's address.

Ray is imported only here and only when asked for (:func:`import_ray`), so the local path never
needs it; without it the error names the extra that installs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from types import ModuleType

from pipeline.cluster.config import ClusterConfig
from pipeline.core.errors import M3Error

log = logging.getLogger(__name__)

INSTALL = 'pip install -c constraints.txt -e ".[ray]"'
AUTH_MODE = "RAY_AUTH_MODE"


def import_ray() -> ModuleType:
    """The ``ray`` module, or an :class:`M3Error` naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise M3Error(
            f"cluster: Ray is not installed ({exc}); install m3's ray extra (`{INSTALL}`) "
            "or set cluster.executor: local"
        ) from exc
    return ray


@contextlib.contextmanager
def ray_session(config: ClusterConfig) -> Iterator[ModuleType]:
    """Ray, connected for the duration of the block; disconnected (a private Ray stopped) after it.

    Already connected (a caller or a test holds a session): that session is used and left open.
    ``config.address`` null starts a private Ray on this machine (``local_cpus`` CPUs, a small
    object store, no dashboard, token authentication: :func:`token_auth`), unless ``RAY_ADDRESS`` is
    set (a cluster task's own stages join the cluster they run in); ``auto`` or ``host:port`` joins a
    running cluster.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict = {"log_to_driver": False, "logging_level": logging.WARNING}
    if config.address:
        kwargs["address"] = config.address
    elif not os.environ.get("RAY_ADDRESS"):
        kwargs.update(
            address="local",
            num_cpus=config.local_cpus,
            object_store_memory=config.object_store_mb * 2**20,
            include_dashboard=False,
        )
    where = kwargs.get("address") or os.environ["RAY_ADDRESS"]
    with token_auth() if where == "local" else contextlib.nullcontext():
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise M3Error(
                f"cluster.address: cannot connect to Ray at {where} ({first}); start the cluster "
                "(`ray start --head` on the head node) or set cluster.address: null for a private Ray"
            ) from exc
        log.info("Ray: %s, %d node(s), %s", where, alive_nodes(ray), ray.cluster_resources())
        try:
            yield ray
        finally:
            ray.shutdown()


@contextlib.contextmanager
def token_auth() -> Iterator[None]:
    """``RAY_AUTH_MODE=token`` for the block (the previous value after it): a private Ray started in it
    then refuses every client without the token (Ray's own file ``~/.ray/auth_token``, made if missing,
    or ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``).

    Ray 2.60 binds its gRPC servers (GCS, raylet, object manager, every worker) to all interfaces and
    rewrites a loopback ``_node_ip_address`` to this machine's address, so it cannot be kept off the
    network; the token is what keeps other hosts out. Ray turns it on by default only while
    ``RAY_AUTH_MODE`` is unset; a private Ray has no other clients, so an opt-out meant for an old
    cluster (``RAY_AUTH_MODE=disabled``) does not apply to it. Its processes inherit the variable.
    """
    from ray._raylet import (  # type: ignore[attr-defined]  # Ray's _raylet stub lists only its ID types
        AuthenticationMode,
        get_authentication_mode,
    )

    previous = os.environ.get(AUTH_MODE)
    set_auth_mode("token")
    if get_authentication_mode() != AuthenticationMode.TOKEN:
        raise RuntimeError(f"Ray ignored {AUTH_MODE}=token: its internals changed; fix token_auth() for this Ray")
    try:
        yield
    finally:
        set_auth_mode(previous)


def set_auth_mode(mode: str | None) -> None:
    """``RAY_AUTH_MODE`` (None: unset) for this process and the Ray processes it starts from now on.

    Ray reads its config (the auth mode included) once per process, so it is refreshed here as Ray's own
    ``_enable_token_auth`` does (``ray._raylet.Config.initialize("")``; Ray is pinned).
    """
    from ray._raylet import Config  # type: ignore[attr-defined]  # Ray's _raylet stub lists only its ID types

    if mode is None:
        os.environ.pop(AUTH_MODE, None)
    else:
        os.environ[AUTH_MODE] = mode
    Config.initialize("")


def alive_nodes(ray: ModuleType) -> int:
    """Nodes of the cluster that are alive."""
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def alive_actors(ray: ModuleType, actor_ids: Iterable[str]) -> int:
    """How many of the actors ``actor_ids`` (hex, from ``get_runtime_context().get_actor_id()``) are
    alive now (not restarting after a worker died, not dead).

    Read from the GCS actor table, as ``ray.nodes()`` reads the node table: the public state API
    (``ray.util.state``) needs the dashboard server, which m3 does not start. Ray is pinned, so this
    developer-level call cannot change under m3.
    """
    from ray._private import state

    alive = state.actors(actor_state_name="ALIVE")
    return sum(1 for actor_id in actor_ids if actor_id in alive)
