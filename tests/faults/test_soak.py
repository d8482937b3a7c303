"""The soak: the default job 20 times in a row at 8 ranks in each mode (`make soak`).

Every run must end with exit 0 and leave no process behind; synchronous modes must give
bitwise the same parameters every time, asynchronous ones the same quality within a
tolerance. Not part of `make test` (about 15 minutes on 2 cores): marked ``soak``.
"""

from __future__ import annotations

import json
import os
import time

import h5py
import numpy as np
import pytest
from launch.datasets import sets
from launch.procs import wait_gone

RUNS = int(os.environ.get("MPISGD_SOAK_RUNS", "20"))
MODES = {
    "ar-flat": sets("comm.allreduce='flat'"),
    "ar-hier": sets("comm.allreduce='hierarchical'", "topology.ranks_per_node=4"),
    "ps-bsp": sets("mode='ps'"),
    "ps-asp": sets("mode='ps'", "ps.consistency='asp'"),
    "ps-ssp": sets("mode='ps'", "ps.consistency='ssp'"),
}
SYNC = {"ar-flat", "ar-hier", "ps-bsp"}


@pytest.mark.soak
@pytest.mark.timeout(RUNS * 120)
@pytest.mark.parametrize("mode", list(MODES))
def test_default_job_soak(launch, tmp_path, mode):
    thetas, mses, times = [], [], []
    for i in range(RUNS):
        out = tmp_path / f"run{i}"
        t0 = time.monotonic()
        r = launch(8, MODES[mode] + ["--out", str(out)], timeout=120, fresh=True)
        times.append(time.monotonic() - t0)
        assert r.returncode == 0, f"run {i}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        assert wait_gone(str(out), timeout=10) == [], f"run {i} left processes behind"
        with h5py.File(out / "model.h5", "r") as f:
            thetas.append(f["theta"][...])
        mses.append(json.loads((out / "summary.json").read_text())["test"]["mse"])
    if mode in SYNC:
        assert all(t.tobytes() == thetas[0].tobytes() for t in thetas), \
            f"{mode}: runs differ; test mse {mses}"
    else:
        median = float(np.median(mses))
        assert all(abs(m - median) <= 0.05 * median for m in mses), (mode, mses)
    print(f"\nsoak {mode}: {RUNS} runs, all exit 0, none left processes; test mse "
          f"{min(mses):.6g}..{max(mses):.6g}; run time median {np.median(times):.1f} s, "
          f"max {max(times):.1f} s")
