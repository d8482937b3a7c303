"""The run folder: config.toml, effective.toml, metrics.jsonl, ranks.json, summary.json.

model.h5 is :mod:`mpisgd.store.modelfile`; checkpoints/ is :mod:`mpisgd.store.checkpoint`.

Only rank 0 writes here; every writer is called inside an agreement by the caller,
so a full disk or a read-only folder becomes one clear error on every rank.

A folder given with ``--out`` that holds an earlier run is continued (``--resume``),
replaced (``--overwrite``), or refused (:func:`claim`): a new run beside an old run's
checkpoints would be resumed from them by a later ``--resume auto``, and its metrics
appended to the old run's.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path

import numpy as np

from mpisgd.config import JobConfig, to_toml
from mpisgd.errors import OutputError
from mpisgd.store import checkpoint, modelfile
from mpisgd.store.atomic import write_json, write_text

EFFECTIVE = "effective.toml"
# Everything a run (train, solve, cv) writes into its folder, and nothing else: only
# these are deleted by --overwrite, whatever else the folder holds.
RUN_FILES = ("config.toml", EFFECTIVE, "metrics.jsonl", "ranks.json", "summary.json",
             modelfile.NAME, modelfile.ORACLE, "oracle.json", "cv.json",
             checkpoint.folder(Path()).name, "trace")
RUN_GLOBS = ("fold-*",)   # cv: one run folder per fold
_TRASH = ".overwritten-"


def create(cfg: JobConfig, out: str | None = None, kind: str = "") -> Path:
    """Make (or reuse) a run folder and prove it is writable. Rank 0 only.

    ``out`` (default ``output.dir``) names it; else a new ``runs/<time>-<job>[-kind]-<id>``.
    """
    out = out if out is not None else cfg.output.dir
    if out:
        path = Path(out).expanduser()
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        tag = f"{cfg.name}-{kind}" if kind else cfg.name
        path = Path("runs") / f"{stamp}-{tag}-{secrets.token_hex(2)}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"output folder '{path}' is not writable: "
                          f"{exc.strerror or exc}.") from None
    return path.resolve()


def earlier_run(path: Path) -> list[str]:
    """The files and folders of an earlier run in ``path`` (sorted; empty: none)."""
    if not path.is_dir():
        return []
    found = [name for name in RUN_FILES if (path / name).exists()]
    found += [p.name for pattern in RUN_GLOBS for p in path.glob(pattern)]
    return sorted(found)


def claim(out: str, *, resume: bool, overwrite: bool) -> None:
    """Rank 0, before a run starts in ``out``: an earlier run there is an OutputError
    unless resumed; with ``overwrite`` its files are deleted first.

    Deleting is atomic per entry and finished before the new run writes anything: each
    entry is renamed into one hidden folder, which is then removed. A crash in between
    leaves either old entries (found again by the next --overwrite) or the hidden folder
    (removed by the next --overwrite), never an old checkpoint beside a new run.
    """
    path = Path(out).expanduser()
    old = earlier_run(path)
    if not old or resume:
        return
    if not overwrite:
        raise OutputError(f"output folder '{path}' holds an earlier run "
                          f"({', '.join(old)}): continue it with --resume auto, replace "
                          f"it with --overwrite, or choose another --out.")
    leftovers = list(path.glob(f"{_TRASH}*"))   # of an --overwrite that crashed
    trash = path / f"{_TRASH}{secrets.token_hex(4)}"
    try:
        trash.mkdir()
        for name in old:
            os.replace(path / name, trash / name)
        for folder in (trash, *leftovers):
            shutil.rmtree(folder)
    except OSError as exc:
        raise OutputError(f"--overwrite cannot delete the earlier run in '{path}': "
                          f"{exc.strerror or exc}.") from None


def write_config(run: Path, cfg: JobConfig) -> None:
    """config.toml: the job as given (the effective one differs: see write_effective)."""
    write_text(run / "config.toml", to_toml(cfg))


def write_effective(run: Path, cfg: JobConfig, changes: dict[str, dict]) -> None:
    """effective.toml: the job the run follows, after its own changes (listed on top
    as comments: key, value, the job's value, why)."""
    notes = [f"# {key} = {c['value']!r} (the job says {c['job']!r}): {c['why']}"
             for key, c in changes.items()]
    write_text(run / EFFECTIVE, "# The job as this run follows it; config.toml is the "
               "job as given.\n" + "\n".join(notes) + "\n\n" + to_toml(cfg))


def append_metrics(run: Path, record: dict) -> None:
    try:
        with open(run / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write '{run / 'metrics.jsonl'}': "
                          f"{exc.strerror or exc}.") from None


def write_ranks(run: Path, ranks: list[tuple[str, int]]) -> None:
    """ranks.json: each rank's host and process id. A launcher reports a process killed
    by a signal (SIGKILL, the OOM killer) by its pid; this file names its rank."""
    rows = [{"rank": r, "host": host, "pid": pid} for r, (host, pid) in enumerate(ranks)]
    write_text(run / "ranks.json", json.dumps(rows, indent=1) + "\n")


def write_summary(run: Path, summary: dict) -> None:
    write_json(run / "summary.json", summary)


def write_oracle(run: Path, theta: np.ndarray, result: dict, **model) -> Path:
    """oracle.h5 (the exact optimum in model.h5's layout, so eval and predict read it;
    ``model``: the rest of ``modelfile.write_model``'s arguments) and oracle.json,
    atomically. Rank 0 only."""
    path = modelfile.write_model(run, theta, name=modelfile.ORACLE,
                                 kind=modelfile.ORACLE_FORMAT, **model)
    write_json(run / "oracle.json", result)
    return path
