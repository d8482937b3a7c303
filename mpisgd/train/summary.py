"""The end of a run: the final evaluation, the summary record and its printed lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mpisgd import oracle
from mpisgd.context import Context
from mpisgd.evaluation import evaluate, objective, truth_distance
from mpisgd.report import cost
from mpisgd.runtime.log import say, warn
from mpisgd.runtime.numbers import num


def final_metrics(ctx: Context, theta: np.ndarray) -> dict:
    """Collective: the training objective, held-out metrics, distance to the generating
    weights and, for linear models, the gap to the exact optimum."""
    final = {"train_objective": objective(ctx, theta)}
    if ctx.n_test:
        final["test"] = evaluate(ctx, theta)
    final.update(truth_distance(ctx, theta))
    if ctx.cfg.train.oracle and oracle.available(ctx):
        final["oracle"] = oracle_report(ctx, final)
    return final


def oracle_report(ctx: Context, final: dict) -> dict:
    """Collective: the exact optimum's objective and test MSE, and this run's gap to it."""
    best = oracle.solve(ctx)
    report = {"train_objective": objective(ctx, best)}
    report["objective_gap"] = final["train_objective"] - report["train_objective"]
    if ctx.n_test:
        report["test_mse"] = evaluate(ctx, best)["mse"]
        report["test_mse_rel_gap"] = final["test"]["mse"] / report["test_mse"] - 1.0
    return report


def data_io_summary(reports: list[dict], workers) -> dict:
    """Rank 0: storage placement's read counters, per worker and in all; warns about
    skipped chunks, which must never pass unnoticed."""
    per = {str(r): {k: v for k, v in reports[r].items() if k != "skipped"} for r in workers}
    keys = ("chunks", "bytes", "retries", "skipped_chunks", "skipped_rows", "wait_s",
            "local_chunks", "remote_chunks")
    total = {k: sum(p.get(k, 0) for p in per.values()) for k in keys}
    placed = total["local_chunks"] + total["remote_chunks"]
    total["local_share"] = total["local_chunks"] / placed if placed else None
    skipped = sorted({w for r in reports for w in r.get("skipped", [])})   # servers' too
    if skipped:
        warn(f"skipped {total['skipped_rows']} rows in {total['skipped_chunks']} chunk(s) "
             f"that could not be read (data.on_read_error = 'skip'): " + "; ".join(skipped))
    return {"per_worker": per, "total": total, "skipped": skipped}


def print_final(s: dict, model_path: Path | None) -> None:
    """Rank 0's closing lines: speed, objective, test metrics, cost split, files."""
    parts = [f"done in {s['wall_time_s']:.2f} s", f"{s['samples_per_s']:,.0f} samples/s",
             f"train objective {num(s['train_objective'])}"]
    test = s.get("test", {})
    for key in ("mse", "rmse", "r2", "accuracy", "precision", "recall", "f1", "log_loss"):
        if key in test:
            parts.append(f"test {key} {num(test[key])}")
    if "weight_rel_error" in s:
        parts.append(f"|w - w_true|/|w_true| {num(s['weight_rel_error'], 3)}")
    if "oracle" in s:
        o = s["oracle"]
        gap = (f", test MSE {num(100 * o['test_mse_rel_gap'], 4, sign=True)}%"
               if "test_mse" in o else "")
        parts.append(f"gap to the exact optimum: objective {num(o['objective_gap'], 3)}{gap}")
    say("mpisgd: " + ", ".join(parts))
    c = s.get("cost")
    if c:
        say(cost.describe(c))
    for key, change in s.get("effective", {}).items():
        say(f"mpisgd: this run followed {key} = {change['value']!r}, not the job's "
            f"{change['job']!r}: {change['why']}")
    if model_path is not None:
        say(f"mpisgd: model written to {model_path}")
    say(f"mpisgd: summary written to {Path(s['run_dir']) / 'summary.json'}")
