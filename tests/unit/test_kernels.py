"""mpisgd.kernels against slow NumPy references: values, gradients, determinism, validation."""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import mpisgd.kernels as K
from mpisgd.errors import ConfigError, DataError
from mpisgd.kernels.vmath import exp_nonpos, log1p_unit

DTYPES = (np.float32, np.float64)
RTOL = {np.float32: 1e-4, np.float64: 1e-10}
N_CLASSES = {"linear": 0, "logistic": 2, "softmax": 3}


# ----------------------------------------------------------------------------- references
def ref_loss_grad(model, X, y, idx, theta):
    """Loss sum and gradient sum over rows idx, in float64, written the obvious way."""
    X = X[idx].astype(np.float64)
    y = y[idx]
    t = theta.astype(np.float64)
    d = X.shape[1]
    if model == "softmax":
        C = t.size // (d + 1)
        W, b = t[: C * d].reshape(C, d), t[C * d :]
        Z = X @ W.T + b
        Z = Z - Z.max(axis=1, keepdims=True) if len(Z) else Z
        lse = np.log(np.exp(Z).sum(axis=1))
        rows = np.arange(len(y))
        R = np.exp(Z - lse[:, None])
        R[rows, y] -= 1.0
        return (lse - Z[rows, y]).sum(), np.concatenate([(R.T @ X).ravel(), R.sum(axis=0)])
    z = X @ t[:d] + t[d]
    if model == "linear":
        r = z - y
        loss = 0.5 * (r * r).sum()
    else:
        loss = (np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0.0) - y * z).sum()
        with np.errstate(over="ignore"):  # exp(-z) = inf gives the correct limit 0
            r = 1.0 / (1.0 + np.exp(-z)) - y
    return loss, np.concatenate([X.T @ r, [r.sum()]])


def ref_predict(model, X, theta):
    X, t = X.astype(np.float64), theta.astype(np.float64)
    d = X.shape[1]
    if model == "softmax":
        C = t.size // (d + 1)
        Z = X @ t[: C * d].reshape(C, d).T + t[C * d :]
        E = np.exp(Z - Z.max(axis=1, keepdims=True))
        return E / E.sum(axis=1, keepdims=True)
    z = X @ t[:d] + t[d]
    return z if model == "linear" else 1.0 / (1.0 + np.exp(-z))


