"""Start-up: seconds from launching ``mpiexec -n 8 python -m mpisgd`` to the first step.

    python benchmarks/startup.py [--quick] [--ranks N]

A small job (the built-in linear regression on 20,000 generated rows, 20 steps),
launched with the numba cache cold (a fresh, empty NUMBA_CACHE_DIR) and warm (the
folder the first cold run filled), interleaved over repeats. The first step is found
without any hook in mpisgd: rank 0 prints its start line ("mpisgd: <job>: <mode> mode,
...") right after the barrier that starts the timeline's clock, so the parent timestamps
that line as it arrives and adds the end of rank 0's first "compute" span from
``--timeline`` (microseconds from that barrier; the estimate is late by the line's trip
through mpiexec, which makes it conservative). The run's cost report splits the time before the
start line: rank 0's ``setup`` (kernel warm-up: compiling or loading from the cache) and
``data`` (HDF5 reads); the rest is launching, imports and MPI_Init. The floor, measured
in the same run: ``mpiexec -n N python -c`` importing mpi4py, NumPy, numba and h5py and
passing one barrier, timestamped the same way. Medians [min, max]. Writes
benchmarks/results/startup.json (startup_quick.json with --quick) and prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from benchmarks.common import MPIEXEC, ROOT, cell, job_env, stats, write_json
from mpisgd.data import synth_to_folder
from mpisgd.runtime.paths import cache_dir

JOB = ["--set", "train.max_steps=20",
       "--set", "train.oracle=false", "--set", "output.progress='none'",
       "--set", "output.save_model=false"]
START_LINE = re.compile(r"^mpisgd: \S+: \w+ mode")
FLOOR_CODE = ("from mpi4py import MPI; import numpy, numba, h5py; MPI.COMM_WORLD.Barrier(); "
              "print('ready', flush=True) if MPI.COMM_WORLD.rank == 0 else None")
FLOOR_LINE = re.compile(r"^ready$")
# Warm start to the first step, as a multiple of the launch + import floor of the same run.
WARM_GOAL_RATIO = 1.3


def launch(cmd: list[str], env: dict, marker: re.Pattern) -> tuple[float, float]:
    """Run ``cmd``; (seconds from launch until a line matching ``marker`` arrived on its
    stdout, seconds until exit)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    started = None
    for line in proc.stdout:   # each line as rank 0 flushes it
        if started is None and marker.match(line):
            started = time.perf_counter() - t0
    if proc.wait(timeout=600):
        raise RuntimeError(f"exit code {proc.returncode}: {' '.join(cmd)}")
    if started is None:
        raise RuntimeError(f"no line matching {marker.pattern!r} in the output of "
                           f"{' '.join(cmd)}: has the start line changed?")
    return started, time.perf_counter() - t0


def first_step_end(timeline: Path) -> float:
    """Seconds from the timeline's origin to the end of rank 0's first gradient step."""
    events = json.loads(timeline.read_text())["traceEvents"]
    first = min((e for e in events if e.get("name") == "compute" and e["pid"] == 0),
                key=lambda e: e["ts"])
    return (first["ts"] + first["dur"]) / 1e6


def small_dataset() -> Path:
    """The job's rows, generated once into the cache so that no run generates them."""
    path = cache_dir() / "bench" / "startup-linear-20000x20"
    if not path.exists():
        synth_to_folder("linear", path, n_rows=20_000, n_features=20, dtype="float64",
                        n_shards=4)
    return path


def mpisgd_start(ranks: int, data: Path, numba_dir: Path, out: Path) -> dict:
    timeline = out / "timeline.json"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpisgd", *JOB,
           "--set", f"data.train='{data}'", "--out", str(out / "run"), "--overwrite",
           "--timeline", str(timeline)]
    started, total = launch(cmd, job_env(NUMBA_CACHE_DIR=str(numba_dir)), START_LINE)
    rank0 = json.loads((out / "run" / "summary.json").read_text())["cost"]["ranks"][0]
    return {"start_line_s": started, "first_step_s": started + first_step_end(timeline),
            "setup_s": rank0["setup"], "data_s": rank0["data"],
            "before_run_s": started - rank0["setup"] - rank0["data"], "exit_s": total}


def floor(ranks: int) -> float:
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-c", FLOOR_CODE]
    return launch(cmd, job_env(), FLOOR_LINE)[0]


def summarise(runs: list[dict]) -> dict:
    return {k: stats([r[k] for r in runs]) for k in runs[0]}


def markdown(result: dict) -> str:
    p, cold, warm = result["ranks"], result["cold"], result["warm"]
    ratio = warm["first_step_s"]["median"] / result["floor_s"]["median"]
    met = "met" if ratio <= WARM_GOAL_RATIO else "NOT met"
    lines = [f"## Start-up: `mpiexec -n {p} python -m mpisgd` (small job) to the first step\n",
             f"Seconds, median [min, max]; cold: {result['repeats_cold']} run(s), each with an "
             f"empty numba cache; warm: {result['repeats_warm']} run(s) on a filled one.\n",
             "| numba cache | to first step done | to start line | before run() "
             "(launch, imports, MPI_Init) | setup (kernel warm-up) | HDF5 reads |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in (("cold", cold), ("warm", warm)):
        lines.append(f"| {name} | {cell(r['first_step_s'], '.2f')} | "
                     f"{cell(r['start_line_s'], '.2f')} | {cell(r['before_run_s'], '.2f')} | "
                     f"{cell(r['setup_s'], '.2f')} | {cell(r['data_s'], '.3f')} |")
    lines += ["", f"- floor (mpiexec -n {p}, imports of mpi4py, NumPy, numba, h5py, one "
              f"barrier): {cell(result['floor_s'], '.2f')} s",
              f"- warm start to the first step: {ratio:.2f}x the floor (goal <= "
              f"{WARM_GOAL_RATIO:g}x: {met})"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 cold and 2 warm runs")
    ap.add_argument("--ranks", type=int, default=8)
    args = ap.parse_args()
    n_cold, n_warm = (1, 2) if args.quick else (3, 5)
    data = small_dataset()
    cold, warm, floors = [], [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for r in range(max(n_cold, n_warm)):   # interleaved: drift hits both alike
            if r < n_cold:
                cold.append(mpisgd_start(args.ranks, data, tmp / f"numba-{r}", tmp / f"c{r}"))
                floors.append(floor(args.ranks))
            if r < n_warm:   # the first cold run filled numba-0
                warm.append(mpisgd_start(args.ranks, data, tmp / "numba-0", tmp / f"w{r}"))
    result = {"ranks": args.ranks, "job": JOB, "repeats_cold": n_cold, "repeats_warm": n_warm,
              "cold": summarise(cold), "warm": summarise(warm), "floor_s": stats(floors),
              "runs": {"cold": cold, "warm": warm, "floor": floors}}
    table = markdown(result)
    print(table)
    print(f"\nwrote {write_json('startup', args.quick, result | {'table': table})}")


if __name__ == "__main__":
    main()
