"""The step's gradient finish (mean, L2 term, finiteness) in one compiled pass, against
the NumPy rule it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from mpisgd.kernels.finish import finish_mean


def numpy_rule(grad, count, theta, l2, mask):
    out = grad * (grad.dtype.type(1.0) / grad.dtype.type(count))
    if l2:
        out[mask] += grad.dtype.type(l2) * theta[mask]
    return out


def count_of(dtype):
    return dtype(384.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("l2", [0.0, 1e-3])
def test_matches_the_numpy_rule(dtype, l2):
    rng = np.random.default_rng(0)
    grad = (rng.standard_normal(10_001) * 100).astype(dtype)
    theta = rng.standard_normal(10_001).astype(dtype)
    mask = rng.random(10_001) < 0.9
    want = numpy_rule(grad, 384.0, theta, l2, mask)
    got = grad.copy()
    assert finish_mean(got, 384.0, theta, l2, mask) is True
    if l2 == 0:   # one rounding, the same one
        np.testing.assert_array_equal(got, want)
    else:   # the L2 term may fuse into one rounding (FMA): within two roundings of the terms
        terms = np.abs(grad / count_of(dtype)) + np.abs(dtype(l2) * theta) * mask
        assert (np.abs(got - want) <= 2 * np.finfo(dtype).eps * terms).all()
    # Elementwise: a slice finished alone equals that slice of the whole.
    part = grad[3000:7001].copy()
    finish_mean(part, 384.0, theta[3000:7001], l2, mask[3000:7001])
    np.testing.assert_array_equal(part, got[3000:7001])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_reports_a_non_finite_entry(bad):
    grad, theta, mask = np.ones(100), np.ones(100), np.ones(100, bool)
    grad[57] = bad
    assert finish_mean(grad, 2.0, theta, 0.1, mask) is False
    assert np.isnan(grad[57]) or np.isinf(grad[57])
    # An infinite parameter under l2 = 0 is not read (0 * inf would be NaN).
    theta[3] = np.inf
    assert finish_mean(np.ones(100), 2.0, theta, 0.0, mask) is True


def test_refuses_mismatched_arrays():
    g = np.ones(4)
    with pytest.raises(ValueError, match="finish_mean"):
        finish_mean(g, 1.0, np.ones(4, np.float32), 0.0, np.ones(4, bool))
    with pytest.raises(ValueError, match="finish_mean"):
        finish_mean(g, 1.0, np.ones(3), 0.0, np.ones(4, bool))
    with pytest.raises(ValueError, match="finish_mean"):
        finish_mean(g, 1.0, np.ones(4), 0.0, np.ones(4))
