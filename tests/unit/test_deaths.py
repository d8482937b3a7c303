"""When a server declares a silent worker dead (mpisgd/modes/ps/deaths.py), against the
real bsp policy and a server that records its drops: no process is started.

Two false deaths seen on a loaded 2-core CI machine are pinned here: a worker still
compiling its kernels before its first push, and a worker the server held (it waited on
the late one) whose last push is therefore as old as the late worker's.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mpisgd.modes.ps import deaths as deaths_mod
from mpisgd.modes.ps.consistency import Bsp
from mpisgd.modes.ps.deaths import Deaths

pytestmark = pytest.mark.quick

DEAD_AFTER = 2.0


class _Watch:
    def new_deaths(self) -> dict[int, dict]:
        return {}


class _Server:
    """The parts of modes.ps.server.Server that Deaths uses; drop() only records."""

    def __init__(self, n: int):
        self.workers = list(range(2, 2 + n))
        self.policy = Bsp(n, total=100, start=0)
        self.cfg = SimpleNamespace(ps=SimpleNamespace(dead_after=DEAD_AFTER))
        self.dropped: list[int] = []

    def drop(self, i: int, cause: str, how: str) -> None:
        assert how == "timeout" and "ps.dead_after" in cause
        self.dropped.append(i)
        self.policy.drop(i)


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(deaths_mod.time, "monotonic", c)
    return c


def _deaths(server: _Server) -> Deaths:
    return Deaths(server, _Watch(), rows_per_epoch=[0] * (len(server.workers) + 2))


def _push(server: _Server, deaths: Deaths, i: int) -> None:
    deaths.pushed(i)
    server.policy.on_push(i, server.policy.version)


def _check(deaths: Deaths, clock: _Clock, later: float) -> None:
    clock.now += later
    deaths.next_check = 0.0   # the 50 ms rate limit is not under test
    deaths.check()


def _step_0_done_then_1_pushed_by(server: _Server, d: Deaths, pushers: tuple) -> None:
    """Every worker pushes step 0 and is answered; then ``pushers`` push step 1."""
    for i in range(len(server.workers)):
        _push(server, d, i)
    assert server.policy.ready() is not None
    server.policy.step_complete()
    for i in range(len(server.workers)):
        server.policy.answer(i)
        d.expecting(i)
    for i in pushers:
        _push(server, d, i)


def test_a_worker_silent_after_pushing_is_declared_dead(clock):
    server = _Server(3)
    d = _deaths(server)
    _step_0_done_then_1_pushed_by(server, d, (0, 1))
    _check(d, clock, DEAD_AFTER - 0.1)
    assert server.dropped == []
    _check(d, clock, 0.2)
    assert server.dropped == [2]


def test_a_worker_that_has_not_pushed_yet_is_starting_not_dead(clock):
    """Cold numba cache: one worker pushes its first step while the others still compile."""
    server = _Server(3)
    d = _deaths(server)
    _push(server, d, 0)
    _check(d, clock, 10 * DEAD_AFTER)
    assert server.dropped == []


def test_the_silence_clock_starts_at_the_last_answer_not_the_last_push(clock):
    """Worker 0 and 1 pushed step 0 and were held while worker 2 was late; once the step
    completes they are answered, and their pushes, older than dead_after, do not count."""
    server = _Server(3)
    d = _deaths(server)
    _step_0_done_then_1_pushed_by(server, d, (0, 1))
    _check(d, clock, DEAD_AFTER + 0.5)   # worker 2 is late: declared dead
    assert server.dropped == [2]
    # the step completes without it; 0 and 1 are answered now
    assert server.policy.ready() == [0, 1]
    server.policy.step_complete()
    for i in (0, 1):
        server.policy.answer(i)
        d.expecting(i)
    _push(server, d, 0)
    _check(d, clock, 0.5)   # worker 1 computes its step: not silent for long
    assert server.dropped == [2]
    _check(d, clock, DEAD_AFTER)
    assert server.dropped == [2, 1]


def test_nobody_is_declared_dead_while_nobody_waits(clock):
    """asp with every worker busy: silence alone, with no one held, is not a death."""
    server = _Server(2)
    d = _deaths(server)
    for i in range(2):
        _push(server, d, i)
        server.policy.answer(i)
        d.expecting(i)
    _check(d, clock, 10 * DEAD_AFTER)
    assert server.dropped == []
