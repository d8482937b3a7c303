"""The parameter server's consistency policy (bsp, asp, ssp, backup workers), without MPI.

The launch tests (tests/launch/test_ps.py) check the same rules end to end; here each
rule is driven step by step with concrete sequences of pushes and answers.
"""

from __future__ import annotations

import random

import pytest

from mpisgd.modes.ps.consistency import Action, Asp, Bsp, Ssp, make_consistency


def answer_all(policy, workers) -> list[bool]:
    return [policy.answer(i) for i in workers]


# -- bsp ------------------------------------------------------------------------------
def test_bsp_waits_for_every_worker_then_sums_in_worker_order():
    p = Bsp(n_workers=3, total=5, start=0)
    p.on_push(2, 0)
    assert p.ready() is None
    p.on_push(0, 0)
    assert p.ready() is None
    assert p.missing() == [1]
    p.on_push(1, 0)
    assert p.ready() == [0, 1, 2]
    p.step_complete()
    assert p.version == 1
    assert answer_all(p, [0, 1, 2]) == [False, False, False]
    assert p.held == [False, False, False]
    assert p.ready() is None and p.late() == []
    assert p.missing() == [0, 1, 2]


def test_bsp_backup_worker_step_applies_without_the_last_and_its_push_is_dropped():
    p = Bsp(n_workers=3, total=5, start=0, backup_workers=1)
    p.on_push(2, 0)
    assert p.ready() is None
    p.on_push(0, 0)
    assert p.ready() == [0, 2]
    p.step_complete()
    assert answer_all(p, [0, 2]) == [False, False]
    # the straggler's push of step 0 arrives after step 0 was applied: dropped, answered
    p.on_push(1, 0)
    assert p.late() == [1]
    assert p.ready() is None
    assert p.answer(1) is False
    assert p.late() == []
    # it skips ahead to step 1 and takes part again
    p.on_push(1, 1)
    p.on_push(0, 1)
    assert p.ready() == [0, 1]
    assert p.steps == [1, 1, 0]


def test_bsp_with_two_backup_workers_needs_one_push():
    p = Bsp(n_workers=3, total=5, start=0, backup_workers=2)
    p.on_push(1, 0)
    assert p.ready() == [1]


def test_bsp_push_for_a_later_step_waits_until_the_server_gets_there():
    p = Bsp(n_workers=2, total=5, start=0, backup_workers=1)
    p.on_push(0, 1)   # a worker told version 1 by another server
    assert p.late() == [] and p.ready() is None
    p.on_push(1, 0)
    assert p.ready() == [1]
    p.step_complete()
    assert p.answer(1) is False
    assert p.ready() == [0]


def test_bsp_answers_stop_after_the_last_step():
    p = Bsp(n_workers=2, total=2, start=0)
    for step in range(2):
        p.on_push(0, step)
        p.on_push(1, step)
        assert p.ready() == [0, 1]
        p.step_complete()
        stops = answer_all(p, [0, 1])
        assert stops == ([False, False] if step == 0 else [True, True])
        assert p.finished() is (step == 1)
    assert p.version == 2 and p.ready() is None
    assert p.stopped == [True, True]


def test_bsp_late_push_after_the_last_step_is_answered_with_stop():
    p = Bsp(n_workers=2, total=1, start=0, backup_workers=1)
    p.on_push(0, 0)
    p.step_complete()
    assert p.answer(0) is True
    p.on_push(1, 0)
    assert p.late() == [1]
    assert p.answer(1) is True
    assert p.finished()


def test_bsp_interrupted_every_answer_says_stop():
    p = Bsp(n_workers=2, total=10, start=3)
    p.on_push(0, 3)
    p.on_push(1, 3)
    p.step_complete()
    p.interrupted = True
    assert answer_all(p, [0, 1]) == [True, True]
    assert p.finished()


def test_bsp_leave_is_answered_once_with_stop_and_the_step_still_needs_every_worker():
    p = Bsp(n_workers=2, total=10, start=0)
    p.on_push(1, 0)
    assert p.leave(1) is True
    assert p.stopped == [False, True] and p.held == [False, False]
    assert p.missing() == [0]
    p.on_push(0, 0)
    assert p.ready() is None   # bsp does not shrink the step when a worker goes


