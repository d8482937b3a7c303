"""Run under mpiexec (with a timeout) by test_standardize.py: prepare a job at this world
size for each case and write, from rank 0, what the ranks hold after preparing.

    python standardize_script.py OUT JOB.toml CASES.json

CASES.json is a list of override lists. Case i writes OUT/case-i.npz: the Scaler,
whether every rank (servers too) holds it bit for bit, the standardised rows in memory
(training rows with global ids, held-out rows concatenated in rank order) and the
warnings rank 0 wrote while preparing.
"""

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np

from mpisgd.runtime.paths import set_numba_cache_dir

set_numba_cache_dir()   # before numba is imported, as the command line does

from mpisgd.comm import make_topology  # noqa: E402
from mpisgd.config import load_config  # noqa: E402
from mpisgd.train.prepare import prepare  # noqa: E402


def gathered(comm, ids, rows, d):
    """Rank 0: every rank's (ids, rows), concatenated in rank order."""
    parts = comm.gather((ids, rows), root=0)
    if parts is None:
        return None, None
    return (np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]).reshape(-1, d))


out, job, cases = Path(sys.argv[1]), sys.argv[2], json.loads(Path(sys.argv[3]).read_text())
topo = make_topology()
world = topo.world
for i, overrides in enumerate(cases):
    cfg = load_config(job, overrides, out=str(out / f"run-{i}"))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        ctx = prepare(cfg, topo)
    s, d = ctx.scaler, ctx.n_features
    mine = b"" if s is None else s.mean.tobytes() + s.scale.tobytes()
    every = world.gather(mine, root=0)
    no_rows = np.empty(0, dtype=np.int64)
    if ctx.X is not None:
        train_ids, train_X = gathered(world, ctx.row0 + ctx.train_rows, ctx.X[ctx.train_rows], d)
    else:
        train_ids, train_X = gathered(world, no_rows, np.empty((0, d)), d)
    test_ids, test_X = gathered(world, ctx.row0 + ctx.test_rows, ctx.test_X[ctx.test_rows], d)
    if topo.rank == 0:
        np.savez(out / f"case-{i}.npz", mean=s.mean if s else np.empty(0),
                 scale=s.scale if s else np.empty(0), same=all(e == every[0] for e in every),
                 train_ids=train_ids, train_X=train_X, test_ids=test_ids, test_X=test_X,
                 warnings=stderr.getvalue())
    world.Barrier()
print(f"OK {topo.size}")
