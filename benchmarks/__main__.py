"""``python -m benchmarks [--quick]``: run every benchmark, one after another.

Never two MPI jobs at once: on a small machine they would measure each other.
Results (JSON, the Markdown each prints, and PNG figures when matplotlib is installed)
go to benchmarks/results/; a --quick run writes ``*_quick.*`` files, never replacing
the results of a full one. The scaling model and the figures come last: they read the
results the others wrote.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


def mpi(n: int, script: str, quick: list[str]) -> list[str]:
    """``mpiexec -n N python -m mpi4py SCRIPT``: an exception on one rank aborts the job
    instead of leaving the others waiting for it in a collective."""
    return [MPIEXEC, "-n", str(n), sys.executable, "-m", "mpi4py", str(HERE / script), *quick]


def steps(quick: list[str]) -> list[tuple[str, list[str]]]:
    py = sys.executable
    out = [
        ("kernels", [py, str(HERE / "kernels.py"), *quick]),
        *[(f"allreduce overhead, {n} ranks", mpi(n, "allreduce_overhead.py", quick))
          for n in (2, 4, 8)],
        *[(f"shared-memory reduction, {n} ranks", mpi(n, "shm_reduce.py", quick))
          for n in (2, 4, 8)],
        ("parameter server", [py, str(HERE / "ps.py"), *quick]),
        ("checkpoint", [py, str(HERE / "checkpoint.py"), *quick]),
    ]
    try:  # PyTorch is a benchmark-only reference: compared with when installed
        import torch  # noqa: F401

        out.append(("MLP vs PyTorch DDP", [py, str(HERE / "mlp_ddp.py"), *quick]))
    except ImportError:
        print("== MLP vs PyTorch DDP: skipped (pip install torch to compare)")
    return out + [
        ("gradient compression", [py, str(HERE / "compression.py"), *quick]),
        ("data placement", [py, str(HERE / "placement.py"), *quick]),
        ("end to end: logistic regression", [py, str(HERE / "end_to_end.py"), *quick]),
        ("start-up", [py, str(HERE / "startup.py"), *quick]),
        ("sparse logistic regression", [py, str(HERE / "sparse.py"), *quick]),
        ("sparse step profile", [py, str(HERE / "sparse_profile.py"), *quick]),
        ("going on through a worker's death", [py, str(HERE / "survive.py"), *quick]),
        ("scaling model", [py, str(HERE / "scaling_model.py"), *quick]),
        ("figures", [py, str(HERE / "plots.py"), *quick]),
    ]


def main() -> int:
    quick = ["--quick"] if "--quick" in sys.argv[1:] else []
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    report = []
    for title, cmd in steps(quick):
        print(f"== {title}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, timeout=3600)
        print(out.stdout, flush=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        report.append(f"## {title}\n\n`{' '.join(cmd)}` ({time.perf_counter() - t0:.0f} s)"
                      f"\n\n{out.stdout}\n")
    figures = sorted(p.name for p in results.glob(f"*{'_quick' if quick else ''}.png")
                     if quick or not p.stem.endswith("_quick"))
    report.append("## Figures\n\n" + "\n".join(f"![{f}]({f})" for f in figures) + "\n")
    path = results / f"report{'_quick' if quick else ''}.md"
    path.write_text("\n".join(report))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
