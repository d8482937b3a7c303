"""Progress "auto" under each launcher (mpisgd.runtime.progress): decided by where the
launcher writes, never by the rank's own stdout, which Open MPI makes a pty even when
mpirun writes to a file; and a bar drawn on such a pty (0 rows, 0 columns) shows.

No launcher is started here (the launchers' processes are stand-in /proc entries), so
no timeout is needed."""

from __future__ import annotations

import fcntl
import io
import os
import struct
import termios
from pathlib import Path

import pytest

from mpisgd.runtime import launch_env, progress


def _proc(root: Path, pid: int, name: str, ppid: int, stdout: str) -> None:
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "stat").write_text(f"{pid} ({name}) S {ppid} {pid} {pid} 0 -1 4194560 0 0\n")
    os.symlink(stdout, d / "fd" / "1")


@pytest.fixture
def launched(monkeypatch):
    """set(var, value): this process started by a launcher that sets only ``var``."""
    for var in launch_env.RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    return lambda var, value="0": monkeypatch.setenv(var, value)


def _open_mpi(root: Path, mpirun_stdout: str) -> None:
    """bash -> prterun (Open MPI 5's mpirun) -> supervisor -> this process on a pty."""
    _proc(root, 100, "bash", 1, "/dev/pts/1")
    _proc(root, 200, "prterun", 100, mpirun_stdout)
    _proc(root, 300, "python", 200, "/dev/pts/9")
    _proc(root, os.getpid(), "python", 300, "/dev/pts/9")


@pytest.mark.parametrize("mpirun_stdout, expected", [
    ("/scratch/slurm-42.out", ("lines", None)),   # sbatch: mpirun's output is the log
    ("pipe:[77]", ("lines", None)),               # `mpirun ... | tee`
    ("/dev/pts/1", ("bar", "/dev/pts/1")),        # a person at a terminal
])
def test_open_mpi_follows_mpirun_not_the_ranks_pty(tmp_path, launched, mpirun_stdout,
                                                   expected):
    launched("OMPI_COMM_WORLD_RANK")
    launched("PMIX_RANK")
    _open_mpi(tmp_path, mpirun_stdout)
    assert progress.auto_mode(tmp_path) == expected


def test_srun_and_a_remote_node_give_lines(tmp_path, launched):
    launched("SLURM_PROCID")   # srun: the ranks' parent is slurmstepd, srun is elsewhere
    _proc(tmp_path, 100, "slurmstepd", 1, "/dev/null")
    _proc(tmp_path, os.getpid(), "python", 100, "/dev/pts/2")
    assert progress.auto_mode(tmp_path) == ("lines", None)
    _proc(tmp_path, 500, "prted", 1, "/dev/null")   # Open MPI's daemon on another node
    assert progress.launcher_output(500, tmp_path) is None


def test_no_launcher_asks_stdout_itself(tmp_path, launched, monkeypatch):
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert progress.auto_mode(tmp_path) == ("lines", None)


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_a_terminal_of_zero_rows_gets_a_usable_size():
    master, slave = os.openpty()   # a new pty is 0 x 0, as Open MPI's are
    try:
        name = os.ttyname(slave)
        assert progress._size(name) == (79, 24)
        _set_size(slave, 30, 100)
        assert progress._size(name) == (99, 30)
    finally:
        os.close(master)
        os.close(slave)


def test_the_bar_shows_on_an_open_mpi_pty(monkeypatch):
    # tqdm drew nothing at all on a pty reporting 0 rows (its nrows - 1 < position 0).
    master, slave = os.openpty()
    out = open(slave, "w", closefd=False)
    try:
        monkeypatch.setattr("sys.stdout", out)
        bar = progress.Progress("bar", 10, active=True)
        bar.update(3, 0.5)
        bar.bar.refresh()
        bar.close()
        out.flush()
        os.set_blocking(master, False)
        shown = os.read(master, 65536).decode(errors="replace")
    finally:
        out.close()
        os.close(master)
        os.close(slave)
    assert "3/10" in shown and "loss 0.5" in shown, repr(shown)
