"""Lazy sparse optimizers: equal to the dense ones when every key is touched, lazy rules
against NumPy references, FTRL-Proximal against Algorithm 1 of McMahan et al. (2013),
untouched keys untouched, key ranges equal to the whole, exact resume, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from mpisgd.config import OptimizerConfig, load_config
from mpisgd.errors import ConfigError
from mpisgd.optim import make_optimizer, slice_state
from mpisgd.optim_sparse import FTRL, LazyAdam, LazySGD, SparseAdagrad, make_sparse_optimizer

N_STEPS = 40
CONFIGS = {
    "sgd": OptimizerConfig(name="sgd"),
    "momentum": OptimizerConfig(name="sgd", momentum=0.9),
    "nesterov": OptimizerConfig(name="sgd", momentum=0.9, nesterov=True),
    "adagrad": OptimizerConfig(name="adagrad"),
    "adam": OptimizerConfig(name="adam"),
    "ftrl": OptimizerConfig(name="ftrl", ftrl_beta=1.0, ftrl_l1=0.3, ftrl_l2=0.1),
}
DENSE_KINDS = [k for k in CONFIGS if k != "ftrl"]


def sparse_steps(n=101, touched=0.2, seed=0, lo=0):
    """(keys, grad, lr) per step: a random share of the keys, a step with none among them."""
    rng = np.random.default_rng(seed)
    steps = []
    for t in range(N_STEPS):
        share = 0.0 if t == 7 else touched
        keys = np.flatnonzero(rng.random(n) < share).astype(np.int64) + lo
        grad = rng.normal(size=keys.size) * rng.uniform(0.01, 10)
        steps.append((keys, grad, 0.01 * (1 + 0.5 * np.sin(t))))
    return steps


def cast(steps, dtype):
    return [(k, g.astype(dtype), lr) for k, g, lr in steps]


def run(opt, theta, steps):
    theta = theta.copy()
    for keys, grad, lr in steps:
        opt.step(theta, keys, grad, lr)
    return theta


# ----------------------------------------------------------------------------- dense equality
@pytest.mark.parametrize("kind", DENSE_KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_key_touched_equals_the_dense_optimizer_bitwise(kind, dtype):
    cfg, n = CONFIGS[kind], 67
    rng = np.random.default_rng(1)
    theta = rng.normal(size=n).astype(dtype)
    grads = (rng.normal(size=(N_STEPS, n)) * rng.uniform(0.01, 10, (N_STEPS, 1))).astype(dtype)
    lrs = 0.01 * (1 + 0.5 * np.sin(np.arange(N_STEPS)))
    dense, lazy = make_optimizer(cfg, n, dtype), make_sparse_optimizer(cfg, n, dtype)
    t_dense, t_lazy, keys = theta.copy(), theta.copy(), np.arange(n, dtype=np.int64)
    for g, lr in zip(grads, lrs):
        dense.step(t_dense, g, lr)
        lazy.step(t_lazy, keys, g, lr)
    assert t_lazy.tobytes() == t_dense.tobytes()
    want, got = dense.state(), lazy.state()
    assert set(got) == set(want)   # one state layout: a dense checkpoint loads into lazy
    for key in want:
        assert got[key].tobytes() == want[key].tobytes(), key


# ----------------------------------------------------------------------------- lazy rules
def ref_lazy(kind, cfg, theta, steps):
    """Per touched key, from the rules of docs/sparse.md (PyTorch SparseAdam for adam):
    state of untouched keys frozen, Adam's bias correction by the global step count."""
    theta, a, b = theta.copy(), np.zeros_like(theta), np.zeros_like(theta)
    for t, (keys, g, lr) in enumerate(steps, start=1):
        if kind == "momentum":
            a[keys] = cfg.momentum * a[keys] + g
            theta[keys] -= lr * a[keys]
        elif kind == "adam":
            a[keys] = cfg.beta1 * a[keys] + (1 - cfg.beta1) * g
            b[keys] = cfg.beta2 * b[keys] + (1 - cfg.beta2) * g * g
            m_hat, v_hat = a[keys] / (1 - cfg.beta1**t), b[keys] / (1 - cfg.beta2**t)
            theta[keys] -= lr * m_hat / (np.sqrt(v_hat) + cfg.eps)
    return theta