def make_problem(model, dtype, n=600, d=7, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    C = N_CLASSES[model]
    y = rng.standard_normal(n).astype(dtype) if model == "linear" else rng.integers(0, C, n)
    theta = (scale * rng.standard_normal(K.n_params(model, d, C))).astype(dtype)
    return X, y, theta


def run(model, X, y, idx, theta):
    grad = np.full_like(theta, np.nan)  # garbage: the kernel must overwrite, not add
    return K.loss_grad(model, X, y, idx, theta, grad), grad


# ----------------------------------------------------------------------------- values
IDX_CASES = {
    "all": lambda n, rng: np.arange(n),
    "reversed": lambda n, rng: np.arange(n)[::-1],  # a strided view: must be made contiguous
    "repeats": lambda n, rng: rng.integers(0, n, 2 * n),
    "subset": lambda n, rng: rng.choice(n, 37, replace=False),
    "one": lambda n, rng: np.array([5]),
    "empty": lambda n, rng: np.array([], dtype=np.int64),
    "list": lambda n, rng: [3, 1, 3],
}


@pytest.mark.parametrize("model", K.MODELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", IDX_CASES)
def test_loss_grad_matches_reference(model, dtype, case):
    X, y, theta = make_problem(model, dtype, n=5000)  # several blocks, chunks and 4-row tails
    idx = IDX_CASES[case](len(X), np.random.default_rng(1))
    loss, grad = run(model, X, y, idx, theta)
    ref_loss, ref_grad = ref_loss_grad(model, X, y, np.asarray(idx, dtype=np.int64), theta)
    assert isinstance(loss, float)
    assert grad.dtype == dtype
    rtol = RTOL[dtype]
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=rtol)
    atol = rtol * max(1.0, np.abs(ref_grad).max())
    np.testing.assert_allclose(grad, ref_grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("model", K.MODELS)
def test_empty_idx_gives_zero(model):
    X, y, theta = make_problem(model, np.float64, n=10)
    loss, grad = run(model, X, y, [], theta)
    assert loss == 0.0 and not grad.any()


@pytest.mark.parametrize("model", K.MODELS)
def test_finite_differences(model):
    X, y, theta = make_problem(model, np.float64, n=50, d=4, seed=3)
    idx = np.arange(len(X))
    _, grad = run(model, X, y, idx, theta)
    h = 1e-6
    fd = np.empty_like(theta)
    for k in range(theta.size):
        tp, tm = theta.copy(), theta.copy()
        tp[k] += h
        tm[k] -= h
        fd[k] = (run(model, X, y, idx, tp)[0] - run(model, X, y, idx, tm)[0]) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


@pytest.mark.parametrize("model", ["logistic", "softmax"])
def test_extreme_logits_stay_finite(model):
    X, y, theta = make_problem(model, np.float64, n=40, scale=400.0)  # |logits| ~ 1000
    loss, grad = run(model, X, y, np.arange(40), theta)
    ref_loss, ref_grad = ref_loss_grad(model, X, y, np.arange(40), theta)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-10 * np.abs(ref_grad).max())


@pytest.mark.parametrize("model", K.MODELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_is_not_hidden(model, dtype):
    X, y, theta = make_problem(model, dtype, n=300)
    X[17, 2] = np.nan
    loss, grad = run(model, X, y, np.arange(300), theta)
    assert np.isnan(loss) and np.isnan(grad).any()


# ----------------------------------------------------------------------------- determinism
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
@pytest.mark.parametrize("model", K.MODELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_across_thread_counts(model, dtype, by_thread_count):
    X, y, theta = make_problem(model, dtype, n=20_000, d=13)  # 10 blocks
    idx = np.random.default_rng(2).integers(0, len(X), 15_000)

    def once():
        loss, grad = run(model, X, y, idx, theta)
        return loss, grad.tobytes()

    results = by_thread_count(once)
    assert results[1][0] == results[1][1] == results[2][0]


def test_block_split_covers_rows_once():
    from mpisgd.kernels.options import MAX_BLOCKS, block_range, n_blocks

    assert n_blocks(0, 10) == 1 and n_blocks(10**7, 10) == MAX_BLOCKS
    assert n_blocks(10**7, 10**6) == 8  # the float64 block buffer stays <= 64 MiB
    for m in (0, 1, 2047, 2049, 10**6 + 3):
        nb = n_blocks(m, 10)
        bounds = [block_range(m, nb, k) for k in range(nb)]
        assert bounds[0][0] == 0 and bounds[-1][1] == m
        assert all(bounds[k][1] == bounds[k + 1][0] for k in range(nb - 1))


# ----------------------------------------------------------------------------- predict
@pytest.mark.parametrize("model", K.MODELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_predict_matches_reference(model, dtype):
    X, _, theta = make_problem(model, dtype, n=5000)
    out = K.predict(model, X, theta)
    ref = ref_predict(model, X, theta)
    assert out.dtype == dtype and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=RTOL[dtype], atol=RTOL[dtype])
    if model == "softmax":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=RTOL[dtype])


# ----------------------------------------------------------------------------- layout helpers
def test_n_params_and_l2_mask():
    assert K.n_params("linear", 5, 0) == K.n_params("logistic", 5, 2) == 6
    assert K.n_params("softmax", 5, 4) == 24
    assert K.l2_mask("logistic", 3, 2).tolist() == [True, True, True, False]
    mask = K.l2_mask("softmax", 2, 3)
    assert mask.tolist() == [True] * 6 + [False] * 3
    assert set(K.TASK_OF) == set(K.MODELS)


def test_weights_are_views():
    theta = np.arange(9.0)
    W, b = K.weights("softmax", theta, 2, 3)
    assert W.shape == (3, 2) and b.shape == (3,)
    W[1, 0] = -1.0
    assert theta[2] == -1.0 and b.tolist() == [6.0, 7.0, 8.0]
    w, b = K.weights("linear", theta[:4], 3, 0)
    assert w.shape == (3,) and b.shape == () and float(b) == 3.0
    b[...] = 5.0
    assert theta[3] == 5.0


def test_init_params():
    theta = K.init_params("softmax", 4, 3, np.float32, np.random.default_rng(0))
    assert theta.dtype == np.float32 and theta.shape == (15,) and not theta.any()
    with pytest.raises(TypeError, match="dtype"):
        K.init_params("linear", 4, 0, np.int32, np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        K.init_params("linear", 4, 0, np.float64, 0)


@pytest.mark.parametrize(
    "model, n_features, n_classes",
    [("ridge", 3, 0), ("linear", 3, 2), ("logistic", 3, 3), ("softmax", 3, 1), ("linear", 0, 0),
     ("softmax", 3, 2.0)],
)
def test_bad_sizes_raise_config_error(model, n_features, n_classes):
    with pytest.raises(ConfigError):
        K.n_params(model, n_features, n_classes)


# ----------------------------------------------------------------------------- validation
def _valid(model="softmax", dtype=np.float64):
    X, y, theta = make_problem(model, dtype, n=20)
    return dict(X=X, y=y, idx=np.arange(20), theta=theta, grad_out=np.empty_like(theta))


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda a: a.update(X=a["X"].astype(np.int64)), TypeError, "'X'.*dtype"),
        (lambda a: a.update(X=a["X"].tolist()), TypeError, "'X'.*numpy array"),
        (lambda a: a.update(X=np.asfortranarray(a["X"])), ValueError, "'X'.*C-contiguous"),
        (lambda a: a.update(X=a["X"][:, ::2]), ValueError, "'X'.*C-contiguous"),
        (lambda a: a.update(theta=a["theta"].astype(np.float32)), TypeError, "'theta'.*dtype"),
        (lambda a: a.update(theta=a["theta"][:-1], grad_out=a["grad_out"][:-1]), ValueError,
         "'theta'.*size"),
        (lambda a: a.update(grad_out=np.empty(3)), ValueError, "'grad_out'"),
        (lambda a: a.update(y=a["y"].astype(np.int32)), TypeError, "'y'"),
        (lambda a: a.update(y=a["y"][:5]), ValueError, "'y'.*shape"),
        (lambda a: a.update(idx=np.array([0, 20])), ValueError, r"idx\[1\] = 20"),
        (lambda a: a.update(idx=np.array([-1])), ValueError, "'idx'"),
        (lambda a: a.update(idx=np.array([0.5])), TypeError, "'idx'"),
        (lambda a: a["y"].__setitem__(4, 3), DataError, r"y\[4\] = 3"),
    ],
)
def test_loss_grad_validation(change, error, match):
    args = _valid()
    change(args)
    with pytest.raises(error, match=match):
        K.loss_grad("softmax", **args)


