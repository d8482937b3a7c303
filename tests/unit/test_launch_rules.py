"""The pure parts of ``mpisgd launch``: each attempt's arguments, the exit codes worth a
relaunch, the fewer-ranks rule, the failing ranks read from stderr, and the launcher
flags (keep-alive and --oversubscribe) per MPI. Nothing here starts a process: the
mpiexec command lines are only built and compared (no timeout needed; the launches
themselves are tests/launch/test_relaunch.py's, each under one)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mpisgd.commands import launch
from mpisgd.commands.launch_rules import (
    Failures,
    UsageError,
    attempt_args,
    option_of,
    repeat_failure,
    split_command,
    why_not_restart,
)
from mpisgd.runtime import mpi_launcher
from mpisgd.runtime.mpi_launcher import (
    HYDRA,
    ORTERUN,
    PRTERUN,
    SRUN,
    UNKNOWN,
    keep_alive_flags,
    kind_of,
    oversubscribe_flags,
)

OUT = "/runs/fixed"


@pytest.mark.parametrize("words, first, again", [
    # --out is always the fixed folder, given once
    (["job.toml"], ["job.toml", "--out", OUT],
     ["job.toml", "--out", OUT, "--resume", "auto"]),
    (["job.toml", "--out", "mine", "--set", "a.b=1"],
     ["job.toml", "--set", "a.b=1", "--out", OUT],
     ["job.toml", "--set", "a.b=1", "--out", OUT, "--resume", "auto"]),
    # the user's --resume is kept on the first attempt only; --overwrite likewise
    (["--resume", "ck/step-7", "--out=mine", "--verbose"],
     ["--resume", "ck/step-7", "--verbose", "--out", OUT],
     ["--verbose", "--out", OUT, "--resume", "auto"]),
    (["--resume=auto", "--overwrite"], ["--resume=auto", "--overwrite", "--out", OUT],
     ["--out", OUT, "--resume", "auto"]),
    # abbreviations argparse accepts
    (["--ou", "x", "--ov", "--res", "auto"], ["--ov", "--res", "auto", "--out", OUT],
     ["--out", OUT, "--resume", "auto"]),
    # a --set value that looks like an option is a value
    (["--set", "--out", "--timeline", "--resume"],
     ["--set", "--out", "--timeline", "--resume", "--out", OUT],
     ["--set", "--out", "--timeline", "--resume", "--out", OUT, "--resume", "auto"]),
    (["train", "j.toml", "--debug"], ["train", "j.toml", "--debug", "--out", OUT],
     ["train", "j.toml", "--debug", "--out", OUT, "--resume", "auto"]),
])
def test_attempt_args(words, first, again):
    assert attempt_args(words, OUT, resume=False) == first
    assert attempt_args(words, OUT, resume=True) == again
    assert attempt_args(again, OUT, resume=True) == again   # a relaunch of a relaunch


def test_option_abbreviations_are_only_the_unambiguous_ones():
    assert option_of("--o") is None               # --out or --overwrite
    assert option_of("--ou=x") == "--out"
    assert option_of("--s") == "--set"
    assert option_of("--") is None and option_of("job.toml") is None
    assert option_of("--nothing") is None


def test_only_train_is_relaunched():
    assert split_command(["train", "j.toml"]) == (["train"], ["j.toml"])
    assert split_command(["j.toml"]) == ([], ["j.toml"])
    for command in ("cv", "solve", "eval", "predict"):
        with pytest.raises(UsageError, match="writes no checkpoint"):
            split_command([command, "j.toml"])


@pytest.mark.parametrize("code, relaunched", [
    (0, False), (1, True), (2, False), (3, True), (4, False), (9, True), (75, False),
    (130, False), (137, True), (143, True), (127, False)])
def test_exit_codes_worth_a_relaunch(code, relaunched):
    assert (why_not_restart(code) is None) == relaunched


def test_fewer_ranks_when_the_same_rank_failed_twice_at_this_size():
    assert repeat_failure([], 4) is None
    assert repeat_failure([(4, [3])], 4) is None
    assert repeat_failure([(4, [3]), (4, [3])], 4) == 3
    assert repeat_failure([(4, [1, 3]), (4, [3, 0])], 4) == 3
    assert repeat_failure([(4, [2, 1]), (4, [1, 2])], 4) == 1         # the lowest
    assert repeat_failure([(4, [3]), (4, [2])], 4) is None            # another rank
    assert repeat_failure([(4, [3]), (4, [])], 4) is None             # no rank named
    assert repeat_failure([(4, [2]), (3, [2])], 3) is None            # another size
    assert repeat_failure([(4, [3]), (4, [3]), (3, [2]), (3, [2])], 3) == 2


def test_failures_are_read_from_chunks_split_anywhere():
    text = ("noise\nmpisgd: error on rank 3 (node-7): RuntimeError: boom (raised at x.py:1)\n"
            "=== BAD TERMINATION ===\r\nmpisgd: error on rank 1 (n): the process (pid 5) died"
            " of signal 9 (SIGKILL): killed\nmpisgd: error on rank 3 (n): again\n"
            "mpisgd: error: data file 'x' does not exist")
    f = Failures()
    data = text.encode()
    for i in range(0, len(data), 7):
        f.feed(data[i:i + 7])
    f.close()
    assert f.ranks == [3, 1]
    assert len(f.messages) == 4 and f.messages[-1].endswith("does not exist")
    assert f.cause() == "rank 3: RuntimeError: boom (raised at x.py:1)"
    assert f.cause(width=20) == "rank 3: RuntimeEr..."
    agreed = Failures()
    agreed.feed(b"mpisgd: error: data file 'x' does not exist\n")
    assert agreed.ranks == [] and agreed.cause() == "data file 'x' does not exist"


VERSIONS = {
    HYDRA: ("mpiexec", "HYDRA build details:\n    Version:   5.0.2\n"),
    PRTERUN: ("mpiexec", "mpiexec (Open MPI) 5.0.11\n\nReport bugs to ..."),
    ORTERUN: ("mpirun", "mpirun (Open MPI) 4.1.5\n\nReport bugs to ..."),
    SRUN: ("/usr/bin/srun", "slurm 23.11.4\n"),
    UNKNOWN: ("mpiexec", "Intel(R) MPI Library for Linux* OS, Version 2021.10\n"),
}


@pytest.mark.parametrize("kind", list(VERSIONS))
def test_launcher_kind_from_its_version(kind):
    assert kind_of(*VERSIONS[kind]) == kind
    assert kind_of("mpirun", "mpirun (OpenRTE) 3.1.6\n") == ORTERUN


def test_keep_alive_flags_per_launcher():
    assert keep_alive_flags(HYDRA) == ["-disable-auto-cleanup"]
    assert keep_alive_flags(PRTERUN) == ["--enable-recovery"]
    assert keep_alive_flags(ORTERUN) == ["--enable-recovery"]
    assert keep_alive_flags(SRUN) == ["--no-kill"]
    assert keep_alive_flags(UNKNOWN) is None
    keep_alive_flags(HYDRA).append("x")   # a copy: the table stays as it is
    assert keep_alive_flags(HYDRA) == ["-disable-auto-cleanup"]
    assert mpi_launcher.keep_alive_line(HYDRA, "/v/bin/mpiexec").startswith(
        "yes: mpiexec -disable-auto-cleanup (MPICH (hydra), /v/bin/mpiexec); under Slurm: "
        "srun --no-kill")
    assert mpi_launcher.keep_alive_line(UNKNOWN, "mpiexec").startswith("no known flag")


def test_oversubscribe_only_for_open_mpi_beyond_the_cores(monkeypatch):
    monkeypatch.setattr(mpi_launcher, "cores_here", lambda: 2)
    assert oversubscribe_flags(PRTERUN, 4, ["mpiexec"]) == ["--oversubscribe"]
    assert oversubscribe_flags(ORTERUN, 3, ["mpirun"]) == ["--oversubscribe"]
    assert oversubscribe_flags(PRTERUN, 2, ["mpiexec"]) == []
    assert oversubscribe_flags(PRTERUN, 4, ["mpiexec", "--oversubscribe"]) == []
    assert oversubscribe_flags(HYDRA, 8, ["mpiexec"]) == []


def test_an_attempts_command_line(monkeypatch):
    monkeypatch.setattr(mpi_launcher, "cores_here", lambda: 2)
    plan = launch.Plan(["mpiexec", "--enable-recovery"], PRTERUN, ["--enable-recovery"],
                       ["j.toml", "--set", "a=1"], Path(OUT))
    cmd = launch.command_of(plan, 4, resume=True)
    assert cmd[:4] == ["mpiexec", "--enable-recovery", "--oversubscribe", "-n"]
    assert cmd[4] == "4" and cmd[6:9] == ["-m", "mpisgd", "j.toml"]
    assert cmd[-4:] == ["--out", OUT, "--resume", "auto"]
    plan = launch.Plan(["srun", "--mpi=pmi2"], SRUN, ["--no-kill"], [], Path(OUT))
    assert launch.command_of(plan, 3, resume=False)[:5] == ["srun", "--mpi=pmi2",
                                                             "--no-kill", "-n", "3"]


def test_a_finished_run_is_one_that_wrote_its_summary_during_the_attempt(tmp_path):
    since = time.time()
    assert not launch.finished_since(tmp_path, since)              # no summary
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 96}))
    assert launch.finished_since(tmp_path, since)
    os.utime(tmp_path / "summary.json", (since - 60, since - 60))   # an earlier attempt's
    assert not launch.finished_since(tmp_path, since)
    (tmp_path / "summary.json").write_text(json.dumps({"stopped": {"exit_code": 75}}))
    assert not launch.finished_since(tmp_path, since)               # stopped, not finished
    (tmp_path / "summary.json").write_text("{torn")
    assert not launch.finished_since(tmp_path, since)
