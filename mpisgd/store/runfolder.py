"""The run folder: config.toml, effective.toml, metrics.jsonl, ranks.json, summary.json.

model.h5 is :mod:`mpisgd.store.modelfile`; checkpoints/ is :mod:`mpisgd.store.checkpoint`.

Only rank 0 writes here; every writer is called inside an agreement by the caller,
so a full disk or a read-only folder becomes one clear error on every rank.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import h5py
import numpy as np

from mpisgd.config import JobConfig, to_toml
from mpisgd.errors import OutputError
from mpisgd.store.atomic import atomic_path, write_json, write_text

EFFECTIVE = "effective.toml"


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


def write_oracle(run: Path, theta: np.ndarray, result: dict) -> Path:
    """oracle.h5 (the exact optimum's theta) and oracle.json, atomically. Rank 0 only."""
    path = run / "oracle.h5"
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("theta", data=theta)
        f.attrs.update(format="mpisgd-oracle", train_data=result["train_data"])
    write_json(run / "oracle.json", result)
    return path
