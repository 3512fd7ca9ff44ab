"""Config of where work runs (``params.yaml: cluster``).

No DVC stage lists this section: an executor never changes a result (a feature store made by Ray
actors is byte-identical to a local one), so changing it invalidates no cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pipeline.core.config import Checked, Count, Natural, NonNegative, Range


@dataclass(frozen=True)
class ClusterConfig(Checked):
    """``params.yaml: cluster``: the features executor and the Ray cluster that ``m3 cluster repro`` uses."""

    executor: Literal["local", "ray"] = "local"
    """Where the features stage extracts: local (in its own process) | ray (a pool of Ray actors,
    each holding one loaded model; the driver writes the store in view order, byte-identical)."""
    address: str | None = None
    """Ray cluster: null starts a private Ray on this machine (or joins the one a cluster task runs
    in); auto joins the cluster this node was added to with `ray start`; or the head's host:port."""
    actors: Count = 2
    """Features on Ray: actors per model, each holding one loaded model."""
    actor_cpus: NonNegative = 1.0
    """Features on Ray: CPUs reserved per actor (its torch threads)."""
    actor_gpus: NonNegative = 0.0
    """Features on Ray: GPUs per actor (1 on GPU nodes; the model then runs on CUDA)."""
    scene_cpus: NonNegative = 1.0
    """m3 cluster repro: CPUs reserved per scene task (the scene's stages run in it, in order)."""
    scene_gpus: NonNegative = 0.0
    """m3 cluster repro: GPUs per scene task (1 on GPU nodes: training wants one)."""
    retries: Natural = 3
    """How often Ray restarts a features actor (its views in flight then rerun) or reruns a scene
    task (m3 cluster repro) whose worker process or node died."""
    source: str | None = None
    """m3 cluster repro: where scene tasks clone the project from (a path on every node or a git URL);
    null: the driver's project folder, which must then exist at the same path on every node."""
    workdir: str | None = None
    """m3 cluster repro: folder on each node for the scene tasks' clones (null: the system temp dir)."""
    local_cpus: Count | None = None
    """A private Ray (address null): CPUs it offers (null: all of this machine's)."""
    object_store_mb: Annotated[int, Range(80)] = 256
    """A private Ray (address null): object store size in MiB (results of views in flight)."""
