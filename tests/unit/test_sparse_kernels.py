"""mpisgd.kernels.sparse (CSR rows) against SciPy and the dense kernels: X @ w and X.T @ r,
finite differences, the keys' gradient against the dense one, determinism, validation.

The data has empty rows, a row holding most features and rows of a few; SciPy's int32
indices are what most tests feed the kernels (uint32 and int64 get their own tests).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse as sp

import mpisgd.kernels as K
from mpisgd.errors import ConfigError, DataError
from mpisgd.kernels import sparse as S
from mpisgd.kernels.merge import merge_runs

DTYPES = (np.float32, np.float64)
RTOL = {np.float32: 2e-5, np.float64: 1e-12}
MODELS = ("linear", "logistic", "softmax")
N_CLASSES = {"linear": 1, "logistic": 1, "softmax": 3}


def make_csr(n=400, d=300, dtype=np.float64, seed=0, max_nnz=8):
    """A scipy csr_matrix with sorted duplicate-free rows: rows of 0 to max_nnz non-zeros
    (some empty), one row of ~2/3 of the features, the last feature in the dense row."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, max_nnz + 1, n)
    counts[[0, n // 2]] = 0
    counts[7] = 2 * d // 3
    rows = [np.sort(rng.choice(d, c, replace=False)) for c in counts]
    rows[7][-1] = d - 1
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = np.concatenate(rows).astype(np.int32)
    values = rng.standard_normal(indptr[-1]).astype(dtype)
    return sp.csr_matrix((values, indices, indptr), shape=(n, d))


def make_labels(model, n, dtype, rng):
    if model == "linear":
        return rng.standard_normal(n).astype(dtype)
    return rng.integers(0, 2 if model == "logistic" else N_CLASSES[model], n)


def make_theta(model, d, dtype, rng, scale=0.3):
    """A dense theta in the dense models' layout."""
    return (scale * rng.standard_normal(N_CLASSES[model] * (d + 1))).astype(dtype)


def key_params(model, theta, d, keys):
    """(w_keys, bias) of ``keys`` from a dense theta: (K,) or key-major (K, C)."""
    C = N_CLASSES[model]
    W = theta[: C * d].reshape(C, d)
    w = np.ascontiguousarray(W[:, keys].T) if model == "softmax" else W[0, keys].copy()
    return w, theta[C * d :].copy()


def batch(model, dtype, n=400, d=300, seed=0, m=300):
    """(scipy A, CSR X, y, idx, theta): idx with repeats, the dense and empty rows in it."""
    A = make_csr(n, d, dtype, seed)
    rng = np.random.default_rng(seed + 1)
    idx = np.concatenate([[7, 0, 7], rng.integers(0, n, m)])
    return (A, S.CSR.from_scipy(A), make_labels(model, n, dtype, rng), idx,
            make_theta(model, d, dtype, rng))


# ----------------------------------------------------------------------------- keys
def test_unique_keys_and_remap():
    A = make_csr()
    idx = np.array([5, 7, 0, 5, 3])
    keys, remap = S.unique_keys(A.indptr.astype(np.int64), A.indices, idx)
    flat = np.concatenate([A.indices[A.indptr[i]:A.indptr[i + 1]] for i in idx])
    np.testing.assert_array_equal(keys, np.unique(flat))
    assert keys.dtype == remap.dtype == np.int64 and remap.size == flat.size
    np.testing.assert_array_equal(keys[remap], flat)
    keys, remap = S.unique_keys(A.indptr.astype(np.int64), A.indices, [0])   # an empty row
    assert keys.size == 0 and remap.size == 0


def test_unique_keys_takes_ids_up_to_two_to_the_32():
    """Hashed ids fill 32 bits: uint32 and int64 indices near 2^32 keep their order."""
    ids = np.array([2**32 - 1, 5, 2**31, 2**31 - 1, 5, 0], dtype=np.uint32)
    indptr = np.array([0, 4, 6], dtype=np.int64)
    for indices in (ids, ids.astype(np.int64)):
        keys, remap = S.unique_keys(indptr, indices, [1, 0])
        assert keys.tolist() == [0, 5, 2**31 - 1, 2**31, 2**32 - 1]
        assert keys[remap].tolist() == [5, 0, 2**32 - 1, 5, 2**31, 2**31 - 1]
    with pytest.raises(DataError, match=r"\[0, 2\^32\).*4294967296 in row 1"):
        S.unique_keys(indptr, np.array([0, 1, 2, 3, 1, 2**32]), [0, 1])


# ----------------------------------------------------------------------------- against SciPy
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_is_scipy_matvec_and_transposed_matvec(dtype):
    """predict_keys = X @ w + b and the linear gradient = X.T @ r with r = X @ w + b - y,
    SciPy's products over the minibatch's rows (repeats included)."""
    A, X, y, idx, theta = batch("linear", dtype)
    keys, remap = S.unique_keys(X.indptr, X.indices, idx)
    w, b = key_params("linear", theta, X.n_features, keys)
    B = A[idx].astype(np.float64)
    z = B @ theta[:-1].astype(np.float64) + float(b[0])
    out = S.predict_keys("linear", X, idx, keys, remap, w, b)
    assert out.dtype == dtype and out.shape == idx.shape
    np.testing.assert_allclose(out, z, rtol=RTOL[dtype], atol=RTOL[dtype])
    r = z - y[idx]
    g = S.loss_grad("linear", X, y, idx, keys, remap, w, b)
    assert isinstance(g.loss, float) and g.grad_keys.dtype == g.grad_bias.dtype == dtype
    assert g.grad_keys.shape == keys.shape and g.grad_bias.shape == (1,)
    np.testing.assert_allclose(g.loss, 0.5 * r @ r, rtol=RTOL[dtype])
    full = B.T @ r
    np.testing.assert_allclose(g.grad_keys, full[keys], rtol=RTOL[dtype],
                               atol=RTOL[dtype] * np.abs(full).max())
    np.testing.assert_allclose(g.grad_bias, [r.sum()], rtol=RTOL[dtype], atol=RTOL[dtype])
    untouched = np.setdiff1d(np.arange(X.n_features), keys)
    assert not full[untouched].any()


def test_repeated_and_unsorted_features_add_up_as_in_scipy():
    """A row may list a feature twice and in any order: the values add, as in SciPy."""
    indptr = np.array([0, 4, 5], dtype=np.int64)
    indices = np.array([9, 2, 9, 4, 2], dtype=np.int64)
    values = np.array([1.0, -2.0, 0.5, 3.0, 1.5])
    A = sp.csr_matrix((values, indices, indptr), shape=(2, 10))
    X = S.CSR(indptr, indices, values, 10)
    theta = np.linspace(-1, 1, 11)
    y = np.array([0.3, -0.2])
    np.testing.assert_allclose(S.predict("linear", X, theta), A @ theta[:10] + theta[10])
    dense = np.empty_like(theta)
    S.loss_grad_dense("linear", X, y, [0, 1], theta, dense)
    r = A @ theta[:10] + theta[10] - y
    np.testing.assert_allclose(dense, np.append(A.T @ r, r.sum()), rtol=1e-14)


# ----------------------------------------------------------------------------- vs the dense kernels
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_keys_gradient_is_the_dense_gradient_restricted_to_keys(model, dtype):
    A, X, y, idx, theta = batch(model, dtype, seed=4)
    Xd = A.toarray()
    dense = np.empty_like(theta)
    ref_loss = K.loss_grad(model, Xd, y, idx, theta, dense)
    keys, remap = S.unique_keys(X.indptr, X.indices, idx)
    w, b = key_params(model, theta, X.n_features, keys)
    g = S.loss_grad(model, X, y, idx, keys, remap, w, b)
    rtol = RTOL[dtype] if dtype == np.float64 else 1e-4   # the dense kernel sums in float32
    atol = rtol * np.abs(dense).max()
    np.testing.assert_allclose(g.loss, ref_loss, rtol=rtol)
    gk, gb = key_params(model, dense, X.n_features, keys)
    assert g.grad_keys.shape == w.shape and g.grad_bias.shape == b.shape
    np.testing.assert_allclose(g.grad_keys, gk, rtol=rtol, atol=atol)
    np.testing.assert_allclose(g.grad_bias, gb, rtol=rtol, atol=atol)
    # the dense theta's ways give the same numbers, and zero for every other feature
    t = S.loss_grad_theta(model, X, y, idx, theta)
    np.testing.assert_array_equal(t.keys, keys)
    assert t.loss == g.loss
    np.testing.assert_array_equal(t.grad_keys, g.grad_keys)
    out = np.full_like(theta, np.nan)   # garbage: must be overwritten, not added to
    assert S.loss_grad_dense(model, X, y, idx, theta, out) == g.loss
    np.testing.assert_allclose(out, dense, rtol=rtol, atol=atol)
    C = N_CLASSES[model]
    mask = np.ones(X.n_features, bool)
    mask[keys] = False
    assert not out[: C * X.n_features].reshape(C, -1)[:, mask].any()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_predict_matches_the_dense_kernels(model, dtype):
    A, X, _, idx, theta = batch(model, dtype, seed=5)
    ref = K.predict(model, A.toarray(), theta)
    out = S.predict(model, X, theta)
    assert out.dtype == dtype and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4 if dtype == np.float32 else 1e-12,
                               atol=1e-6)
    keys, remap = S.unique_keys(X.indptr, X.indices, idx)
    w, b = key_params(model, theta, X.n_features, keys)
    np.testing.assert_allclose(S.predict_keys(model, X, idx, keys, remap, w, b),
                               S.predict(model, X, theta, idx), rtol=RTOL[dtype], atol=1e-7)


# ----------------------------------------------------------------------------- calculus
@pytest.mark.parametrize("model", MODELS)
def test_finite_differences(model):
    """Central differences of the loss over every key's weights and the bias."""
    _, X, y, idx, theta = batch(model, np.float64, n=60, d=40, seed=6, m=30)
    keys, remap = S.unique_keys(X.indptr, X.indices, idx)
    w, b = key_params(model, theta, X.n_features, keys)
    g = S.loss_grad(model, X, y, idx, keys, remap, w, b)
    h = 1e-6

    def loss(w, b):
        return S.loss_grad(model, X, y, idx, keys, remap, w, b).loss

    for params, grad in ((w, g.grad_keys), (b, g.grad_bias)):
        fd = np.empty(params.size)
        flat = params.reshape(-1)
        for k in range(params.size):
            keep = flat[k]
            flat[k] = keep + h
            up = loss(w, b)
            flat[k] = keep - h
            fd[k] = (up - loss(w, b)) / (2 * h)
            flat[k] = keep
        np.testing.assert_allclose(grad.reshape(-1), fd, rtol=1e-6,
                                   atol=1e-6 * np.abs(fd).max())


@pytest.mark.parametrize("model", ["logistic", "softmax"])
def test_extreme_logits_stay_finite(model):
    A, X, y, idx, theta = batch(model, np.float64, seed=7)
    theta *= 3000.0   # |logits| in the thousands
    g = S.loss_grad_theta(model, X, y, idx, theta)
    dense = np.empty_like(theta)
    ref = K.loss_grad(model, A.toarray(), y, idx, theta, dense)
    assert np.isfinite(g.loss) and np.isfinite(g.grad_keys).all()
    np.testing.assert_allclose(g.loss, ref, rtol=1e-10)


@pytest.mark.parametrize("model", MODELS)
def test_nan_is_not_hidden(model):
    A, X, y, idx, theta = batch(model, np.float32, seed=8)
    X.values[A.indptr[7] + 3] = np.nan   # row 7 is in idx
    g = S.loss_grad_theta(model, X, y, idx, theta)
    assert np.isnan(g.loss) and np.isnan(g.grad_keys).any()


# ----------------------------------------------------------------------------- determinism
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_across_thread_counts(model, dtype, by_thread_count):
    _, X, y, _, theta = batch(model, dtype, n=12_000, d=500, seed=9)
    idx = np.random.default_rng(2).integers(0, X.n_rows, 16_000)   # 8 row blocks

    def once():
        g = S.loss_grad_theta(model, X, y, idx, theta)
        p = S.predict(model, X, theta)
        return g.loss, g.grad_keys.tobytes(), g.grad_bias.tobytes(), p.tobytes()

    results = by_thread_count(once)
    assert results[1][0] == results[1][1] == results[2][0]


def test_empty_minibatch():
    _, X, y, _, theta = batch("softmax", np.float64)
    g = S.loss_grad_theta("softmax", X, y, [], theta)
    assert g.loss == 0.0 and g.grad_keys.shape == (0, 3) and not g.grad_bias.any()
    assert S.predict("softmax", X, theta, []).shape == (0, 3)


# ----------------------------------------------------------------------------- validation
def _csr_parts():
    A = make_csr(n=20, d=30)
    return A.indptr.astype(np.int64), A.indices.astype(np.int64), A.data.copy()


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda p: p[1].__setitem__(3, 30), DataError, r"\[0, n_features = 30\).*Got 30 in row"),
        (lambda p: p[1].__setitem__(3, -1), DataError, "Got -1 in row"),
        (lambda p: p[0].__setitem__(5, p[0][-1]), DataError, "non-decreasing"),
        (lambda p: p[0].__setitem__(-1, p[0][-1] - 1), DataError, "indptr"),
        (lambda p: p.__setitem__(2, p[2][:-1]), DataError, "len\\(values\\)"),
        (lambda p: p.__setitem__(2, p[2].astype(np.int64)), TypeError, "'values'.*dtype"),
        (lambda p: p.__setitem__(1, p[1].astype(np.int16)), TypeError, "'indices'.*dtype"),
        (lambda p: p.__setitem__(0, p[0].astype(np.int32)), TypeError, "'indptr'.*dtype"),
        (lambda p: p.__setitem__(1, p[1][::-1]), ValueError, "'indices'.*C-contiguous"),
    ],
)
def test_bad_csr_blocks_raise(change, error, match):
    parts = list(_csr_parts())
    change(parts)
    with pytest.raises(error, match=match):
        S.CSR(*parts, 30)


