"""Rank-0 progress: a live bar when the user watches a terminal, one line per epoch
otherwise.

Whether the user watches a terminal cannot be read from the rank's own stdout under a
launcher: MPICH's hydra gives each rank a pipe (even when mpiexec writes to a terminal),
Open MPI a pty (even when mpirun's output goes to a file). What counts is where the
launcher writes, so ``auto`` walks up the rank's parent processes (``/proc/PID/stat``)
to the launcher and looks at its stdout (``/proc/PID/fd/1``): a terminal gives the bar,
anything else (a file, a pipe, a launcher on another node) the epoch lines. The bar's
redraws (carriage returns) pass through hydra's pipes byte for byte, so they reach the
terminal as one line.

While the bar is live, every line of this process (epoch lines, :func:`log.say` and
:func:`log.warn`) is written through it: the bar is cleared, the line written, the bar
redrawn below it, so no line ever glues onto the bar.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tqdm import tqdm

from mpisgd.runtime import log
from mpisgd.runtime.launch_env import launcher_rank
from mpisgd.runtime.numbers import num

# Process names (/proc/PID/stat's comm) of the launchers that own the user's terminal.
LAUNCHERS = frozenset({"mpiexec", "mpirun", "mpiexec.hydra", "orterun", "prterun", "srun"})
PROC = Path("/proc")


def _stat(proc: Path, pid: int) -> tuple[str, int]:
    """(name, parent pid) of ``pid``; the name may hold spaces and parentheses."""
    text = (proc / str(pid) / "stat").read_text()
    name = text[text.index("(") + 1:text.rindex(")")]
    return name, int(text[text.rindex(")") + 2:].split()[1])


def launcher_output(pid: int, proc: Path = PROC) -> str | None:
    """Where the launcher above process ``pid`` writes its stdout (what its fd 1 links
    to: ``/dev/pts/3``, ``pipe:[81]``, a file), or None when no launcher is among the
    ancestors or /proc cannot tell."""
    seen = set()
    try:
        while pid > 1 and pid not in seen:
            seen.add(pid)
            name, parent = _stat(proc, pid)
            if name in LAUNCHERS:
                return os.readlink(proc / str(pid) / "fd" / "1")
            pid = parent
    except (OSError, ValueError):   # a process gone, another user's, no /proc: unknown
        return None
    return None


def is_terminal(target: str | None) -> bool:
    return bool(target) and target.startswith(("/dev/pts/", "/dev/tty", "/dev/console"))


def auto_mode(proc: Path = PROC) -> tuple[str, str | None]:
    """("bar" or "lines", the terminal the bar goes to when it is not this process's
    own stdout)."""
    if launcher_rank() is None:   # not started by a launcher: stdout is what the user sees
        return ("bar" if sys.stdout.isatty() else "lines"), None
    target = launcher_output(os.getpid(), proc)
    return ("bar", target) if is_terminal(target) else ("lines", None)


def _size(terminal: str | None) -> tuple[int | None, int | None]:
    """(columns, rows) for the bar on ``terminal`` (None: this process's own stdout);
    (None, None) when tqdm can follow this process's own terminal as it resizes."""
    try:
        if terminal is None:
            columns, rows = os.get_terminal_size(sys.stdout.fileno())
        else:
            fd = os.open(terminal, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                columns, rows = os.get_terminal_size(fd)
            finally:
                os.close(fd)
    except (OSError, ValueError):   # not a terminal, or stdout has no file descriptor
        columns, rows = 0, 0
    if terminal is None and columns > 0 and rows > 0:
        return None, None
    # One column short: a full line would wrap. A terminal of 0 rows (the pty Open MPI
    # gives each rank) would make tqdm draw nothing at all.
    return (columns - 1 if columns > 1 else 79), (rows if rows > 0 else 24)


class Progress:
    """Shows training progress on rank 0; a no-op on every other rank.

    ``mode``: output.progress (auto, bar, lines, none).
    """

    def __init__(self, mode: str, total_steps: int, active: bool):
        terminal = None
        if active and mode == "auto":
            mode, terminal = auto_mode()
        self.mode = mode if active else "none"
        self.bar = None
        if self.mode == "bar":
            cols, rows = _size(terminal)
            self.bar = tqdm(total=total_steps, unit="step", file=sys.stdout, ncols=cols,
                            nrows=rows, dynamic_ncols=cols is None, mininterval=0.5,
                            leave=True)
            log.live(self.write)

    def write(self, line: str) -> None:
        """A whole line above the bar (the bar is redrawn below it)."""
        self.bar.write(line, file=sys.stdout)
        sys.stdout.flush()

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix_str(f"loss {num(loss, 4)}", refresh=False)
            self.bar.update(0)

    def epoch_line(self, record: dict, epochs: int) -> None:
        test = record.get("test", {})
        shown = [f"{k} {num(test[k], 5)}" for k in ("mse", "r2", "accuracy", "f1") if k in test]
        line = (f"epoch {record['epoch']}/{epochs}  step {record['step']}  "
                f"train loss {num(record['train_loss'])}  "
                + ("test " + ", ".join(shown) + "  " if shown else "")
                + f"({record['epoch_time_s']:.2f} s)")
        if self.mode == "lines":
            print(line, flush=True)
        elif self.bar is not None:
            self.write(line)

    def close(self) -> None:
        """End the bar (its last state stays on screen); lines go straight out again.
        Safe to call twice."""
        if self.bar is not None:
            log.live(None)
            self.bar.close()
            self.bar = None
