"""The command line in launched jobs: --out on an earlier run (refused, --overwrite,
--resume), quiet defaults and --verbose, Ctrl-C and SIGTERM (checkpoint, summary.json,
exit code), and the live progress bar on a terminal behind mpiexec."""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import ROOT, mpiexec_path

from mpisgd.store import checkpoint

from .datasets import sets
from .test_train import summary_of

# 2390 train rows, 24 steps per epoch: a run of a few seconds.
JOB = sets("data.synth.rows=3000", "data.synth.features=8", "data.synth.shards=3",
           "train.epochs=2", "train.batch_size=100", "optimizer.schedule='constant'")


def test_out_on_an_earlier_run_needs_resume_or_overwrite(launch, tmp_path):
    out = tmp_path / "run"
    first = launch(2, JOB + sets("checkpoint.every_steps=7") + ["--out", str(out)],
                   check=True)
    # The quiet default: no process ids, no memory per node, no bandwidth of a run too
    # short to measure it.
    for line in ("process ids by rank", "memory per node", "gradient kernel"):
        assert line not in first.stdout, first.stdout
    assert summary_of(out)["cost"]["kernel_rate_measurable"] is False
    kept = {p: p.read_bytes() for p in [out / "summary.json", out / "metrics.jsonl"]}
    checkpoints = sorted((out / "checkpoints").iterdir())

    again = launch(2, JOB + ["--out", str(out)])
    assert again.returncode == 2, again.stderr
    assert len(re.findall(r"mpisgd: error", again.stderr)) == 1, again.stderr
    assert "holds an earlier run" in again.stderr
    assert "--resume auto" in again.stderr and "--overwrite" in again.stderr
    assert {p: p.read_bytes() for p in kept} == kept   # nothing of the old run touched
    assert sorted((out / "checkpoints").iterdir()) == checkpoints

    both = launch(2, JOB + ["--out", str(out), "--resume", "auto", "--overwrite"])
    assert both.returncode == 2 and "give one of them" in both.stderr, both.stderr

    (out / "notes.txt").write_text("the user's")
    new = launch(2, JOB + ["--out", str(out), "--overwrite", "--verbose"], check=True)
    assert not (out / "checkpoints").exists()   # no old checkpoint beside the new run
    assert (out / "notes.txt").read_text() == "the user's"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2   # 2 epochs, new
    assert re.search(r"process ids by rank: 0:\d+, 1:\d+", new.stdout), new.stdout
    assert "memory per node" in new.stdout


def _wait_for_checkpoint(out: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not list((out / "checkpoints").glob("step-*")):
        if proc.poll() is not None:
            raise AssertionError(f"the job ended before the signal: {proc.communicate()}")
        assert time.monotonic() < deadline, "the job never got to its first checkpoint"
        time.sleep(0.05)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 75)],
                         ids=["ctrl-c", "sigterm"])
def test_a_signal_checkpoints_and_writes_summary(launch, tmp_path, sig, code):
    out = tmp_path / "run"
    args = JOB + sets("train.epochs=20", "checkpoint.every_steps=7") + ["--out", str(out)]
    # A slow rank keeps the job running until the signal lands mid-run.
    proc = launch.start(2, args + sets("debug.slow_rank=1", "debug.slow_ms=20"))
    try:
        _wait_for_checkpoint(out, proc)
        # mpiexec alone gets it, as from a terminal's Ctrl-C (hydra starts the ranks in
        # sessions of their own) or a batch system; it forwards it to every rank.
        os.killpg(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=60)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    where = f"exit {proc.returncode}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    assert proc.returncode == code, where
    assert len(re.findall(r"mpisgd: (error|stopped)", stderr)) == 1, where
    assert "--resume auto" in stderr and "Traceback" not in stdout + stderr, where
    stopped = summary_of(out)["stopped"]
    assert stopped["exit_code"] == code and stopped["signals"] == [sig.name], stopped
    newest, _ = checkpoint.find_latest(out)
    assert newest.manifest["reason"] == "signal" and newest.step < 20 * 24
    if sig == signal.SIGINT:   # the interrupted run continues where it stopped
        r = launch(2, args + ["--resume", "auto"], check=True)
        assert f"resuming at step {newest.step}" in r.stdout
        assert "stopped" not in summary_of(out)


def _on_a_terminal(cmd: list[str], env: dict, timeout: float = 120) -> tuple[int, str]:
    """Run ``cmd`` with its stdout and stderr on a new pty 100 columns wide; (exit code,
    everything written to the terminal)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env=env, cwd=str(ROOT), start_new_session=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            assert time.monotonic() < deadline, b"".join(chunks).decode(errors="replace")
            if not select.select([master], [], [], 0.5)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError as exc:   # every writer closed the terminal
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=30)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        os.close(master)
    return code, b"".join(chunks).decode()


def test_progress_bar_on_a_terminal_behind_mpiexec(launch, tmp_path):
    """Rank 0's stdout is hydra's pipe, mpiexec's a terminal: a bar, and every line
    (epoch lines, the final lines) on a line of its own, never glued to the bar."""
    out = tmp_path / "run"
    cmd = [mpiexec_path(), "-n", "2", sys.executable, "-m", "mpisgd", *JOB,
           *sets("train.epochs=3"), "--out", str(out)]
    code, text = _on_a_terminal(cmd, launch.env)
    assert code == 0, text
    assert "step/s" in text and "%|" in text, text   # the bar was drawn
    lines = text.split("\n")
    epochs = [line for line in lines if "epoch " in line]
    assert len(epochs) == 3, text
    for line in epochs + [line for line in lines if "mpisgd: done" in line]:
        # What stays on screen is the text after the last carriage return: the line
        # alone, the bar cleared before it.
        shown = line.rstrip("\r").split("\r")[-1]
        assert shown.startswith(("epoch ", "mpisgd: done")) and "%|" not in shown, repr(line)