@pytest.mark.parametrize("kind", ["momentum", "adam"])
def test_lazy_rules_match_the_reference(kind):
    cfg, steps = CONFIGS[kind], sparse_steps()
    theta = np.random.default_rng(2).normal(size=101)
    out = run(make_sparse_optimizer(cfg, 101, np.float64), theta, steps)
    np.testing.assert_allclose(out, ref_lazy(kind, cfg, theta, steps), rtol=1e-12)
    # ... and they are lazy: the dense optimizer fed zeros for untouched keys differs.
    dense, t_dense = make_optimizer(cfg, 101, np.float64), theta.copy()
    for keys, grad, lr in steps:
        g = np.zeros(101)
        g[keys] = grad
        dense.step(t_dense, g, lr)
    assert not np.allclose(out, t_dense, rtol=1e-6)


@pytest.mark.parametrize("kind", CONFIGS)
def test_only_touched_keys_change(kind):
    opt = make_sparse_optimizer(CONFIGS[kind], 101, np.float64)
    theta = np.random.default_rng(3).normal(size=101)
    moved = np.zeros(101, bool)
    for keys, grad, lr in sparse_steps():
        before = {"theta": theta.copy(), **opt.state()}
        opt.step(theta, keys, grad, lr)
        untouched = np.ones(101, bool)
        untouched[keys] = False
        after = {"theta": theta, **opt.buffers()}
        for name, value in after.items():
            assert value[untouched].tobytes() == before[name][untouched].tobytes(), name
        moved |= theta != before["theta"]
    assert moved.sum() > 50   # the steps did move the weights they touched


