"""``python -m benchmarks [--quick]``: run every benchmark, one after another.

Never two MPI jobs at once: on a small machine they would measure each other.
Results (JSON, and the Markdown each prints) go to benchmarks/results/.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


def main() -> int:
    quick = ["--quick"] if "--quick" in sys.argv[1:] else []
    py = sys.executable
    steps = [
        ("kernels", [py, str(HERE / "kernels.py"), *quick]),
        *[(f"allreduce overhead, {n} ranks",
           [MPIEXEC, "-n", str(n), py, str(HERE / "allreduce_overhead.py"), *quick])
          for n in (2, 4, 8)],
        ("parameter server", [py, str(HERE / "ps.py"), *quick]),
        ("checkpoint", [py, str(HERE / "checkpoint.py"), *quick]),
    ]
    try:  # PyTorch is a benchmark-only reference: compared with when installed
        import torch  # noqa: F401

        steps.append(("MLP vs PyTorch DDP", [py, str(HERE / "mlp_ddp.py"), *quick]))
    except ImportError:
        print("== MLP vs PyTorch DDP: skipped (pip install torch to compare)")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    report = []
    for title, cmd in steps:
        print(f"== {title}: {' '.join(cmd)}", flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, timeout=3600)
        print(out.stdout, flush=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        report.append(f"## {title}\n\n`{' '.join(cmd)}`\n\n{out.stdout}\n")
    (results / "report.md").write_text("\n".join(report))
    print(f"written: {results / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