def test_resumed_at_the_end_everyone_is_done_from_the_start():
    for mode in ("bsp", "asp", "ssp"):
        p = make_consistency(mode, 3, total=4, start=4)
        assert p.finished() and p.missing() == []


# -- asp ------------------------------------------------------------------------------
def test_asp_never_holds_a_worker_however_far_ahead():
    p = Asp(n_workers=2, total=20, start=0)
    actions = []
    for step in range(10):   # worker 0 runs ten steps while worker 1 does none
        p.on_push(0, step)
        actions.append(p.applied(0, step, count=4, last=False))
        assert p.released() == []
        assert p.answer(0) is False
    assert actions == [Action.REPLY] * 10
    assert p.clock == [10, 0] and p.version == 10
    assert p.slowest() == 0 and p.lead == {}


def test_asp_empty_push_is_no_version_and_the_last_step_stops_the_worker():
    p = Asp(n_workers=2, total=2, start=0)
    p.on_push(1, 0)
    assert p.applied(1, 0, count=0, last=False) is Action.REPLY
    assert p.version == 0 and p.clock == [0, 1]
    p.answer(1)
    p.on_push(1, 1)
    assert p.applied(1, 1, count=3, last=True) is Action.STOP
    assert p.answer(1, stop=True) is True
    assert p.version == 1 and p.stopped == [False, True] and not p.finished()
    assert p.missing() == [0]


def test_asp_interrupted_answers_say_stop():
    p = Asp(n_workers=2, total=9, start=0)
    p.on_push(0, 0)
    p.interrupted = True
    assert p.applied(0, 0, 1, False) is Action.REPLY
    assert p.answer(0) is True and p.stopped == [True, False]


# -- ssp ------------------------------------------------------------------------------
def push(p, worker, step, count=1, last=False) -> Action:
    p.on_push(worker, step)
    return p.applied(worker, step, count, last)


def test_ssp_holds_a_worker_more_than_staleness_ahead_until_the_slowest_catches_up():
    p = Ssp(n_workers=2, total=10, start=0, staleness=1)
    assert push(p, 0, 0) is Action.HOLD
    assert p.released() == [0]           # wants step 1, slowest completed 0 >= 1 - 1
    assert p.answer(0) is False
    assert push(p, 0, 1) is Action.HOLD
    assert p.released() == []            # wants step 2, slowest completed 0 < 2 - 1
    assert p.waiting == [0] and p.missing() == [1]
    assert p.can_reply(0) is False
    assert push(p, 1, 0) is Action.HOLD  # the slowest completes step 0
    assert p.can_reply(0) is True
    assert p.released() == [0, 1]        # in the order they were held
    assert p.waiting == []
    assert answer_all(p, [0, 1]) == [False, False]
    # leads: 1 (worker 0 at step 1), 1 (worker 0 at step 2), 0 (worker 1 at step 1)
    assert p.lead == {1: 2, 0: 1}
    assert p.clock == [2, 1] and p.version == 3


def test_ssp_staleness_zero_is_lock_step():
    p = Ssp(n_workers=3, total=10, start=0, staleness=0)
    released = []
    for w in (2, 0, 1):
        assert push(p, w, 0) is Action.HOLD
        released.append(p.released())
    assert released == [[], [], [2, 0, 1]]
    assert p.lead == {0: 3}


def test_ssp_a_stopped_worker_no_longer_holds_the_others_back():
    p = Ssp(n_workers=2, total=3, start=0, staleness=0)
    assert push(p, 0, 0) is Action.HOLD
    assert p.released() == []
    assert push(p, 1, 0, last=True) is Action.STOP   # worker 1's share ends here
    assert p.answer(1, stop=True) is True
    assert p.released() == [0]
    p.answer(0)
    assert push(p, 0, 1) is Action.HOLD
    assert p.released() == [0]   # worker 0 alone: it is the slowest running


def test_ssp_leave_releases_the_workers_it_held_back():
    p = Ssp(n_workers=2, total=10, start=0, staleness=0)
    assert push(p, 0, 0) is Action.HOLD
    assert p.released() == []
    p.on_push(1, 0)
    assert p.leave(1) is True
    assert p.released() == [0]
    assert p.lead == {0: 1}   # the slowest running worker is worker 0 itself


