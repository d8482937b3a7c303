"""The exact optimum of a linear least-squares (ridge) job, computed distributedly.

Each rank accumulates A^T A and A^T y over its training rows (A = [X, 1]) in float64,
in bounded blocks; one Allreduce sums them; rank 0 solves the normal equations of the
training objective  mean(0.5 (a.theta - y)^2) + 0.5 l2 |w|^2,  i.e.
(A^T A + n l2 D) theta = A^T y  with D the identity on weights and 0 on the bias,
and broadcasts theta. Only for d up to MAX_FEATURES (the (d+1)^2 matrix).
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from mpisgd.comm import bcast_value
from mpisgd.context import Context
from mpisgd.errors import ConfigError

MAX_FEATURES = 4096
_BLOCK = 65536


def available(ctx: Context) -> bool:
    m = ctx.cfg.model
    # Storage placement keeps no training rows in memory to build the normal equations.
    return (ctx.model == "linear" and ctx.n_features <= MAX_FEATURES and not m.l1
            and ctx.X is not None and not ctx.sparse)


def solve(ctx: Context) -> np.ndarray:
    """Collective over the world: the ridge/least-squares optimum as a flat theta."""
    if ctx.model != "linear" or ctx.cfg.model.l1:
        raise ConfigError("the oracle solves linear least squares (optionally ridge); "
                          f"model '{ctx.model}' with l1 = {ctx.cfg.model.l1} has no closed form.",
                          agreed=True)
    if ctx.n_features > MAX_FEATURES:
        raise ConfigError(f"the oracle forms a {ctx.n_features + 1}-square matrix; it is "
                          f"limited to {MAX_FEATURES} features.", agreed=True)
    d = ctx.n_features
    gram = np.zeros((d + 1) * (d + 1) + (d + 1))
    ata = gram[:(d + 1) * (d + 1)].reshape(d + 1, d + 1)
    aty = gram[(d + 1) * (d + 1):]
    rows = ctx.train_rows
    for start in range(0, rows.size, _BLOCK):
        idx = rows[start:start + _BLOCK]
        A = np.empty((idx.size, d + 1))
        A[:, :d] = ctx.X[idx]
        A[:, d] = 1.0
        ata += A.T @ A
        aty += A.T @ ctx.y[idx].astype(np.float64)
    ctx.topo.world.Allreduce(MPI.IN_PLACE, gram)

    def normal_equations():
        reg = np.full(d + 1, ctx.n_train * ctx.cfg.model.l2)
        reg[d] = 0.0
        return np.linalg.solve(ata + np.diag(reg), aty)

    theta = bcast_value(ctx.topo.world, normal_equations)
    return theta.astype(ctx.dtype)
