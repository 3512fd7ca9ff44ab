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
    object store, no dashboard), unless ``RAY_ADDRESS`` is set (a cluster task's own stages join the
    cluster they run in); ``auto`` or ``host:port`` joins a running cluster.
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
