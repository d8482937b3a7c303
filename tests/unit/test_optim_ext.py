"""Adagrad, Adam, AdamW, warm-up and clipping against references of the torch.optim formulas;
slice-exactness and exact resume for every optimizer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpisgd.config import OptimizerConfig
from mpisgd.optim import (
    SGD,
    Adagrad,
    Adam,
    AdamW,
    clip_factor,
    learning_rate,
    make_optimizer,
    sq_norm,
)

N_STEPS = 50


# ----------------------------------------------------------------------------- references
# Written from the algorithm boxes of the torch.optim documentation, in float64, with no
# regard for how mpisgd.optim orders its operations.
def ref_adagrad(cfg, theta, grads, lrs):
    theta, state_sum = theta.copy(), np.zeros_like(theta)
    for g, lr in zip(grads, lrs):
        state_sum = state_sum + g * g
        theta = theta - lr * g / (np.sqrt(state_sum) + cfg.eps)
    return theta


def ref_adam(cfg, theta, grads, lrs, decoupled=False, mask=None):
    theta, m, v = theta.copy(), np.zeros_like(theta), np.zeros_like(theta)
    decay = np.ones_like(theta) if mask is None else mask.astype(np.float64)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        if decoupled:
            theta = theta - lr * cfg.weight_decay * theta * decay
        m = cfg.beta1 * m + (1 - cfg.beta1) * g
        v = cfg.beta2 * v + (1 - cfg.beta2) * g * g
        m_hat = m / (1 - cfg.beta1**t)
        v_hat = v / (1 - cfg.beta2**t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + cfg.eps)
    return theta


def problem(n=40, seed=0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=n)
    grads = rng.normal(size=(N_STEPS, n)) * rng.uniform(0.01, 10, size=(N_STEPS, 1))
    lrs = 0.01 * (1 + 0.5 * np.sin(np.arange(N_STEPS)))  # a changing rate reaches the update
    return theta, grads, lrs


def run(opt, theta, grads, lrs):
    theta = theta.copy()
    for g, lr in zip(grads, lrs):
        opt.step(theta, g, lr)
    return theta


# ----------------------------------------------------------------------------- update rules
def test_adagrad_matches_reference():
    cfg = OptimizerConfig(name="adagrad", eps=1e-8)
    theta, grads, lrs = problem()
    out = run(make_optimizer(cfg, theta.size, np.float64), theta, grads, lrs)
    np.testing.assert_allclose(out, ref_adagrad(cfg, theta, grads, lrs), rtol=1e-12)


@pytest.mark.parametrize("beta1, beta2, eps", [(0.9, 0.999, 1e-8), (0.5, 0.9, 1e-3)])
def test_adam_matches_reference(beta1, beta2, eps):
    cfg = OptimizerConfig(name="adam", beta1=beta1, beta2=beta2, eps=eps, weight_decay=0.3)
    theta, grads, lrs = problem()
    out = run(make_optimizer(cfg, theta.size, np.float64), theta, grads, lrs)
    # Adam takes no weight decay here: L2 is model.l2, added to the gradient by the caller.
    np.testing.assert_allclose(out, ref_adam(cfg, theta, grads, lrs), rtol=1e-12)


@pytest.mark.parametrize("masked", [False, True])
def test_adamw_matches_reference(masked):
    cfg = OptimizerConfig(name="adamw", weight_decay=0.5)
    theta, grads, lrs = problem()
    mask = (np.arange(theta.size) % 3 != 0) if masked else None
    out = run(make_optimizer(cfg, theta.size, np.float64, decay_mask=mask), theta, grads, lrs)
    ref = ref_adam(cfg, theta, grads, lrs, decoupled=True, mask=mask)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    if masked:  # the unmasked entries follow plain Adam
        plain = ref_adam(cfg, theta, grads, lrs)
        np.testing.assert_allclose(out[~mask], plain[~mask], rtol=1e-12)
        assert not np.allclose(out[mask], plain[mask], rtol=1e-6)


def test_make_optimizer_picks_the_class():
    kinds = {"sgd": SGD, "adagrad": Adagrad, "adam": Adam, "adamw": AdamW}
    for name, cls in kinds.items():
        opt = make_optimizer(OptimizerConfig(name=name), 5, np.float32, decay_mask=np.ones(5, bool))
        assert type(opt) is cls and opt.dtype == np.float32
    with pytest.raises(ValueError, match="decay_mask"):
        make_optimizer(OptimizerConfig(name="adamw"), 5, np.float64, decay_mask=np.ones(4, bool))


def test_float32_stays_float32():
    theta, grads, lrs = problem()
    theta32, grads32 = theta.astype(np.float32), grads.astype(np.float32)
    for name in ("adagrad", "adam", "adamw"):
        cfg = OptimizerConfig(name=name)
        out = run(make_optimizer(cfg, theta.size, np.float32), theta32, grads32, lrs)
        ref = run(make_optimizer(cfg, theta.size, np.float64), theta, grads, lrs)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- sharding
CONFIGS = {
    "sgd": OptimizerConfig(name="sgd"),
    "momentum": OptimizerConfig(name="sgd", momentum=0.9),
    "nesterov": OptimizerConfig(name="sgd", momentum=0.9, nesterov=True),
    "adagrad": OptimizerConfig(name="adagrad"),
    "adam": OptimizerConfig(name="adam"),
    "adamw": OptimizerConfig(name="adamw", weight_decay=0.1),
}


@pytest.mark.parametrize("kind", CONFIGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_slices_are_bitwise_the_whole(kind, dtype):
    cfg = CONFIGS[kind]
    theta, grads, lrs = problem(n=101)
    theta, grads = theta.astype(dtype), grads.astype(dtype)
    mask = np.arange(101) % 4 != 1
    whole = make_optimizer(cfg, 101, dtype, decay_mask=mask)
    cuts = [0, 37, 38, 101]  # odd lengths, so SIMD bodies and scalar tails meet other entries
    parts = [make_optimizer(cfg, b - a, dtype, decay_mask=mask[a:b])
             for a, b in zip(cuts, cuts[1:])]
    t_whole, t_parts = theta.copy(), theta.copy()
    for g, lr in zip(grads, lrs):
        whole.step(t_whole, g, lr)
        for opt, a, b in zip(parts, cuts, cuts[1:]):
            opt.step(t_parts[a:b], g[a:b], lr)  # views into one vector, as a server holds
    assert t_whole.tobytes() == t_parts.tobytes()
    state = whole.state()
    for key in state:
        if key == "step":
            assert all(int(p.state()["step"]) == N_STEPS for p in parts)
        else:
            joined = np.concatenate([p.state()[key] for p in parts])
            assert joined.tobytes() == state[key].tobytes(), key


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", CONFIGS)
def test_state_round_trip_resumes_exactly(kind):
    cfg = CONFIGS[kind]
    theta, grads, lrs = problem()
    opt = make_optimizer(cfg, theta.size, np.float64)
    theta = run(opt, theta, grads[:20], lrs[:20])
    saved, saved_theta = opt.state(), theta.copy()
    assert saved["step"].dtype == np.int64 and int(saved["step"]) == 20
    straight = run(opt, theta, grads[20:], lrs[20:])
    fresh = make_optimizer(cfg, theta.size, np.float64)
    fresh.load_state(saved)
    resumed = run(fresh, saved_theta, grads[20:], lrs[20:])
    assert resumed.tobytes() == straight.tobytes()
    for key, value in opt.state().items():
        assert value.tobytes() == fresh.state()[key].tobytes()


def test_state_is_a_snapshot():
    opt = make_optimizer(OptimizerConfig(name="adam"), 3, np.float64)
    s = opt.state()
    opt.step(np.zeros(3), np.ones(3), 0.1)
    assert not s["exp_avg"].any() and int(s["step"]) == 0


def test_load_state_rejects_a_foreign_state():
    opt = make_optimizer(OptimizerConfig(name="adam"), 4, np.float64)
    good = opt.state()
    with pytest.raises(ValueError, match="keys"):
        opt.load_state({"step": good["step"], "exp_avg": good["exp_avg"]})
    with pytest.raises(ValueError, match="keys"):
        opt.load_state(make_optimizer(OptimizerConfig(name="sgd", momentum=0.9), 4,
                                      np.float64).state())
    with pytest.raises(ValueError, match="'exp_avg'.*shape"):
        opt.load_state(dict(good, exp_avg=np.zeros(5)))
    with pytest.raises(ValueError, match="'exp_avg_sq'.*float64"):
        opt.load_state(dict(good, exp_avg_sq=np.zeros(4, np.float32)))
    with pytest.raises(ValueError, match="'step'"):
        opt.load_state(dict(good, step=np.array(1.5)))


def test_step_validation():
    opt = make_optimizer(OptimizerConfig(name="adam"), 4, np.float32)
    with pytest.raises(TypeError, match="'theta'.*float32"):
        opt.step(np.zeros(4), np.zeros(4, np.float32), 0.1)
    with pytest.raises(ValueError, match="'grad'.*shape"):
        opt.step(np.zeros(4, np.float32), np.zeros(5, np.float32), 0.1)
    with pytest.raises(ValueError, match="'lr'"):
        opt.step(np.zeros(4, np.float32), np.zeros(4, np.float32), float("nan"))
    assert opt.steps == 0  # a rejected step does not count


# ----------------------------------------------------------------------------- warm-up
def test_warmup_ramps_then_hands_over_to_the_schedule():
    c = OptimizerConfig(lr=1.0, warmup_steps=4)
    assert [learning_rate(c, s, 0, 100) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = OptimizerConfig(lr=2.0, schedule="cosine", warmup_steps=10)
    plain = OptimizerConfig(lr=2.0, schedule="cosine")
    for s in (0, 3, 9, 10, 50, 100):
        expect = learning_rate(plain, s, 0, 100) * min(1.0, (s + 1) / 10)
        assert learning_rate(cos, s, 0, 100) == pytest.approx(expect, rel=1e-15)
    stepped = OptimizerConfig(lr=1.0, schedule="step", step_epochs=1, gamma=0.5, warmup_steps=2)
    assert learning_rate(stepped, 0, 3, 100) == 0.125 * 0.5
    assert learning_rate(OptimizerConfig(lr=0.3), 0, 0, 100) == 0.3  # warmup_steps = 0: off


# ----------------------------------------------------------------------------- clipping
def test_clip_factor():
    assert clip_factor(4.0, 0.0) == 1.0  # off
    assert clip_factor(0.0, 1.0) == 1.0
    assert clip_factor(0.25, 1.0) == 1.0  # norm 0.5 <= 1: untouched
    assert clip_factor(16.0, 2.0) == pytest.approx(2.0 / (4.0 + 1e-6), rel=1e-15)
    assert math.isnan(clip_factor(float("nan"), 1.0))
    assert math.isnan(clip_factor(float("inf"), 1.0))
    with pytest.raises(ValueError, match="clip_norm"):
        clip_factor(1.0, -1.0)
    with pytest.raises(ValueError, match="sq_norm_total"):
        clip_factor(-1.0, 1.0)


def test_clipping_a_sharded_gradient():
    g = np.random.default_rng(0).normal(size=1001).astype(np.float32) * 1e3
    whole = clip_factor(sq_norm(g), 5.0)
    total = sq_norm(g[:400]) + sq_norm(g[400:])  # what an Allreduce of the pieces gives
    sharded = clip_factor(total, 5.0)
    assert sharded == pytest.approx(whole, rel=1e-12)
    clipped = g.astype(np.float64) * sharded
    assert np.linalg.norm(clipped) == pytest.approx(5.0, rel=1e-6)
    assert sq_norm(g) == sq_norm(g.copy())  # no BLAS: same bits for the same vector
    big = np.full(4, 3e38, dtype=np.float32)  # squares overflow float32, not float64
    assert math.isfinite(sq_norm(big))
