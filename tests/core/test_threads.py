"""CPU threads never oversubscribe: one per core other processes leave idle (pipeline.core.threads)."""

from __future__ import annotations

import pytest
import torch

from pipeline.core import threads as T


@pytest.mark.parametrize(
    ("usable", "busy", "expected"),
    [
        (2, 0.0, 2),
        (2, 0.3, 2),
        (2, 0.6, 1),
        (2, 1.0, 1),
        (2, 2.0, 1),
        (2, 5.0, 1),
        (8, 2.2, 6),
        (8, 0.0, 8),
        (1, 0.0, 1),
    ],
)
def test_the_rule_one_thread_per_core_left_idle(usable: int, busy: float, expected: int) -> None:
    assert T.threads_for(usable, busy) == expected


class Clock:
    """Fake samples: (wall s, busy CPU s of the usable cores, this process's CPU s)."""

    def __init__(self) -> None:
        self.now = [0.0, 0.0, 0.0]

    def advance(self, wall: float, other: float, own: float) -> None:
        self.now = [self.now[0] + wall, self.now[1] + (other + own) * wall, self.now[2] + own * wall]

    def sample(self) -> tuple[float, float, float]:
        return (self.now[0], self.now[1], self.now[2])


def test_threads_follow_the_other_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle machine: every core; a job beside it: one thread less per busy core; it ends: back up.
    Between measurements nothing is measured or changed."""
    clock, calls = Clock(), []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(T, "usable_cores", lambda: 2)
    monkeypatch.setattr(T.time, "sleep", lambda s: clock.advance(s, other=0.0, own=0.0))
    auto = T.CpuThreads(0, every_s=10.0)
    monkeypatch.setattr(auto, "_sample", clock.sample)
    monkeypatch.setattr(auto, "cores", [0, 1])
    assert auto.update() == 2 and calls == [2]  # idle machine
    clock.advance(5.0, other=0.0, own=2.0)
    assert auto.update() == 2 and calls == [2]  # not due yet
    clock.advance(6.0, other=0.7, own=1.3)  # a one-thread job started: it gets a share of a core
    assert auto.update() == 1 and calls == [2, 1]
    clock.advance(10.0, other=1.0, own=1.0)
    assert auto.update() == 1 and calls == [2, 1]
    clock.advance(10.0, other=0.0, own=1.0)  # the job ended
    assert auto.update() == 2 and calls == [2, 1, 2]


def test_a_requested_count_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    auto = T.CpuThreads(3)
    assert auto.update() == 3 and auto.update() == 3 and calls == [3]
    with pytest.raises(ValueError, match="requested"):
        T.CpuThreads(-1)


def test_a_real_measurement_is_in_range() -> None:
    """The real sampler: other processes' use over a window is between 0 and the usable cores."""
    auto = T.CpuThreads(0)
    mark = auto._sample()
    end = T.time.monotonic() + 0.3
    while T.time.monotonic() < end:  # this process busy: not counted as busy elsewhere
        pass
    assert 0.0 <= auto.busy_elsewhere(mark) <= T.usable_cores() + 0.1
