"""Compile (or load from numba's cache) every model's kernels ahead of need.

    NUMBA_CACHE_DIR=... python -m mpisgd.kernels.warm [--reverse] [--models M,N] [DTYPE ...]

A kernel is compiled on its first call with a new signature, a few seconds each for the
parallel ones; with ``cache=True`` the result is kept in ``NUMBA_CACHE_DIR`` for every
later process. The kernels' signatures depend only on the model and the dtype (the mlp's
task and activation are integer codes), so calling each model's loss+gradient and
predict once on a tiny batch per dtype fills the cache for every job. The test suite
runs this in the background at its start, on the core its first launches leave idle.
"""

from __future__ import annotations

import sys

import numpy as np

from mpisgd.kernels import (
    SPEC_MODELS,
    ModelSpec,
    sparse,
    spec_init,
    spec_loss_grad,
    spec_n_params,
    spec_predict,
)
from mpisgd.kernels.finish import finish_mean
from mpisgd.kernels.merge import merge_runs
from mpisgd.kernels.schedule import epoch_schedule

DTYPES = ("float32", "float64")


def _spec(model: str) -> ModelSpec:
    if model == "mlp":
        return ModelSpec("mlp", 3, 3, (4,))
    return ModelSpec(model, 3, {"linear": 0, "logistic": 2, "softmax": 3}[model])


def warm(dtypes=DTYPES, models=SPEC_MODELS) -> list[str]:
    """Call every model's kernels once per dtype; returns what was warmed."""
    done = []
    rng = np.random.default_rng(0)
    for model in models:
        spec = _spec(model)
        for name in dtypes:
            dtype = np.dtype(name)
            X = rng.normal(size=(4, spec.n_features)).astype(dtype)
            y = (X[:, 0].copy() if spec.task == "regression"
                 else np.zeros(4, dtype=np.int64))
            theta = spec_init(spec, dtype, rng)
            grad = np.empty(spec_n_params(spec), dtype=dtype)
            spec_loss_grad(spec, X, y, np.arange(4, dtype=np.int64), theta, grad)
            spec_predict(spec, X, theta)
            finish_mean(grad, 4.0, theta, 0.1, np.ones(grad.size, dtype=bool))
            done.append(f"{model}/{name}")
    # the step schedule: one signature, whatever the model
    epoch_schedule(8, 0, 0, True, 2, 4, 3)
    done.append("schedule")
    return done


def warm_sparse(dtypes=DTYPES) -> list[str]:
    """Call every CSR kernel once per value dtype and index dtype (int32: SciPy's, uint32
    and int64: the CSR shards'): about a hundred signatures, two minutes of compiling
    on a cold cache, which the test suite otherwise pays inside its last tests."""
    done = []
    for name in dtypes:
        dtype = np.dtype(name)
        for index in (np.int32, np.uint32, np.int64):
            X = sparse.CSR(np.array([0, 2, 3], dtype=np.int64),
                           np.array([0, 2, 1], dtype=index),
                           np.ones(3, dtype=dtype), 3)
            idx = np.array([0, 1, 0], dtype=np.int64)
            keys, remap = sparse.unique_keys(X.indptr, X.indices, idx)
            for model, C in (("linear", 1), ("logistic", 1), ("softmax", 3)):
                y = (np.zeros(2, dtype=dtype) if model == "linear"
                     else np.zeros(2, dtype=np.int64))
                theta = np.zeros(C * 4, dtype=dtype)
                w = np.zeros((keys.size, C) if model == "softmax" else keys.size, dtype)
                b = np.zeros(C, dtype=dtype)
                sparse.loss_grad(model, X, y, idx, keys, remap, w, b)
                sparse.loss_grad_theta(model, X, y, idx, theta)
                sparse.loss_grad_dense(model, X, y, idx, theta, np.empty_like(theta))
                sparse.predict(model, X, theta)
                sparse.predict_keys(model, X, idx, keys, remap, w, b)
            done.append(f"sparse/{name}/{np.dtype(index).name}")
        merge_runs(np.array([1, 1], np.int64), np.ones(2, dtype), [1, 1])
    return done


if __name__ == "__main__":   # numba read NUMBA_CACHE_DIR when the package imported it
    # [--reverse] [--models linear,logistic] [float32|float64 ...]; --models: those dense
    # models only (no sparse kernels)
    args = sys.argv[1:]
    models = SPEC_MODELS
    if "--models" in args:
        at = args.index("--models")
        models = tuple(args[at + 1].split(","))
        del args[at:at + 2]
    order = models[::-1] if "--reverse" in args else models
    dtypes = tuple(a for a in args if a != "--reverse") or DTYPES
    sparse_too = models == SPEC_MODELS
    print("warmed:", ", ".join(warm(dtypes, order) + (warm_sparse(dtypes) if sparse_too
                                                       else [])))
