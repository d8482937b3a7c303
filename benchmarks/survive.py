"""Going on through a worker's death: the time to finish a parameter-server job when one
worker is killed halfway, against the same job undisturbed (issue 21).

    python benchmarks/survive.py [--quick] [--repeats N]

4 ranks (1 server, 3 workers) on synthetic logistic data; for bsp and asp, each run
undisturbed and with worker rank 3 killed (SIGKILL, ``debug.fail_kind = "kill"``) after
computing the first step of the second half of training, under MPICH's
``-disable-auto-cleanup``. Reported: wall time of training (summary.json
``train_time_s``; medians with the range over repeats, interleaved so that both see
the same machine), the ratio killed / undisturbed measured in one run, the final epoch's
training loss, and how the death was found (detected_by, seconds after it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import MPIEXEC, cell, job_env, stats, write_json  # noqa: E402

N = 4
VICTIM = 3


def job(quick: bool, consistency: str) -> tuple[list[str], int]:
    rows, epochs, batch = (40_000, 2, 400) if quick else (1_000_000, 5, 1000)
    steps = epochs * -(-int(rows * 0.8) // batch)
    args = ["--set", "model.name='logistic'", "--set", "data.synth.kind='logistic'",
            "--set", f"data.synth.rows={rows}", "--set", "data.synth.features=100",
            "--set", f"train.epochs={epochs}", "--set", f"train.batch_size={batch}",
            "--set", "mode='ps'", "--set", f"ps.consistency='{consistency}'",
            "--set", "ps.on_worker_failure='continue'", "--set", "output.progress='none'"]
    return args, steps


def run(args: list[str], out: Path) -> dict:
    cmd = [MPIEXEC, "-disable-auto-cleanup", "-n", str(N), sys.executable, "-m", "mpisgd",
           *args, "--out", str(out), "--overwrite"]
    subprocess.run(cmd, cwd=ROOT, timeout=900, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=job_env())
    summary = json.loads((out / "summary.json").read_text())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    summary["last_loss"] = [x for x in lines if "train_loss" in x][-1]["train_loss"]
    return summary


def measure(quick: bool, repeats: int, consistency: str, tmp: Path) -> dict:
    args, steps = job(quick, consistency)
    kill = args + ["--set", f"debug.fail_rank={VICTIM}", "--set", f"debug.fail_step={steps // 2}",
                   "--set", "debug.fail_kind='kill'"]
    whole, killed, ratios, deaths = [], [], [], []
    run(args, tmp / "warm")   # compile caches and data generation out of the figures
    for r in range(repeats):
        a = run(args, tmp / f"a{r}")
        b = run(kill, tmp / f"b{r}")
        whole.append(a["train_time_s"])
        killed.append(b["train_time_s"])
        ratios.append(b["train_time_s"] / a["train_time_s"])
        deaths.append(b["failures"]["dead_workers"][0])
    return {"consistency": consistency, "steps": steps, "undisturbed_s": stats(whole),
            "killed_s": stats(killed), "ratio": stats(ratios),
            "loss_undisturbed": a["last_loss"], "loss_killed": b["last_loss"],
            "deaths": deaths}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as d:
        for consistency in ("bsp", "asp"):
            rows.append(measure(args.quick, args.repeats, consistency, Path(d)))
    print("| ps | steps | undisturbed s | worker 3 killed halfway s | killed / undisturbed "
          "| last epoch loss (undisturbed, killed) | found by, dropped |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        d = r["deaths"][0]
        print(f"| {r['consistency']} | {r['steps']} | {cell(r['undisturbed_s'], '.2f')} | "
              f"{cell(r['killed_s'], '.2f')} | {cell(r['ratio'], '.2f')} | "
              f"{r['loss_undisturbed']:.4f}, {r['loss_killed']:.4f} | "
              f"{d['detected_by']}, {d['notice_to_drop_s']:.3f} s after its notice |")
    path = write_json("survive", args.quick, {"n": N, "repeats": args.repeats, "rows": rows})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
