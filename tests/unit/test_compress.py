"""Gradient codecs and error feedback: round trips, exact selections, the feedback
invariant, NaN propagation, and the configuration rules around them."""

from __future__ import annotations

import numpy as np
import pytest

from mpisgd.comm.compress import SCHEMES, SIGN_CHUNK, ErrorFeedback, make_codec
from mpisgd.config import load_config
from mpisgd.errors import ConfigError

LOSSY = [s for s in SCHEMES if s != "none"]


def _grad(n: int, dtype, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * scale).astype(dtype)


def _round_trip(scheme, g, step=0, ratio=0.01):
    codec = make_codec(scheme, g.size, g.dtype, ratio, seed=3)
    data = np.zeros(codec.nbytes, dtype=np.uint8)
    codec.encode(g, step, data)
    out = np.full(g.size, np.nan, dtype=g.dtype)
    codec.decode(data, step, out)
    return codec, out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e9])
def test_fp16_is_within_half_precision_rounding_at_any_magnitude(dtype, scale):
    g = _grad(5000, dtype, scale=scale)
    codec, out = _round_trip("fp16", g)
    # 11 significant bits after an exact power-of-two scaling: relative error <= 2^-11
    # for entries within 2^-14 of the largest (no subnormals there).
    big = np.abs(g) > np.abs(g).max() * 2.0 ** -14
    np.testing.assert_allclose(out[big], g[big], rtol=2.0 ** -11)
    assert np.abs(out - g).max() <= np.abs(g).max() * 2.0 ** -11
    assert codec.nbytes == 8 + 2 * g.size


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bf16_rounds_to_nearest_bfloat16(dtype):
    g = _grad(5000, dtype, scale=1e3)
    codec, out = _round_trip("bf16", g)
    np.testing.assert_allclose(out, g, rtol=2.0 ** -8)
    assert codec.nbytes == 2 * g.size
    # Exactly representable values survive unchanged; ties go to even.
    exact = np.array([1.0, -2.5, 0.0, 3.0 * 2.0 ** 40, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8],
                     dtype=np.float32)
    _, back = _round_trip("bf16", exact)
    np.testing.assert_array_equal(back, [1.0, -2.5, 0.0, 3.0 * 2.0 ** 40, 1.0, 1 + 2 ** -6])


@pytest.mark.parametrize("ratio", [0.01, 0.1, 1.0])
def test_topk_keeps_exactly_the_k_largest_entries(ratio):
    g = _grad(3001, np.float64, seed=1)
    codec, out = _round_trip("topk", g, ratio=ratio)
    k = int(np.ceil(ratio * g.size))
    largest = np.argsort(-np.abs(g))[:k]
    expected = np.zeros_like(g)
    expected[largest] = g[largest]
    np.testing.assert_array_equal(out, expected)
    assert codec.nbytes == k * (4 + 8)


def test_randomk_positions_are_a_function_of_seed_and_step():
    g = _grad(10000, np.float32, seed=2)
    a = make_codec("randomk", g.size, g.dtype, 0.05, seed=7)
    b = make_codec("randomk", g.size, g.dtype, 0.05, seed=7)
    np.testing.assert_array_equal(a.positions(4), b.positions(4))
    assert not np.array_equal(a.positions(4), a.positions(5))
    assert len(np.unique(a.positions(4))) == a.k == 500
    _, out = _round_trip("randomk", g, step=4, ratio=0.05)
    kept = make_codec("randomk", g.size, g.dtype, 0.05, seed=3).positions(4)
    np.testing.assert_array_equal(out[kept], g[kept])
    assert np.count_nonzero(out) == 500


@pytest.mark.parametrize("n", [1, SIGN_CHUNK, 3 * SIGN_CHUNK + 17])
def test_sign_decodes_to_sign_times_chunk_scale(n):
    g = _grad(n, np.float32, seed=4)
    codec, out = _round_trip("sign", g)
    for lo in range(0, n, SIGN_CHUNK):
        chunk = slice(lo, min(n, lo + SIGN_CHUNK))
        scale = np.abs(g[chunk]).mean()
        np.testing.assert_allclose(out[chunk], np.where(g[chunk] < 0, -scale, scale),
                                   rtol=1e-6)
    assert codec.nbytes % 8 == 0 and codec.nbytes <= n // 8 + 4 * (-(-n // SIGN_CHUNK)) + 16


@pytest.mark.parametrize("scheme", LOSSY)
def test_error_feedback_sends_everything_eventually(scheme):
    """Sum over T steps of what was sent, plus the final residual, is the sum of the
    gradients: nothing is lost, only delayed."""
    n, steps = 2500, 30
    codec = make_codec(scheme, n, np.float64, 0.02, seed=5)
    feedback = ErrorFeedback(codec)
    data = np.zeros(codec.nbytes, dtype=np.uint8)
    sent_total, grad_total, decoded = np.zeros(n), np.zeros(n), np.zeros(n)
    for t in range(steps):
        g = _grad(n, np.float64, seed=100 + t)
        grad_total += g
        feedback.compress(g, t, data)
        codec.decode(data, t, decoded)
        sent_total += decoded
    np.testing.assert_allclose(sent_total + feedback.residual, grad_total, rtol=0, atol=1e-9)
    if scheme in ("topk", "randomk", "sign"):   # they really do hold something back
        assert np.abs(feedback.residual).max() > 1e-3


@pytest.mark.parametrize("scheme", LOSSY)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gradients_stay_non_finite(scheme, bad):
    g = _grad(3000, np.float32, seed=6)
    g[1234] = bad
    _, out = _round_trip(scheme, g, ratio=0.01)
    assert not np.isfinite(out).all()


def test_compression_configuration_rules(tmp_path):
    with pytest.raises(ConfigError, match="hierarchical"):
        load_config(None, ["comm.compression='topk'", "comm.allreduce='hierarchical'"])
    with pytest.raises(ConfigError, match="sync_every"):
        load_config(None, ["train.sync_every=4", "mode='ps'"])
    with pytest.raises(ConfigError, match="sync_every"):
        load_config(None, ["train.sync_every=4", "comm.compression='fp16'"])
    with pytest.raises(ConfigError, match="topk_ratio"):
        load_config(None, ["comm.topk_ratio=0"])
    with pytest.raises(ConfigError, match="compression"):
        load_config(None, ["comm.compression='zip'"])
    cfg = load_config(None, ["comm.compression='sign'", "train.sync_every=1"])
    assert cfg.comm.compression == "sign" and cfg.comm.error_feedback