def test_validation_other_models():
    args = _valid("logistic")
    args["y"][0] = 2
    with pytest.raises(DataError):
        K.loss_grad("logistic", **args)
    args = _valid("linear")
    with pytest.raises(TypeError, match="'y'"):
        K.loss_grad("linear", **dict(args, y=args["y"].astype(np.float32)))
    with pytest.raises(ValueError, match="size"):
        K.loss_grad("linear", **dict(args, theta=np.zeros(3), grad_out=np.zeros(3)))
    with pytest.raises(ConfigError):
        K.loss_grad("lasso", **args)
    with pytest.raises(ValueError, match="size"):
        K.predict("softmax", args["X"], np.zeros(args["X"].shape[1] + 1))


def test_a_cold_cache_is_announced_before_compiling(tmp_path):
    """In a process whose numba cache is empty, compile_notice names the model and an
    estimate; once numba's index file for the kernel exists, it says nothing."""
    script = (
        "import os, sys\n"
        "from mpisgd import kernels\n"
        "from mpisgd.models import ModelSpec\n"
        "spec = ModelSpec('softmax', 3, 4)\n"
        "print(kernels.compile_notice(spec))\n"
        "path = kernels._LOSS_GRAD['softmax']._cache._cache_file._index_path\n"
        "os.makedirs(os.path.dirname(path), exist_ok=True)\n"
        "open(path, 'wb').close()\n"
        "print(kernels.compile_notice(spec))\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.splitlines()
    assert out[0].startswith("mpisgd: compiling the softmax kernels") and "about 8 s" in out[0]
    assert str(tmp_path) in out[0]
    assert out[1] == "None"


def test_kernels_load_without_scipy_linalg():
    """numba's BLAS check (an import of scipy.linalg, 0.2-0.3 s per rank) is skipped:
    no mpisgd kernel calls BLAS from numba code; scipy.linalg still imports after."""
    code = ("import sys, numpy as np\n"
            "from mpisgd import kernels\n"
            "from mpisgd.models import ModelSpec\n"
            "X = np.ones((8, 3), np.float32); y = np.zeros(8, np.int64)\n"
            "f = kernels.BoundLossGrad(ModelSpec('logistic', 3, 2), X, y)\n"
            "g = np.zeros(4, np.float32)\n"
            "f(np.arange(8, dtype=np.int64), np.zeros(4, np.float32), g)\n"
            "assert 'scipy.linalg' not in sys.modules\n"
            "assert abs(g[0] - 4.0) < 1e-6, g\n"   # 8 rows of sigmoid(0) - 0 = 0.5 each
            "import scipy.linalg\n"
            "print('OK')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr


def test_vectorised_exp_and_log1p_match_numpy():
    """kernels.vmath against NumPy's C-library exp/log1p over the logistic kernel's range
    (arguments <= 0), tiny values and the clamp: within 1 and 4 ulps."""
    rng = np.random.default_rng(3)
    x = -np.concatenate([np.abs(rng.standard_normal(20000) * 10), rng.uniform(0, 700, 20000),
                         np.linspace(0, 1e-8, 100), [0.0, 1e-300]])
    out, bits = np.empty_like(x), np.empty(x.size, np.int64)
    exp_nonpos(x, out, bits)
    ref = np.exp(x)
    assert np.max(np.abs(out - ref) / np.spacing(ref)) <= 1.0
    logs = np.array([log1p_unit(v) for v in out[::50]])
    lref = np.log1p(out[::50])
    ok = lref > 0
    assert np.max(np.abs(logs - lref)[ok] / np.spacing(lref[ok])) <= 4.0
    assert log1p_unit(0.0) == 0.0 and abs(log1p_unit(1.0) - np.log(2.0)) <= 2e-16
    clamped = np.empty(2)
    exp_nonpos(np.array([-745.0, -1e4]), clamped, np.empty(2, np.int64))
    assert np.all((clamped > 0) & (clamped <= 2.3e-308))
