"""The rules of ``mpisgd launch``, apart from the processes: the arguments of each
attempt, which exit codes are worth a relaunch, when to go on with fewer ranks, and the
failing ranks named in the job's messages.

Kept free of processes and MPI so that they are unit-tested as plain functions
(tests/unit/test_launch_rules.py).
"""

from __future__ import annotations

import argparse
import re

# Exit codes after which a relaunch is pointless or unwanted (README's exit-code table).
NO_RESTART = {
    0: "finished",
    2: "exit 2 is bad input (job file, data, output folder, checkpoint): a relaunch would "
       "fail the same way",
    4: "exit 4 is divergence: deterministic, a relaunch would diverge again",
    75: "exit 75 is a stop by SIGTERM/SIGUSR1: the user or the batch system wants the job "
        "stopped (continue with --resume auto)",
    130: "exit 130 is a stop by Ctrl-C: the user wants the job stopped (continue with "
         "--resume auto)",
    127: "exit 127: the launcher or the program could not be found or started: a relaunch "
         "fails the same way",
}
# Collective commands other than train: they write no checkpoints to continue from.
NOT_RESUMABLE = ("solve", "cv", "eval", "predict")
# train's options that take a value; the others are flags (see mpisgd.commands.train).
VALUED = ("--set", "--out", "--resume", "--timeline")
FLAGS = ("--overwrite", "--verbose", "--debug", "--help")
# What an attempt's command line must not carry over from the one before.
REPLACED = ("--out", "--resume")
RANK_ERROR = re.compile(r"^mpisgd: error on rank (\d+) \(([^)]*)\): (.*)$")
MESSAGE = re.compile(r"^mpisgd: (error|stopped)\b")
MAX_MESSAGES = 20


class UsageError(ValueError):
    """The mpisgd arguments given to launch cannot be read."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


def job_parser() -> argparse.ArgumentParser:
    """train's arguments, as train reads them (mpisgd.commands.train.parser), without
    starting MPI: launch reads the job, --set, --out, --resume and --overwrite."""
    p = _Parser(prog="mpisgd train", add_help=False)
    p.add_argument("job", nargs="?")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out")
    p.add_argument("--resume")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--timeline")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def split_command(words: list[str]) -> tuple[list[str], list[str]]:
    """(the leading ``train`` if given, the rest); UsageError for another command."""
    if words and words[0] in NOT_RESUMABLE:
        raise UsageError(f"launch relaunches training (mpisgd train), not '{words[0]}': "
                         f"{words[0]} writes no checkpoint to continue from")
    if words and words[0] == "train":
        return words[:1], words[1:]
    return [], list(words)


def option_of(word: str) -> str | None:
    """The train option ``word`` names (``--out``, ``--out=DIR`` and the abbreviations
    argparse accepts, such as ``--ov``), or None when it names none or several."""
    if not word.startswith("--") or word == "--":
        return None
    name = word.split("=", 1)[0]
    found = [o for o in (*VALUED, *FLAGS) if o.startswith(name)]
    return name if name in found else (found[0] if len(found) == 1 else None)


def attempt_args(words: list[str], out: str, *, resume: bool) -> list[str]:
    """The mpisgd arguments of one attempt: ``words`` without their --out (and, on a
    relaunch, their --resume and --overwrite), then ``--out OUT`` (and ``--resume
    auto``). Values of --set and --timeline are carried over untouched, even when they
    look like options."""
    drop = REPLACED + (("--overwrite",) if resume else ())
    kept, i = [], 0
    while i < len(words):
        word = words[i]
        option = option_of(word)
        takes = 2 if option in VALUED and "=" not in word else 1
        if option not in drop:
            kept.extend(words[i:i + takes])
        elif option == "--resume" and not resume:
            kept.extend(words[i:i + takes])   # the user's own on the first attempt
        i += takes
    return [*kept, "--out", out, *(["--resume", "auto"] if resume else [])]


def why_not_restart(code: int) -> str | None:
    """Why exit code ``code`` is not worth a relaunch; None when it is."""
    return NO_RESTART.get(code)


def repeat_failure(history: list[tuple[int, list[int]]], ranks: int) -> int | None:
    """The rank that failed in each of the last two attempts at ``ranks`` ranks (the
    lowest, if several), else None. ``history``: (ranks, failed ranks) per attempt."""
    if len(history) < 2:
        return None
    (n1, a), (n2, b) = history[-2:]
    both = set(a) & set(b) if n1 == n2 == ranks else set()
    return min(both) if both else None


class Failures:
    """The failing ranks and mpisgd's message lines in a job's stderr, fed as it comes
    (chunks of bytes, lines split anywhere)."""

    def __init__(self):
        self.ranks: list[int] = []
        self.messages: list[str] = []
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line.decode(errors="replace").rstrip("\r"))

    def close(self) -> None:
        if self._partial:
            self._line(self._partial.decode(errors="replace"))
            self._partial = b""

    def _line(self, line: str) -> None:
        match = RANK_ERROR.match(line)
        if match and int(match.group(1)) not in self.ranks:
            self.ranks.append(int(match.group(1)))
        if MESSAGE.match(line) and len(self.messages) < MAX_MESSAGES:
            self.messages.append(line)

    def cause(self, width: int = 120) -> str:
        """The first message, short: ``rank R: TEXT`` or the agreed error's text."""
        for line in self.messages:
            match = RANK_ERROR.match(line)
            text = f"rank {match.group(1)}: {match.group(3)}" if match \
                else line.split(": ", 2)[-1]
            return text if len(text) <= width else text[:width - 3] + "..."
        return ""
