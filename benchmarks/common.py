"""What the newer benchmark scripts share: statistics, result files, launching jobs, plots.

Scripts run both as ``python benchmarks/x.py`` and under ``mpiexec``; each puts the
checkout on ``sys.path`` itself and imports this module as ``benchmarks.common``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


def stats(xs: list[float]) -> dict:
    """Median with the range: every figure the benchmarks report has this shape."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def per_call(fn, calls: int, comm) -> float:
    """Collective over ``comm``: the slowest rank's mean seconds per call of ``fn``."""
    import time

    from mpi4py import MPI

    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    dt = (time.perf_counter() - t0) / calls
    return comm.allreduce(dt, op=MPI.MAX)


def training_args(ap) -> None:
    """The command-line of the end-to-end reference trainers (same settings for each)."""
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--momentum", type=float, required=True)
    ap.add_argument("--batch-per-rank", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)


def cell(s: dict, fmt: str = ",.0f", scale: float = 1.0) -> str:
    """'median [min, max]' of a stats dict, each value times ``scale``."""
    return (f"{s['median'] * scale:{fmt}} [{s['min'] * scale:{fmt}}, "
            f"{s['max'] * scale:{fmt}}]")


def result_path(name: str, quick: bool, ext: str = "json") -> Path:
    """benchmarks/results/<name>.<ext>; a quick run writes <name>_quick.<ext> so that it
    never replaces the numbers of a full one."""
    return RESULTS / f"{name}{'_quick' if quick else ''}.{ext}"


def write_json(name: str, quick: bool, data: dict) -> Path:
    path = result_path(name, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def read_json(name: str, quick: bool) -> dict | None:
    """A result of this kind of run, else of the other kind (marked), else None."""
    for q in (quick, not quick):
        path = result_path(name, q)
        if path.exists():
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                data.setdefault("quick", q)
            return data
    return None


def job_env(**extra: str) -> dict:
    """The environment of a launched job: this checkout importable, plus ``extra``."""
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


def run_mpisgd(n: int, args: list[str], out: Path, env: dict | None = None,
               timeout: float = 1800) -> dict:
    """Launch ``mpiexec -n N python -m mpisgd ARGS`` and return its summary.json, with
    the per-epoch records of metrics.jsonl under ``epochs_log``."""
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "mpisgd", *args, "--out", str(out),
           "--overwrite", "--set", "output.progress='none'", "--set", "output.save_model=false"]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=timeout, stdout=subprocess.DEVNULL,
                   env=env or job_env())
    summary = json.loads((out / "summary.json").read_text())
    lines = (out / "metrics.jsonl").read_text().splitlines()
    summary["epochs_log"] = [r for r in map(json.loads, lines) if "epoch_time_s" in r]
    return summary


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when not installed:
    plots are optional, the JSON and Markdown are not."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def errorbars(s_list: list[dict], scale: float = 1.0):
    """(medians, [lower, upper] distances) for matplotlib's errorbar/bar yerr."""
    med = [s["median"] * scale for s in s_list]
    lo = [(s["median"] - s["min"]) * scale for s in s_list]
    hi = [(s["max"] - s["median"]) * scale for s in s_list]
    return med, [lo, hi]