def _valid(model="softmax"):
    _, X, y, idx, theta = batch(model, np.float64, n=40, d=30, m=20)
    keys, remap = S.unique_keys(X.indptr, X.indices, idx)
    w, b = key_params(model, theta, X.n_features, keys)
    return dict(model=model, X=X, y=y, idx=idx, keys=keys, remap=remap, w_keys=w, bias=b)


def _swap_keys(a):
    a["keys"][[1, 2]] = a["keys"][[2, 1]]


@pytest.mark.parametrize(
    "change, error, match",
    [
        (_swap_keys, ValueError, r"'keys'.*strictly increasing.*keys\[2\]"),
        (lambda a: a["keys"].__setitem__(-1, 30), ValueError, r"'keys'.*\[0, 30\)"),
        (lambda a: a.update(keys=a["keys"][:-1]), ValueError, "'keys'.*one entry per row"),
        (lambda a: a.update(remap=a["remap"][:-1]), ValueError, "'remap'.*one entry"),
        (lambda a: a["remap"].__setitem__(4, a["keys"].size), ValueError, r"remap\[4\]"),
        (lambda a: a.update(idx=np.array([0, 40])), ValueError, r"idx\[1\] = 40"),
        (lambda a: a.update(idx=np.array([0.5])), TypeError, "'idx'"),
        (lambda a: a["y"].__setitem__(a["idx"][3], 3), DataError, r"\[0, 3\)"),
        (lambda a: a.update(y=a["y"].astype(np.int32)), TypeError, "'y'"),
        (lambda a: a.update(y=a["y"][:5]), ValueError, "'y'.*shape"),
        (lambda a: a.update(w_keys=a["w_keys"].astype(np.float32)), TypeError, "'w_keys'"),
        (lambda a: a.update(w_keys=a["w_keys"][:, :1].copy()), ValueError, "n_classes >= 2"),
        (lambda a: a.update(bias=a["bias"][:2]), ValueError, r"'bias'.*\(3,\)"),
        (lambda a: a.update(X=sp.csr_matrix(np.eye(3))), TypeError, "'X'.*CSR"),
        (lambda a: a.update(model="lasso"), ConfigError, "model"),
    ],
)
def test_loss_grad_validation(change, error, match):
    args = _valid()
    change(args)
    with pytest.raises(error, match=match):
        S.loss_grad(**args)


