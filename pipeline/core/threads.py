"""CPU threads that never oversubscribe: one per core that other processes leave idle.

torch's intra-op pool and the compiled rasterizer (OpenMP) split each operation over
``torch.get_num_threads()`` threads and wait at a barrier for the slowest. When another process
keeps a core busy, one of those threads is descheduled for whole scheduler slices while the others
wait at the barrier: a training step made of many small parallel regions then costs about 20x
(1.15 s against 0.055 s per step with one thread, measured while another job ran on one of the two
cores). A thread on a core of its own never waits so, hence the rule (:func:`threads_for`): as
many threads as usable cores (the process's CPU affinity) minus the cores other processes keep
busy, at least one.

:class:`CpuThreads` applies it: ``threads: 0`` (the default of every setting that takes one)
measures the other processes' CPU use over a short window at start and again every
``every_s`` seconds while running (:meth:`CpuThreads.update`, cheap between measurements), so a
job that starts or ends beside a long run changes its threads; ``threads: n`` fixes n.
"""

from __future__ import annotations

import os
import time

import psutil  # type: ignore[import-untyped]  # no stubs installed (types-psutil is not a dependency)
import torch

SAMPLE_S = 0.2
"""Length of the first measurement window (seconds)."""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; all cores where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_for(usable: int, busy_elsewhere: float) -> int:
    """The rule: one thread per usable core that other processes leave idle, at least 1.

    ``busy_elsewhere``: the cores other processes kept busy (CPU seconds per second); a core
    counts busy from half use on (``round``)."""
    return max(1, min(usable, usable - int(busy_elsewhere + 0.5)))


class CpuThreads:
    """Sets torch's CPU threads by :func:`threads_for` (``requested`` 0) or to ``requested``.

    Other processes' use is the busy time of the usable cores minus this process's CPU time,
    over the window since the last measurement.
    """

    def __init__(self, requested: int = 0, every_s: float = 10.0):
        if requested < 0:
            raise ValueError(f"CpuThreads: requested must be >= 0, got {requested}")
        self.requested, self.every_s = int(requested), float(every_s)
        self.cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        self.process = psutil.Process()
        self._mark: tuple[float, float, float] | None = None
        self.threads = 0

    def _sample(self) -> tuple[float, float, float]:
        """(wall s, busy CPU s of the usable cores, this process's CPU s) now."""
        per_cpu = psutil.cpu_times(percpu=True)
        cores = per_cpu if self.cores is None else [per_cpu[i] for i in self.cores if i < len(per_cpu)]
        busy = sum(
            t.user + t.nice + t.system + sum(getattr(t, k, 0.0) for k in ("irq", "softirq", "steal")) for t in cores
        )
        own = self.process.cpu_times()
        return time.monotonic(), busy, own.user + own.system

    def busy_elsewhere(self, since: tuple[float, float, float]) -> float:
        """Cores other processes kept busy since the sample ``since`` (CPU seconds per second)."""
        now = self._sample()
        wall = max(now[0] - since[0], 1e-3)
        return max(0.0, (now[1] - since[1]) - (now[2] - since[2])) / wall

    def update(self) -> int:
        """Apply the rule (measuring at most every ``every_s`` seconds; the first call measures for
        :data:`SAMPLE_S`); returns the threads now set."""
        if self.requested:
            n = self.requested
        elif self._mark is None:
            start = self._sample()
            time.sleep(SAMPLE_S)
            n = threads_for(len(self.cores or []) or usable_cores(), self.busy_elsewhere(start))
            self._mark = self._sample()
        elif time.monotonic() - self._mark[0] >= self.every_s:
            n = threads_for(len(self.cores or []) or usable_cores(), self.busy_elsewhere(self._mark))
            self._mark = self._sample()
        else:
            return self.threads
        if n != self.threads:
            torch.set_num_threads(n)
            self.threads = n
        return n
