"""Checkpoint and resume end to end: resharding across world sizes and modes. (Faults
followed by a bitwise-exact resume: tests/faults.)"""

from __future__ import annotations

import pytest

from .test_train import SMALL, summary_of

JOB = SMALL + ["--set", "train.epochs=4", "--set", "checkpoint.every_steps=7",
               "--set", "optimizer.momentum=0.9"]


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


# SIGKILL of any rank, SIGTERM, a crash before the rename, a torn newest checkpoint, a
# full disk, a checkpoint of another model, each followed by a bitwise-exact resume in the
# synchronous modes: tests/faults.
