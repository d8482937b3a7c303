"""``mpisgd cv``: k-fold cross-validation of a job, and the k-fold held-out split.

    python -m mpisgd cv [JOB.toml] --folds K [--set key=value ...] [--out DIR]

Every rank trains fold 0, then fold 1, ... (``train.run`` with ``data.folds = K``,
``data.fold = k``, run folder ``DIR/fold-k``); rank 0 prints each fold's test metrics
and their mean +- sample std and writes ``DIR/cv.json``.

Folds run one after another on the whole world rather than side by side on groups of
ranks: each fold then gets every rank (the job's parallel efficiency is what the user
tuned, and K need not divide the world size), the training code runs unchanged on the
world communicator, an error ends the whole job the usual way, and the folds' results
do not depend on how ranks were grouped. Side by side would only win when one fold
cannot use the whole machine, which is the case a smaller world fixes.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from mpisgd.comm import Topology, bcast_value
from mpisgd.commands.common import (
    ArgParser,
    add_job_arguments,
    claim_out,
    load_job,
    on_world,
)
from mpisgd.config import JobConfig, replace
from mpisgd.errors import ConfigError
from mpisgd.report.metrics import format_metrics
from mpisgd.runtime.log import say
from mpisgd.store import runfolder
from mpisgd.store.atomic import write_json
from mpisgd.train import run

USAGE = ("python -m mpisgd cv [JOB.toml] --folds K [--set key=value ...] [--out DIR] "
         "[--overwrite] [--verbose] [--debug]")
DEFAULT_FOLDS = 5


def _parser() -> ArgParser:
    p = ArgParser(prog="mpisgd cv", usage=USAGE,
                  description="k-fold cross-validation: train and test every fold in turn "
                              "on all ranks; prints each fold's test metrics and their mean "
                              "and standard deviation, writes cv.json.")
    add_job_arguments(p, "cv folder: fold-k/ run folders and cv.json (default: the job's "
                         "output.dir, else a new folder under runs/); one holding an "
                         "earlier cv needs --overwrite")
    p.add_argument("--folds", type=int, help=f"number of folds K >= 2 (default: the job's "
                   f"data.folds if set, else {DEFAULT_FOLDS})")
    return p


def main(argv: list[str]) -> int:
    """``mpisgd cv``: every rank runs it (collective over the world)."""
    args = _parser().parse_args(argv)
    cfg = load_job(args.job, args.overrides)
    folds = args.folds if args.folds is not None else (cfg.data.folds or DEFAULT_FOLDS)
    try:
        if folds < 2:
            raise ConfigError(f"--folds must be at least 2; got {folds}.")
        # e.g. data.test set: the folds are cut from data.train alone
        cfg = replace(cfg, {"data.folds": folds, "data.fold": 0})
    except ConfigError as exc:
        exc.agreed = True  # every rank read the same file and flags: same verdict
        raise
    out = args.out or cfg.output.dir or None

    def body(topo: Topology) -> None:
        claim_out(topo, out, overwrite=args.overwrite)
        run_cv(cfg, topo, out)

    return on_world(body, cfg.topology.ranks_per_node, stoppable=True, verbose=args.verbose)


def _make_root(cfg: JobConfig, out: str | None) -> Path:
    """Rank 0: create (or reuse) the cv folder and prove it is writable."""
    return runfolder.create(cfg, out or "", kind="cv")


def run_cv(cfg: JobConfig, topo: Topology, out: str | None = None) -> dict:
    """Collective over the world: train and test each of ``cfg.data.folds`` folds in
    turn; returns the record written to cv.json (the same on every rank)."""
    folds = cfg.data.folds
    root = bcast_value(topo.world, lambda: _make_root(cfg, out))
    per_fold = []
    for k in range(folds):
        fold_cfg = replace(cfg, {"data.fold": k, "output.dir": str(root / f"fold-{k}")})
        say(f"mpisgd cv: fold {k} of {folds}: training on the other {folds - 1} fold(s)")
        s = run(fold_cfg, topo)
        test = s.get("test", {})
        per_fold.append({"fold": k, "run_dir": s["run_dir"], "n_train": s["n_train"],
                         "n_test": s["n_test"], "train_objective": s["train_objective"],
                         "test": test})
        say(f"mpisgd cv: fold {k}: {s['n_test']} test rows, "
            f"{format_metrics(test) or 'no test metrics'}")
    mean, std = summarize([f["test"] for f in per_fold])
    pm = _plus_minus()
    say(f"mpisgd cv: {folds} folds, mean {pm} std: "
        + ", ".join(f"{k} {mean[k]:.6g} {pm} {std[k]:.3g}" for k in mean))
    record = {"job": cfg.name, "folds": folds, "seed": cfg.train.seed,
              "world_size": topo.size, "mode": cfg.mode, "model": cfg.model.name,
              "per_fold": per_fold, "mean": mean, "std": std}
    path = root / "cv.json"
    bcast_value(topo.world, lambda: write_json(path, record))
    say(f"mpisgd cv: results written to {path}")
    return record


def summarize(tests: list[dict]) -> tuple[dict, dict]:
    """Mean and sample standard deviation (ddof = 1) over folds of every scalar metric
    (not ``n``, not per-class lists); a metric missing or NaN in a fold is left out
    of that metric's statistics."""
    names = [k for t in tests for k, v in t.items()
             if k != "n" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    mean, std = {}, {}
    for name in dict.fromkeys(names):
        values = np.array([t[name] for t in tests if name in t], dtype=np.float64)
        values = values[~np.isnan(values)]
        if values.size == 0:
            continue
        mean[name] = float(values.mean())
        std[name] = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return mean, std


def _plus_minus() -> str:
    """'±' where stdout can encode it, else '+/-'."""
    try:
        "±".encode(sys.stdout.encoding or "ascii")
        return "±"
    except (UnicodeEncodeError, LookupError):
        return "+/-"