def test_ssp_interrupted_releases_every_held_answer_with_stop_and_counts_no_lead():
    p = Ssp(n_workers=3, total=10, start=0, staleness=0)
    assert push(p, 0, 0) is Action.HOLD and p.released() == []
    assert push(p, 2, 0) is Action.HOLD and p.released() == []
    p.interrupted = True
    assert p.released() == [0, 2]
    assert p.waiting == [] and p.lead == {}
    assert answer_all(p, [0, 2]) == [True, True]
    assert p.stopped == [True, False, True]


def simulate(p, n_workers: int, total: int, seed: int) -> list[int]:
    """Workers push in a random order (each waits for its answer); returns the steps
    each worker was allowed to start, in the order the answers went."""
    rng = random.Random(seed)
    step = [0] * n_workers
    free = set(range(n_workers))   # workers with their answer in hand
    starts = []
    while not p.finished():
        w = rng.choice(sorted(free))
        free.discard(w)
        last = step[w] + 1 >= total
        action = push(p, w, step[w], last=last)
        step[w] += 1
        answered = [] if action is Action.HOLD else [w]
        for i in answered + p.released():
            stop = p.answer(i, stop=action is Action.STOP and i == w)
            if not stop:
                free.add(i)
                starts.append(step[i])
        assert free or p.finished(), "every worker is held: ssp deadlocked"
    return starts


@pytest.mark.parametrize("staleness", [0, 1, 3])
@pytest.mark.parametrize("seed", range(5))
def test_ssp_lead_never_exceeds_staleness_and_every_worker_finishes(staleness, seed):
    p = Ssp(n_workers=4, total=12, start=0, staleness=staleness)
    starts = simulate(p, 4, 12, seed)
    assert p.clock == [12] * 4 and p.version == 48
    assert max(p.lead) <= staleness
    assert sum(p.lead.values()) == len(starts) == 4 * 11


def test_asp_in_the_same_schedule_runs_ahead_unbounded():
    p = Asp(n_workers=4, total=12, start=0)
    simulate(p, 4, 12, seed=0)
    assert p.clock == [12] * 4 and p.lead == {}


def test_make_consistency_picks_the_policy_of_the_config():
    assert type(make_consistency("bsp", 2, 5, 0, backup_workers=1)) is Bsp
    assert make_consistency("bsp", 2, 5, 0, backup_workers=1).backup_workers == 1
    assert type(make_consistency("asp", 2, 5, 0)) is Asp
    ssp = make_consistency("ssp", 2, 5, 0, staleness=2)
    assert type(ssp) is Ssp and ssp.staleness == 2
    with pytest.raises(ValueError):
        make_consistency("bulk", 2, 5, 0)


def test_bsp_a_dead_worker_no_longer_counts_and_its_held_push_is_forgotten():
    p = Bsp(n_workers=3, total=5, start=0)
    p.on_push(0, 0)
    p.on_push(2, 0)
    assert p.ready() is None
    p.drop(2)   # died after pushing: its push is not applied
    assert p.ready() is None and p.held[2] is False and p.stopped[2] is True
    p.on_push(1, 0)
    assert p.ready() == [0, 1]
    p.step_complete()
    assert answer_all(p, [0, 1]) == [False, False]
    assert p.missing() == [0, 1] and p.live() == [0, 1]
    p.drop(0)
    p.drop(1)
    assert p.ready() is None and p.finished()


def test_ssp_a_dead_worker_no_longer_holds_the_others_back_nor_the_checkpoints():
    p = Ssp(n_workers=2, total=10, start=0, staleness=0)
    assert push(p, 0, 0) is Action.HOLD
    assert p.released() == []
    assert p.slowest() == 0
    p.drop(1)
    assert p.released() == [0]
    assert p.slowest() == 1   # the live worker's clock alone
    assert p.missing() == [0]   # computing its next step; the dead one is not awaited


def test_asp_slowest_skips_the_dead():
    p = Asp(n_workers=3, total=10, start=2)
    for w in (0, 1):
        push(p, w, 2)
        p.answer(w)
    assert p.slowest() == 2
    p.drop(2)
    assert p.slowest() == 3 and not p.finished()
