"""Checkpoint and resume end to end: bitwise-exact resume after SIGKILL, resharding
across world sizes and modes, and bitwise-exact resume after faults during a write."""

from __future__ import annotations

import os
import signal

import pytest

from .procs import kill_rank_when_running, wait_gone
from .test_train import SMALL, summary_of, theta_of

JOB = SMALL + ["--set", "train.epochs=4", "--set", "checkpoint.every_steps=7",
               "--set", "optimizer.momentum=0.9"]
MODES = {"allreduce": (4, []),
         "ps-bsp": (4, ["--set", "mode='ps'", "--set", "ps.servers=1"])}


@pytest.mark.parametrize("mode", list(MODES))
def test_sigkill_then_resume_is_bitwise_exact(launch, tmp_path, mode):
    n, extra = MODES[mode]
    launch(n, JOB + extra + ["--out", str(tmp_path / "ref")], timeout=120, check=True)
    out = tmp_path / "run"
    # Every step sleeps 30 ms on rank 1 (so, in lockstep, everyone): the kill lands mid-run.
    slow = ["--set", "debug.slow_rank=1", "--set", "debug.slow_ms=30"]
    proc = launch.start(n, JOB + extra + slow + ["--out", str(out)])
    try:
        kill_rank_when_running(proc, str(out), 2, n, out / "checkpoints" / "step-000000021")
        proc.communicate(timeout=30)
    except Exception:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode != 0
    assert wait_gone(str(out)) == []
    r = launch(n, JOB + extra + ["--out", str(out), "--resume", "auto"], timeout=120, check=True)
    assert "resuming at step" in r.stdout
    assert theta_of(out).tobytes() == theta_of(tmp_path / "ref").tobytes()


@pytest.mark.parametrize("first, then", [
    ((4, []), (2, [])),
    ((2, []), (4, [])),
    ((4, []), (4, ["--set", "mode='ps'", "--set", "ps.servers=2"])),
    ((5, ["--set", "mode='ps'", "--set", "ps.servers=2"]), (3, [])),
], ids=["4to2", "2to4", "allreduce-to-ps2", "ps2-to-allreduce"])
def test_resume_at_another_size_or_mode(launch, tmp_path, first, then):
    job = JOB + ["--set", "optimizer.schedule='invscaling'", "--set", "optimizer.decay=0.01"]
    launch(3, job + ["--out", str(tmp_path / "ref")], timeout=120, check=True)
    out = tmp_path / "run"
    launch(first[0], job + first[1] + ["--set", "train.max_steps=40", "--out", str(out)],
           timeout=120, check=True)
    r = launch(then[0], job + then[1] + ["--out", str(out), "--resume", "auto"],
               timeout=120, check=True)
    assert "resuming at step 40" in r.stdout
    got, ref = summary_of(out)["test"]["mse"], summary_of(tmp_path / "ref")["test"]["mse"]
    assert got == pytest.approx(ref, rel=0.01)


@pytest.mark.parametrize("fault", ["before_rename:2", "after_commit:2"])
def test_fault_during_a_write_keeps_the_previous_checkpoint(launch, tmp_path, fault):
    launch(4, JOB + ["--out", str(tmp_path / "ref")], timeout=120, check=True)
    out = tmp_path / "run"
    r = launch(4, JOB + ["--out", str(out)], env={"MPISGD_TEST_CKPT_FAULT": fault}, timeout=60)
    assert r.returncode != 0
    r = launch(4, JOB + ["--out", str(out), "--resume", "auto"], timeout=120, check=True)
    assert "resuming at step 7 " in r.stdout, r.stdout
    warning = "never completed" if fault.startswith("before") else "skipping checkpoint"
    assert warning in r.stderr
    assert theta_of(out).tobytes() == theta_of(tmp_path / "ref").tobytes()

# SIGTERM, a checkpoint of another model, a disk full during a write: tests/faults.