# ----------------------------------------------------------------------------- key ranges
@pytest.mark.parametrize("kind", CONFIGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_key_ranges_are_bitwise_the_whole(kind, dtype):
    cfg, steps = CONFIGS[kind], cast(sparse_steps(touched=0.3), dtype)
    theta = np.random.default_rng(4).normal(size=101).astype(dtype)
    if kind == "ftrl":
        theta[:] = 0   # FTRL's weights start at the closed form of z = n = 0
    cuts = [0, 37, 38, 101]
    whole = make_sparse_optimizer(cfg, 101, dtype)
    parts = [make_sparse_optimizer(cfg, b - a, dtype, lo=a) for a, b in zip(cuts, cuts[1:])]
    t_whole, t_parts = theta.copy(), theta.copy()
    for keys, grad, lr in steps:
        whole.step(t_whole, keys, grad, lr)
        for opt, a, b in zip(parts, cuts, cuts[1:]):
            i, j = np.searchsorted(keys, [a, b])   # what a server of [a, b) receives
            opt.step(t_parts[a:b], keys[i:j], grad[i:j], lr)
    assert t_whole.tobytes() == t_parts.tobytes()
    for key, value in whole.state().items():
        if key == "step":
            assert all(int(p.state()["step"]) == N_STEPS for p in parts)
        else:
            assert np.concatenate([p.state()[key] for p in parts]).tobytes() == value.tobytes()


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", CONFIGS)
def test_state_round_trip_resumes_exactly(kind):
    cfg, steps = CONFIGS[kind], sparse_steps()
    opt = make_sparse_optimizer(cfg, 101, np.float32)
    theta = run(opt, np.zeros(101, np.float32), cast(steps[:15], np.float32))
    saved, saved_theta = opt.state(), theta.copy()
    assert saved["step"].dtype == np.int64 and int(saved["step"]) == 15
    straight = run(opt, theta, cast(steps[15:], np.float32))
    fresh = make_sparse_optimizer(cfg, 101, np.float32)
    fresh.load_state(saved)
    assert run(fresh, saved_theta, cast(steps[15:], np.float32)).tobytes() == straight.tobytes()
    # A server of [40, 101) resumes from its slice of the whole state.
    part = make_sparse_optimizer(cfg, 61, np.float32, lo=40)
    part.load_state(slice_state(saved, 40, 101))
    t_part = saved_theta[40:].copy()
    for keys, grad, lr in cast(steps[15:], np.float32):
        i = np.searchsorted(keys, 40)
        part.step(t_part, keys[i:], grad[i:], lr)
    assert t_part.tobytes() == straight[40:].tobytes()


def test_load_state_rejects_a_foreign_state():
    opt = make_sparse_optimizer(CONFIGS["ftrl"], 4, np.float64)
    good = opt.state()
    with pytest.raises(ValueError, match="keys"):
        opt.load_state(make_sparse_optimizer(CONFIGS["adam"], 4, np.float64).state())
    with pytest.raises(ValueError, match="'z'.*shape"):
        opt.load_state(dict(good, z=np.zeros(5)))
    with pytest.raises(ValueError, match="'n'.*float64"):
        opt.load_state(dict(good, n=np.zeros(4, np.float32)))
    with pytest.raises(ValueError, match="'step'"):
        opt.load_state(dict(good, step=np.array(-1)))


# ----------------------------------------------------------------------------- FTRL
def ftrl_weights(z, n, alpha, beta, l1, l2):
    """Algorithm 1's closed form: 0 where |z| <= l1, else the proximal solution."""
    w = -(z - np.sign(z) * l1) / ((beta + np.sqrt(n)) / alpha + l2)
    return np.where(np.abs(z) <= l1, 0.0, w)


def logistic_stream(rows=400, d=60, nnz=6, seed=5):
    """Sparse rows (sorted unique ids, values) and 0/1 labels from a sparse true model."""
    rng = np.random.default_rng(seed)
    true = np.where(rng.random(d) < 0.2, rng.normal(scale=3, size=d), 0.0)
    out = []
    for _ in range(rows):
        ids = np.sort(rng.choice(d, size=nnz, replace=False)).astype(np.int64)
        x = rng.normal(size=nnz)
        out.append((ids, x, float(rng.random() < 1 / (1 + np.exp(-x @ true[ids])))))
    return out


def ftrl_reference(stream, d, alpha, beta, l1, l2):
    """McMahan et al. (2013), Algorithm 1, per-coordinate FTRL-Proximal with logistic loss."""
    z, n = np.zeros(d), np.zeros(d)
    for ids, x, y in stream:
        w = ftrl_weights(z[ids], n[ids], alpha, beta, l1, l2)
        p = 1 / (1 + np.exp(-(x @ w)))
        g = (p - y) * x
        sigma = (np.sqrt(n[ids] + g * g) - np.sqrt(n[ids])) / alpha
        z[ids] += g - sigma * w
        n[ids] += g * g
    return z, n, ftrl_weights(z, n, alpha, beta, l1, l2)


@pytest.mark.parametrize("l1, l2", [(0.0, 0.0), (1.0, 0.0), (0.5, 2.0)])
def test_ftrl_matches_algorithm_1(l1, l2):
    d, alpha, beta = 60, 0.1, 1.0
    stream = logistic_stream(d=d)
    cfg = OptimizerConfig(name="ftrl", ftrl_beta=beta, ftrl_l1=l1, ftrl_l2=l2)
    opt, theta = make_sparse_optimizer(cfg, d, np.float64), np.zeros(d)
    for ids, x, y in stream:
        p = 1 / (1 + np.exp(-(x @ theta[ids])))   # theta holds Algorithm 1's w
        opt.step(theta, ids, (p - y) * x, alpha)
    z, n, w = ftrl_reference(stream, d, alpha, beta, l1, l2)
    np.testing.assert_allclose(opt.z, z, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(opt.n, n, rtol=1e-10)
    np.testing.assert_allclose(theta, w, rtol=1e-10, atol=1e-12)
    touched = n > 0
    zeros = (theta == 0) & touched
    assert np.array_equal(zeros, (w == 0) & touched)   # exact zeros, where the paper has them
    if l1 >= 1.0:
        assert zeros.sum() >= touched.sum() // 4       # L1 makes the model sparse
    elif l1 == 0:
        assert not zeros.any()


def test_ftrl_float32_follows_float64():
    stream, cfg = logistic_stream(), OptimizerConfig(name="ftrl", ftrl_l1=0.2, ftrl_l2=1.0)
    out = {}
    for dtype in (np.float32, np.float64):
        opt, theta = make_sparse_optimizer(cfg, 60, dtype), np.zeros(60, dtype)
        for ids, x, y in stream:
            p = 1 / (1 + np.exp(-(x @ theta[ids])))
            opt.step(theta, ids, ((p - y) * x).astype(dtype), 0.1)
        out[dtype] = theta
    assert out[np.float32].dtype == np.float32
    np.testing.assert_allclose(out[np.float32], out[np.float64], rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------- interface
def test_make_sparse_optimizer_picks_the_class_and_reports_its_memory():
    kinds = {"sgd": LazySGD, "momentum": LazySGD, "adagrad": SparseAdagrad, "adam": LazyAdam,
             "ftrl": FTRL}
    arrays = {"sgd": 0, "momentum": 1, "adagrad": 1, "adam": 2, "ftrl": 2}
    for kind, cls in kinds.items():
        for dtype in (np.float32, np.float64):
            opt = make_sparse_optimizer(CONFIGS[kind], 1000, dtype, lo=5)
            assert type(opt) is cls and opt.dtype == dtype
            assert opt.held_bytes() == arrays[kind] * 1000 * np.dtype(dtype).itemsize
    with pytest.raises(ConfigError, match="adamw.*no lazy"):
        make_sparse_optimizer(OptimizerConfig(name="adamw"), 10, np.float32)


def test_bad_steps_raise_clearly():
    opt = make_sparse_optimizer(CONFIGS["adam"], 10, np.float32, lo=100)
    theta, g2 = np.zeros(10, np.float32), np.ones(2, np.float32)

    def keys(*k):
        return np.array(k, np.int64)

    with pytest.raises(ValueError, match=r"keys\[1\] = 102 comes after keys\[0\] = 105"):
        opt.step(theta, keys(105, 102), g2, 0.1)
    with pytest.raises(ValueError, match=r"keys\[1\] = 103 repeats"):
        opt.step(theta, keys(103, 103), g2, 0.1)
    for bad in (99, 110):
        with pytest.raises(ValueError, match=rf"{bad} is outside .*\[100, 110\)"):
            opt.step(theta, keys(bad, 109)[np.argsort([bad, 109])], g2, 0.1)
    with pytest.raises(TypeError, match="'keys'.*int64.*int32"):
        opt.step(theta, keys(101, 102).astype(np.int32), g2, 0.1)
    with pytest.raises(TypeError, match="'grad'.*float32.*float64"):
        opt.step(theta, keys(101, 102), g2.astype(np.float64), 0.1)
    with pytest.raises(TypeError, match="'theta'.*contiguous"):
        opt.step(np.zeros(20, np.float32)[::2], keys(101, 102), g2, 0.1)
    with pytest.raises(ValueError, match="'theta'.*10 entries"):
        opt.step(np.zeros(11, np.float32), keys(101, 102), g2, 0.1)
    with pytest.raises(ValueError, match="one value per key: 3"):
        opt.step(theta, keys(101, 102, 103), g2, 0.1)
    with pytest.raises(ValueError, match="'lr'"):
        opt.step(theta, keys(101, 102), g2, -0.1)
    assert opt.steps == 0 and not theta.any()   # a refused step changes nothing
    ftrl = make_sparse_optimizer(CONFIGS["ftrl"], 10, np.float32)
    with pytest.raises(ValueError, match=r"'lr'.*\(0, inf\)"):
        ftrl.step(theta, keys(1), g2[:1], 0.0)
    with pytest.raises(ValueError, match="'n_params'"):
        make_sparse_optimizer(CONFIGS["sgd"], -1, np.float32)
    with pytest.raises(TypeError, match="'dtype'"):
        make_sparse_optimizer(CONFIGS["sgd"], 3, np.int64)


def test_ftrl_keys_load():
    """(A dense dataset with ftrl is refused by the job check: tests/launch/test_sparse_train.)"""
    cfg = load_config(None, ["optimizer.ftrl_l1=1.5", "optimizer.ftrl_beta=0.5"])
    assert (cfg.optimizer.ftrl_l1, cfg.optimizer.ftrl_beta, cfg.optimizer.ftrl_l2) == (1.5, 0.5, 0)
    assert load_config(None, ["optimizer.name=ftrl"]).optimizer.name == "ftrl"
    with pytest.raises(ConfigError, match="optimizer.ftrl_l1"):
        load_config(None, ["optimizer.ftrl_l1=-1"])
