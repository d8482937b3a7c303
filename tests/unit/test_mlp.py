"""The mlp kernels against finite differences and a NumPy reference; determinism; init; digits.

The kernels compile once per X dtype (~10-20 s each without a numba cache); the tests are
arranged so that float64 and float32 loss_grad and predict are all they need.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import mpisgd.kernels as K
from mpisgd.errors import ConfigError, DataError
from mpisgd.kernels import mlp
from mpisgd.runtime.launch_env import BLAS_THREAD_VARS

DTYPES = (np.float32, np.float64)
RTOL = {np.float32: 1e-4, np.float64: 1e-10}
HEADS = {"regression": 0, "binary": 2, "multiclass": 3}
HIDDEN = {1: (7,), 2: (6, 5), 3: (5, 6, 4)}


# ----------------------------------------------------------------------------- reference
def _act(z, activation):
    return np.maximum(z, 0.0) if activation == "relu" else np.tanh(z)


def _act_grad(h, activation):
    return (h > 0).astype(np.float64) if activation == "relu" else 1.0 - h * h


def ref_forward(spec, X, theta):
    """Activations [X, H_1, ..., H_L] and output logits (n, out), float64."""
    layers = K.spec_weights(spec, theta.astype(np.float64))
    A = [X.astype(np.float64)]
    for W, b in layers[:-1]:
        A.append(_act(A[-1] @ W.T + b, spec.activation))
    W, b = layers[-1]
    return A, A[-1] @ W.T + b


def ref_loss_grad(spec, X, y, idx, theta):
    """Loss sum and flat gradient sum over rows idx: textbook back-propagation in float64."""
    A, Z = ref_forward(spec, X[idx], theta)
    y = y[idx]
    if spec.task == "regression":
        r = Z[:, 0] - y
        loss, D = 0.5 * (r * r).sum(), r[:, None]
    elif spec.task == "binary":
        z = Z[:, 0]
        loss = (np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0.0) - y * z).sum()
        with np.errstate(over="ignore"):  # exp(-z) = inf gives the correct limit 0
            D = (1.0 / (1.0 + np.exp(-z)) - y)[:, None]
    else:
        Zs = Z - Z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(Zs).sum(axis=1))
        rows = np.arange(len(y))
        loss = (lse - Zs[rows, y]).sum()
        D = np.exp(Zs - lse[:, None])
        D[rows, y] -= 1.0
    layers = K.spec_weights(spec, theta.astype(np.float64))
    parts = []
    for l in range(len(layers) - 1, -1, -1):
        parts[:0] = [(D.T @ A[l]).ravel(), D.sum(axis=0)]
        if l > 0:
            D = (D @ layers[l][0]) * _act_grad(A[l], spec.activation)
    return loss, np.concatenate(parts)


def ref_predict(spec, X, theta):
    _, Z = ref_forward(spec, X, theta)
    if spec.task == "regression":
        return Z[:, 0]
    if spec.task == "binary":
        return 1.0 / (1.0 + np.exp(-Z[:, 0]))
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def make_problem(task, dtype, hidden=(6, 5), activation="tanh", n=600, d=7, seed=0):
    spec = K.ModelSpec("mlp", d, HEADS[task], hidden, activation)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = rng.standard_normal(n).astype(dtype) if task == "regression" else \
        rng.integers(0, max(spec.n_classes, 1), n)
    theta = K.spec_init(spec, dtype, rng)
    theta += (0.1 * rng.standard_normal(theta.size)).astype(dtype)  # non-zero biases too
    return spec, X, y, theta


def run(spec, X, y, idx, theta):
    grad = np.full_like(theta, np.nan)  # garbage: the kernel must overwrite, not add
    return K.spec_loss_grad(spec, X, y, idx, theta, grad), grad


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("task", HEADS)
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_finite_differences(task, activation, layers):
    spec, X, y, theta = make_problem(task, np.float64, HIDDEN[layers], activation, n=40, d=4,
                                     seed=layers)
    idx = np.arange(len(X))
    _, grad = run(spec, X, y, idx, theta)
    h = 1e-6
    fd = np.empty_like(theta)
    for k in range(theta.size):
        tp, tm = theta.copy(), theta.copy()
        tp[k] += h
        tm[k] -= h
        fd[k] = (run(spec, X, y, idx, tp)[0] - run(spec, X, y, idx, tm)[0]) / (2 * h)
    rel = np.linalg.norm(grad - fd) / np.linalg.norm(fd)
    assert rel < 1e-6, f"relative error {rel:.3g}"
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


IDX_CASES = {
    "all": lambda n, rng: np.arange(n),
    "reversed": lambda n, rng: np.arange(n)[::-1],  # strided: must be made contiguous
    "repeats": lambda n, rng: rng.integers(0, n, 2 * n),
    "subset": lambda n, rng: rng.choice(n, 37, replace=False),  # a 1-row chunk tail
    "one": lambda n, rng: np.array([5]),
}


@pytest.mark.parametrize("task", HEADS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", IDX_CASES)
def test_loss_grad_matches_reference(task, dtype, case):
    hidden, activation = ((6, 5), "tanh") if case != "all" else ((9, 4, 6), "relu")
    spec, X, y, theta = make_problem(task, dtype, hidden, activation, n=1500)  # 6 blocks
    idx = IDX_CASES[case](len(X), np.random.default_rng(1))
    loss, grad = run(spec, X, y, idx, theta)
    ref_loss, ref_grad = ref_loss_grad(spec, X, y, np.asarray(idx), theta)
    assert isinstance(loss, float) and grad.dtype == dtype
    rtol = RTOL[dtype]
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(grad, ref_grad, rtol=rtol, atol=rtol * np.abs(ref_grad).max())


@pytest.mark.parametrize("task", HEADS)
def test_empty_idx_gives_zero(task):
    spec, X, y, theta = make_problem(task, np.float64, n=10)
    loss, grad = run(spec, X, y, np.array([], dtype=np.int64), theta)
    assert loss == 0.0 and not grad.any()


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_is_not_hidden(activation, dtype):
    spec, X, y, theta = make_problem("multiclass", dtype, activation=activation, n=300)
    X[17, 2] = np.nan  # relu must not clip the NaN to 0
    loss, grad = run(spec, X, y, np.arange(300), theta)
    assert np.isnan(loss) and np.isnan(grad).any()


def test_extreme_logits_stay_finite():
    for task in ("binary", "multiclass"):
        spec, X, y, theta = make_problem(task, np.float64, n=40)
        W, b = K.spec_weights(spec, theta)[-1]
        W *= 1e3  # |logits| ~ 1000
        loss, grad = run(spec, X, y, np.arange(40), theta)
        ref_loss, ref_grad = ref_loss_grad(spec, X, y, np.arange(40), theta)
        assert np.isfinite(loss) and np.isfinite(grad).all()
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-10)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-10 * np.abs(ref_grad).max())


# ----------------------------------------------------------------------------- determinism
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_across_thread_counts(dtype, by_thread_count):
    spec, X, y, theta = make_problem("multiclass", dtype, (16, 8), "relu", n=5000, d=13)
    idx = np.random.default_rng(2).integers(0, len(X), 3000)  # 12 blocks

    def once():
        loss, grad = run(spec, X, y, idx, theta)
        return loss, grad.tobytes()

    results = by_thread_count(once)
    assert results[1][0] == results[1][1] == results[2][0]


_BLAS_SCRIPT = """
import hashlib, sys
import numpy as np
import mpisgd.kernels as K
from mpisgd.kernels import mlp
sys.path.insert(0, {tests!r})
from test_mlp import make_problem
for dtype in (np.float32, np.float64):
    spec, X, y, theta = make_problem("multiclass", dtype, (96, 64), "relu", n=5000, d=40)
    idx = np.random.default_rng(2).integers(0, len(X), 3000)
    grad = np.empty_like(theta)
    loss = K.spec_loss_grad(spec, X, y, idx, theta, grad)
    print(repr(loss), hashlib.sha1(grad.tobytes()).hexdigest())
