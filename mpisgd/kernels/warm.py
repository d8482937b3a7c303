"""Compile (or load from numba's cache) every model's kernels ahead of need.

    NUMBA_CACHE_DIR=... python -m mpisgd.kernels.warm [--reverse] [float32|float64 ...]

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
    spec_init,
    spec_loss_grad,
    spec_n_params,
    spec_predict,
)
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
            done.append(f"{model}/{name}")
    # the step schedule: one signature, whatever the model
    epoch_schedule(8, 0, 0, True, 2, 4, 3)
    done.append("schedule")
    return done


if __name__ == "__main__":   # numba read NUMBA_CACHE_DIR when the package imported it
    args = sys.argv[1:]
    order = SPEC_MODELS[::-1] if "--reverse" in args else SPEC_MODELS
    dtypes = tuple(a for a in args if a != "--reverse") or DTYPES
    print("warmed:", ", ".join(warm(dtypes, order)))
