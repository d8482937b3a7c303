"""The command line people discover: --help lists every command, each command has its
own help, --version, a mistyped command is named; and the choice of a progress bar or
epoch lines under a launcher, from fake /proc trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mpisgd import __version__, cli
from mpisgd.runtime import log, progress

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = [*cli.COLLECTIVE, *cli.LOCAL]

# One process: `mpisgd --help` (three spellings) must import neither MPI nor numba.
LIGHT = """
import contextlib, io, json, sys
from mpisgd import cli
out = {}
for spelling in ("--help", "-h", "help"):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.main([spelling])
    out[spelling] = [code, buf.getvalue()]
out["heavy"] = sorted(m for m in ("numba", "mpi4py.MPI", "h5py") if m in sys.modules)
print(json.dumps(out))
"""

# Every command's own help, as `mpisgd CMD --help` and as `mpisgd help CMD`.
EACH = """
import contextlib, io, json, sys
from mpisgd import cli
out = {}
for argv in [[c, "--help"] for c in sys.argv[1:]] + [["help", c] for c in sys.argv[1:]]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            code = cli.main(argv)
        except SystemExit as exc:   # the one-process commands' own argparse
            code = exc.code
    out[" ".join(argv)] = [code, buf.getvalue()]
print(json.dumps(out))
"""


def _python(code: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        env.pop(var, None)
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       env=env, cwd=str(ROOT), timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_help_lists_every_subcommand_with_one_line_without_mpi_or_numba():
    out = _python(LIGHT)
    assert out["heavy"] == [], "mpisgd --help started " + ", ".join(out["heavy"])
    code, text = out["--help"]
    assert code == 0
    assert out["-h"] == out["help"] == [0, text]
    lines = text.splitlines()
    for name in [*COMMANDS, "help"]:
        mine = [line for line in lines if line.split()[:1] == [name]]
        assert len(mine) == 1, (name, text)
        assert len(mine[0].split()) > 3, f"{name} has no description: {mine[0]!r}"
    assert "--version" in text


def test_every_subcommand_has_its_own_help():
    out = _python(EACH, *COMMANDS)
    for name in COMMANDS:
        code, text = out[f"{name} --help"]
        assert code == 0, (name, text)
        assert text.startswith("usage:") and f"mpisgd {name}" in text, (name, text)
        assert out[f"help {name}"] == [code, text], name   # help CMD = CMD --help
    solve = out["solve --help"][1]
    assert "least-squares" in solve and "--resume" not in solve
    train = out["train --help"][1]
    for flag in ("--resume", "--overwrite", "--verbose", "--timeline"):
        assert flag in train
    assert "--overwrite" in out["cv --help"][1]
    assert train != solve != out["cv --help"][1]


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"mpisgd {__version__}\n"


def test_help_is_not_taken_for_a_job_file_and_a_typo_is_named(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # no file named like the words below
    assert cli.main(["help"]) == 0
    assert "commands run by every rank" in capsys.readouterr().out
    assert cli.main(["trian", "--set", "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "'trian' is neither a command nor a job file" in err and "'train'" in err
    assert cli.main(["help", "slove"]) == 2
    assert "Did you mean 'solve'?" in capsys.readouterr().err


def test_help_prints_once_under_a_launcher(capsys, monkeypatch):
    monkeypatch.setenv("PMI_RANK", "3")
    assert cli.main(["--help"]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("PMI_RANK", "0")
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("mpisgd ")


# --------------------------------------------------------------------------------------
# Progress under a launcher: fake /proc trees

def _proc(root: Path, pid: int, name: str, ppid: int, stdout: str | None = None) -> None:
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "stat").write_text(f"{pid} ({name}) S {ppid} {pid} {pid} 0 -1 4194560 0 0\n")
    if stdout is not None:
        os.symlink(stdout, d / "fd" / "1")


def _hydra(root: Path, launcher_stdout: str, rank: int = 500) -> int:
    """bash -> mpiexec -> hydra_pmi_proxy -> supervisor -> rank (MPICH, supervised)."""
    _proc(root, 100, "bash", 1, "/dev/pts/3")
    _proc(root, 200, "mpiexec", 100, launcher_stdout)
    _proc(root, 300, "hydra_pmi_proxy", 200, "pipe:[11]")
    _proc(root, 400, "python", 300, "pipe:[12]")
    _proc(root, rank, "python", 400, "pipe:[13]")
    return rank


@pytest.mark.parametrize("launcher_stdout, bar", [
    ("/dev/pts/3", True), ("/dev/tty1", True),
    ("pipe:[81]", False), ("/home/u/run.log", False), ("socket:[9]", False)])
def test_bar_when_the_launchers_stdout_is_a_terminal(tmp_path, launcher_stdout, bar):
    rank = _hydra(tmp_path, launcher_stdout)
    found = progress.launcher_output(rank, tmp_path)
    assert found == launcher_stdout
    assert progress.is_terminal(found) is bar


def test_open_mpi_rank_on_a_pty_with_mpirun_writing_to_a_file(tmp_path):
    # Open MPI gives every rank a pty even when mpirun's output goes to a file: the
    # rank's own stdout must not decide.
    _proc(tmp_path, 100, "bash", 1, "/dev/pts/1")
    _proc(tmp_path, 200, "prterun", 100, "/scratch/out.txt")
    _proc(tmp_path, 300, "python3", 200, "/dev/pts/9")
    assert progress.launcher_output(300, tmp_path) == "/scratch/out.txt"
    assert not progress.is_terminal("/scratch/out.txt")


def test_no_launcher_among_the_ancestors_or_proc_cannot_tell(tmp_path):
    _proc(tmp_path, 100, "sshd", 1, "socket:[5]")
    _proc(tmp_path, 200, "hydra_pmi_proxy", 100, "pipe:[6]")   # a remote node's proxy
    _proc(tmp_path, 300, "python", 200, "pipe:[7]")
    assert progress.launcher_output(300, tmp_path) is None
    _proc(tmp_path, 400, "python", 999, "pipe:[8]")             # the parent is gone
    assert progress.launcher_output(400, tmp_path) is None
    _proc(tmp_path, 600, "python", 700, "pipe:[9]")             # a loop ends too
    _proc(tmp_path, 700, "python", 600, "pipe:[9]")
    assert progress.launcher_output(600, tmp_path) is None
    assert not progress.is_terminal(None)


def test_a_process_name_with_spaces_and_parentheses(tmp_path):
    _proc(tmp_path, 100, "mpiexec", 1, "/dev/pts/4")
    _proc(tmp_path, 200, "my (odd) name", 100, "pipe:[1]")
    assert progress.launcher_output(200, tmp_path) == "/dev/pts/4"


@pytest.mark.parametrize("launcher_stdout, mode", [("/dev/pts/3", "bar"), ("pipe:[2]", "lines")])
def test_auto_mode_under_a_launcher_follows_the_launcher(tmp_path, monkeypatch,
                                                         launcher_stdout, mode):
    monkeypatch.setenv("PMI_RANK", "0")
    _hydra(tmp_path, launcher_stdout, rank=os.getpid())
    assert progress.auto_mode(tmp_path) == (mode, launcher_stdout if mode == "bar" else None)


def test_lines_and_warnings_go_through_a_live_bar(capsys):
    bar = progress.Progress("bar", 10, active=True)
    try:
        bar.update(3, 0.5)
        log.say("mpisgd: a line")
        log.warn("a warning")
        bar.epoch_line({"epoch": 1, "step": 5, "train_loss": 0.25, "epoch_time_s": 0.1}, 2)
    finally:
        bar.close()
    log.say("after")
    out, err = capsys.readouterr()
    assert err == ""   # the warning went through the bar, on its stream
    lines = out.split("\n")
    # Each line begins right after the bar was cleared (a carriage return): never glued.
    for text in ("mpisgd: a line", "mpisgd: warning [0@", "epoch 1/2  step 5"):
        [line] = [seg for seg in lines if text in seg]
        assert line.split("\r")[-1].startswith(text), repr(line)
    assert lines[-2] == "after"
    assert log._through is None


# --------------------------------------------------------------------------------------
# No library warnings in normal output

def test_the_bandwidth_kernel_compiles_without_a_numba_warning(tmp_path):
    # A fresh cache: the warning came only when numba compiled the kernel.
    code = ("import warnings, numpy as np\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    from mpisgd.report.cost import _sum\n"
            "    total = _sum(np.ones(4096, dtype=np.float32))\n"
            "print(total, [f'{w.category.__name__}: {w.message}' for w in caught])\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env, cwd=str(ROOT), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "4096.0 []", r.stdout + r.stderr


def test_the_package_licence_is_an_spdx_string():
    # setuptools >= 77 warns on every install about `license = { text = ... }`.
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "BSD-3-Clause"
    assert "setuptools>=77" in meta["build-system"]["requires"]
