"""Config of where work runs (``params.yaml: cluster``).

No DVC stage lists this section: an executor never changes a result (a feature store made by Ray
actors is byte-identical to a local one), so changing it invalidates no cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.core.errors import M3Error


@dataclass(frozen=True)
class ClusterConfig:
    """``params.yaml: cluster``: the features executor and the Ray cluster that ``m3 cluster repro`` uses."""

    executor: Literal["local", "ray"] = "local"
    """Where the features stage extracts: local (in its own process) | ray (a pool of Ray actors,
    each holding one loaded model; the driver writes the store in view order, byte-identical)."""
    address: str | None = None
    """Ray cluster: null starts a private Ray on this machine (or joins the one a cluster task runs
    in); auto joins the cluster this node was added to with `ray start`; or the head's host:port."""
    actors: int = 2
    """Features on Ray: actors per model, each holding one loaded model."""
    actor_cpus: float = 1.0
    """Features on Ray: CPUs reserved per actor (its torch threads)."""
    actor_gpus: float = 0.0
    """Features on Ray: GPUs per actor (1 on GPU nodes; the model then runs on CUDA)."""
    scene_cpus: float = 1.0
    """m3 cluster repro: CPUs reserved per scene task (the scene's stages run in it, in order)."""
    scene_gpus: float = 0.0
    """m3 cluster repro: GPUs per scene task (1 on GPU nodes: training wants one)."""
    retries: int = 3
    """How often Ray restarts a features actor (its views in flight then rerun) or reruns a scene
    task (m3 cluster repro) whose worker process or node died."""
    source: str | None = None
    """m3 cluster repro: where scene tasks clone the project from (a path on every node or a git URL);
    null: the driver's project folder, which must then exist at the same path on every node."""
    workdir: str | None = None
    """m3 cluster repro: folder on each node for the scene tasks' clones (null: the system temp dir)."""
    local_cpus: int | None = None
    """A private Ray (address null): CPUs it offers (null: all of this machine's)."""
    object_store_mb: int = 256
    """A private Ray (address null): object store size in MiB (results of views in flight)."""

    def __post_init__(self) -> None:
        if self.actors < 1 or self.retries < 0:
            raise M3Error(f"cluster: actors={self.actors}, retries={self.retries}; use actors >= 1 and retries >= 0")
        if min(self.actor_cpus, self.actor_gpus, self.scene_cpus, self.scene_gpus) < 0:
            raise M3Error("cluster: actor_cpus, actor_gpus, scene_cpus and scene_gpus must be >= 0; fix them")
        if self.object_store_mb < 80:
            raise M3Error(f"cluster.object_store_mb: {self.object_store_mb} is below Ray's minimum; use >= 80")