def test_validation_of_the_dense_ways():
    args = _valid("logistic")
    X, y, idx = args["X"], args["y"], args["idx"]
    with pytest.raises(ValueError, match="'theta'.*size n_features \\+ 1 = 31"):
        S.loss_grad_theta("logistic", X, y, idx, np.zeros(30))
    with pytest.raises(ValueError, match="'theta'.*n_classes >= 2"):
        S.predict("softmax", X, np.zeros(31))
    with pytest.raises(ValueError, match="'grad_out'"):
        S.loss_grad_dense("logistic", X, y, idx, np.zeros(31), np.zeros(30))
    y[idx[0]] = 2
    with pytest.raises(DataError, match="model 'logistic'.*\\[0, 2\\)"):
        S.loss_grad_theta("logistic", X, y, idx, np.zeros(31))
    with pytest.raises(ValueError, match="'indptr'.*row 1"):
        S.unique_keys(np.array([0, 2, 1, 3]), np.arange(3), [0, 1])


@pytest.mark.parametrize("model", ["logistic", "softmax"])
def test_known_keys_give_the_same_gradient_and_are_checked(model):
    _, X, y, idx, theta = batch(model, np.float64)
    known = S.unique_keys(X.indptr, X.indices, idx)
    a = S.loss_grad_theta(model, X, y, idx, theta)
    b = S.loss_grad_theta(model, X, y, idx, theta, known)
    assert a.loss == b.loss
    np.testing.assert_array_equal(a.grad_keys, b.grad_keys)
    np.testing.assert_array_equal(a.grad_bias, b.grad_bias)
    other = S.unique_keys(X.indptr, X.indices, idx[: idx.size // 2])
    with pytest.raises(ValueError, match="remap"):
        S.loss_grad_theta(model, X, y, idx, theta, other)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_merge_runs_sums_equal_keys_in_run_order_and_drops_zeros(dtype):
    rng = np.random.default_rng(3)
    runs = [np.unique(rng.integers(0, 50, n)) for n in (30, 0, 25, 40)]
    vals = [rng.normal(size=r.size).astype(dtype) for r in runs]
    vals[2][:3] = 0   # a zero contribution is still added; a zero sum is dropped
    keys, got = merge_runs(np.concatenate(runs), np.concatenate(vals), [r.size for r in runs])
    want = {}
    for r, v in zip(runs, vals):
        for k, x in zip(r, v):
            want[int(k)] = want[int(k)] + x if int(k) in want else x   # run order, dtype
    want = {k: v for k, v in want.items() if v != 0}
    assert keys.tolist() == sorted(want)
    np.testing.assert_array_equal(got, np.array([want[k] for k in sorted(want)], dtype))
    assert got.dtype == dtype
    with pytest.raises(ValueError, match="do not add up"):
        merge_runs(keys, got, [keys.size + 1])