"""


@pytest.mark.parametrize("threads", ["2", "3"])
def test_bitwise_identical_across_blas_thread_counts(threads):
    """The training pass's matrix products go through NumPy's BLAS, whose thread count
    mpisgd sets per rank: the gradient must not change a bit with it."""
    script = _BLAS_SCRIPT.format(tests=str(Path(__file__).parent))
    out = {}
    for n in ("1", threads):
        env = {**os.environ, **{v: n for v in BLAS_THREAD_VARS}}
        out[n] = subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                capture_output=True, text=True, timeout=120).stdout
    assert out["1"] == out[threads] and out["1"].count("\n") == 2, out


# ----------------------------------------------------------------------------- predict
@pytest.mark.parametrize("task", HEADS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_predict_matches_reference(task, dtype):
    spec, X, _, theta = make_problem(task, dtype, n=700)
    out = K.spec_predict(spec, X, theta)
    ref = ref_predict(spec, X, theta)
    assert out.dtype == dtype and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=RTOL[dtype], atol=RTOL[dtype])


# ----------------------------------------------------------------------------- init, layout
def test_init_is_deterministic_and_scaled():
    spec = K.ModelSpec("mlp", 30, 4, [50, 20], "relu")
    a = K.spec_init(spec, np.float64, np.random.default_rng(7))
    b = K.spec_init(spec, np.float64, np.random.default_rng(7))
    c = K.spec_init(spec, np.float64, np.random.default_rng(8))
    f = K.spec_init(spec, np.float32, np.random.default_rng(7))
    assert a.tobytes() == b.tobytes() and not np.array_equal(a, c)
    assert f.dtype == np.float32 and np.array_equal(f, a.astype(np.float32))
    (W0, b0), (W1, b1), (W2, b2) = K.spec_weights(spec, a)
    assert not (b0.any() or b1.any() or b2.any())
    for W, limit in [(W0, np.sqrt(6 / 30)), (W1, np.sqrt(6 / 50)), (W2, np.sqrt(6 / 24))]:
        assert np.abs(W).max() <= limit and np.abs(W).max() > 0.9 * limit  # He, He, Glorot
    tanh = K.ModelSpec("mlp", 30, 4, [50], "tanh")
    W0 = K.spec_weights(tanh, K.spec_init(tanh, np.float64, np.random.default_rng(0)))[0][0]
    assert 0.9 * np.sqrt(6 / 80) < np.abs(W0).max() <= np.sqrt(6 / 80)  # Glorot
    rng = np.random.default_rng(3)
    K.spec_init(K.ModelSpec("softmax", 3, 3), np.float64, rng)  # convex: zeros, rng untouched
    assert rng.random() == np.random.default_rng(3).random()


def test_layout_views_and_l2_mask():
    spec = K.ModelSpec("mlp", 3, 0, (4, 2))
    assert spec.task == "regression" and spec.sizes == (3, 4, 2, 1)
    assert K.spec_n_params(spec) == 4 * 4 + 2 * 5 + 1 * 3
    theta = np.arange(K.spec_n_params(spec), dtype=np.float64)
    (W0, b0), (W1, b1), (W2, b2) = K.spec_weights(spec, theta)
    assert W0.shape == (4, 3) and W0[1, 0] == 3 and b0.tolist() == [12, 13, 14, 15]
    assert W1.shape == (2, 4) and W1[0, 0] == 16 and b2.tolist() == [28]
    W1[0, 0] = -1
    assert theta[16] == -1
    mask = K.spec_l2_mask(spec)
    assert mask.sum() == 12 + 8 + 2 and not mask[12:16].any() and not mask[-1]
    assert K.ModelSpec("mlp", 3, 2, (4,)).n_outputs == 1
    assert K.ModelSpec("mlp", 3, 2, (4,), task="multiclass").n_outputs == 2
    assert K.ModelSpec("mlp", 3, 5, (4,)).task == "multiclass"


def test_spec_of_convex_models_matches_the_name_api():
    X = np.random.default_rng(0).standard_normal((20, 3))
    y = np.random.default_rng(1).integers(0, 3, 20)
    spec = K.ModelSpec("softmax", 3, 3)
    theta = np.random.default_rng(2).standard_normal(K.spec_n_params(spec))
    g1, g2 = np.empty_like(theta), np.empty_like(theta)
    assert K.spec_loss_grad(spec, X, y, np.arange(20), theta, g1) == \
        K.loss_grad("softmax", X, y, np.arange(20), theta, g2)
    assert g1.tobytes() == g2.tobytes()
    assert np.array_equal(K.spec_predict(spec, X, theta), K.predict("softmax", X, theta))
    assert np.array_equal(K.spec_l2_mask(spec), K.l2_mask("softmax", 3, 3))
    assert spec.task == "multiclass" and spec.hidden == ()

    class Cfg:
        name, hidden, activation = "logistic", [64], "relu"
    assert K.ModelSpec.from_config(Cfg, 3, 2, task="binary") == K.ModelSpec("logistic", 3, 2)
    Cfg.name = "mlp"
    assert K.ModelSpec.from_config(Cfg, 3, 2, task="multiclass").n_outputs == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="cnn"), "'model'"),
        (dict(hidden=()), "'hidden'"),
        (dict(hidden=(4, 4, 4, 4)), "'hidden'"),
        (dict(hidden=(4, 0)), "'hidden'"),
        (dict(hidden=(4, True)), "'hidden'"),
        (dict(activation="sigmoid"), "'activation'"),
        (dict(n_classes=1), "'n_classes'"),
        (dict(n_classes=3, task="binary"), "'task'"),
        (dict(n_classes=0, task="multiclass"), "'task'"),
        (dict(n_features=0), "'n_features'"),
        (dict(name="linear", n_classes=0), "'hidden'"),
        (dict(name="softmax", hidden=(), task="binary"), "'task'"),
    ],
)
def test_bad_spec_raises_config_error(kwargs, match):
    args = dict(name="mlp", n_features=3, n_classes=2, hidden=(4,), activation="relu")
    with pytest.raises(ConfigError, match=match):
        K.ModelSpec(**{**args, **kwargs})


def test_loss_grad_validation():
    spec, X, y, theta = make_problem("multiclass", np.float64, n=20)
    g = np.empty_like(theta)
    with pytest.raises(ValueError, match="'X'.*n_features"):
        K.spec_loss_grad(spec, X[:, :3].copy(), y, [0], theta, g)
    with pytest.raises(ValueError, match="'theta'.*size"):
        K.spec_loss_grad(spec, X, y, [0], theta[:-1].copy(), g[:-1].copy())
    with pytest.raises(TypeError, match="'theta'.*dtype"):
        K.spec_loss_grad(spec, X, y, [0], theta.astype(np.float32), g)
    with pytest.raises(TypeError, match="'y'"):
        K.spec_loss_grad(spec, X, y.astype(np.float64), [0], theta, g)
    with pytest.raises(ValueError, match=r"idx\[1\] = 20"):
        K.spec_loss_grad(spec, X, y, [0, 20], theta, g)
    y[4] = 3
    with pytest.raises(DataError, match=r"y\[4\] = 3"):
        K.spec_loss_grad(spec, X, y, [4], theta, g)
    with pytest.raises(TypeError, match="ModelSpec"):
        K.spec_loss_grad("mlp", X, y, [0], theta, g)


# ----------------------------------------------------------------------------- end to end
def test_digits_end_to_end_against_sklearn():
    """hidden=[64] relu on sklearn's digits with minibatch SGD + momentum over the kernel."""
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    scaler = StandardScaler().fit(X_tr)
    X_tr = np.ascontiguousarray(scaler.transform(X_tr))
    X_te = np.ascontiguousarray(scaler.transform(X_te))
    y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)

    spec = K.ModelSpec("mlp", X.shape[1], 10, [64], "relu")
    rng = np.random.default_rng(0)
    theta = K.spec_init(spec, np.float64, rng)
    grad, velocity = np.empty_like(theta), np.zeros_like(theta)
    mask = K.spec_l2_mask(spec)
    lr, momentum, l2, batch = 0.05, 0.9, 1e-4, 32
    for _ in range(30):
        order = rng.permutation(len(X_tr))
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            K.spec_loss_grad(spec, X_tr, y_tr, idx, theta, grad)
            grad /= len(idx)
            grad[mask] += l2 * theta[mask]
            velocity *= momentum
            velocity += grad
            theta -= lr * velocity
    ours = float((K.spec_predict(spec, X_te, theta).argmax(axis=1) == y_te).mean())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(64,), random_state=0, max_iter=500)
        theirs = float(clf.fit(X_tr, y_tr).score(X_te, y_te))
    message = f"digits test accuracy: mpisgd mlp {ours:.4f}, sklearn MLPClassifier {theirs:.4f}"
    print(message)
    assert ours >= 0.95, message


def test_a_batch_longer_than_one_pass_runs_in_pieces(monkeypatch):
    """The training objective takes every row at once: it runs in pieces of
    MLP_MAX_ROWS rows with bounded buffers, and gives the reference loss and gradient."""
    monkeypatch.setattr(mlp, "MLP_MAX_ROWS", 2 * mlp.MLP_GRAD_BLOCK)
    spec, X, y, theta = make_problem("multiclass", np.float64, n=1500)
    idx = np.arange(1500)
    fresh = mlp.LossGrad(*K._mlp_codes(spec))
    grad = np.empty_like(theta)
    loss = fresh(X, np.empty(0), y, idx, theta, grad)
    ref_loss, ref_grad = ref_loss_grad(spec, X, y, idx, theta)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-9, atol=1e-12)
    assert fresh.rows == 2 * mlp.MLP_GRAD_BLOCK   # buffers for one piece, not 1,500 rows
    np.testing.assert_array_equal(run(spec, X, y, idx, theta)[1], grad)
