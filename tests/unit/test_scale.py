"""Standardisation's pure parts (mpisgd.data.scale): moments of blocks and their merge
against NumPy and scikit-learn's StandardScaler, badly conditioned features, the packed
record ranks exchange, and the spread ratio behind the warning."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

from mpisgd.data.scale import Moments, Scaler, block_rows, moments_of, spread_ratio


def _merged(X: np.ndarray, cuts) -> Moments:
    """The moments of X's row ranges between ``cuts``, merged left to right."""
    edges = [0, *cuts, len(X)]
    out = Moments.empty(X.shape[1])
    for a, b in zip(edges[:-1], edges[1:]):
        out = out.merge(Moments.of(X[a:b]))
    return out


def test_breast_cancer_scaler_equals_standard_scaler_however_the_rows_are_split():
    X, _ = load_breast_cancer(return_X_y=True)
    sk = StandardScaler().fit(X)
    rng = np.random.default_rng(0)
    for cuts in ([], [1], [100, 101, 102], sorted(rng.choice(len(X), 7, replace=False))):
        s = _merged(X, cuts).scaler()
        np.testing.assert_allclose(s.mean, sk.mean_, rtol=1e-13)
        np.testing.assert_allclose(s.scale, sk.scale_, rtol=1e-13)
        np.testing.assert_allclose(s.transform(X), sk.transform(X), rtol=0, atol=1e-12)


def test_merge_is_order_independent_up_to_rounding():
    X = np.random.default_rng(1).standard_normal((500, 6)) * [1, 10, 1e-3, 5, 2, 1e4]
    parts = [Moments.of(X[a:a + 50]) for a in range(0, 500, 50)]
    left = Moments.empty(6)
    for p in parts:
        left = left.merge(p)
    while len(parts) > 1:   # a tree, as a reduction may group them
        parts = [parts[i].merge(parts[i + 1]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    tree = parts[0]
    assert left.n == tree.n == 500
    np.testing.assert_allclose(left.mean, tree.mean, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(left.m2, tree.m2, rtol=1e-12)
    np.testing.assert_array_equal(left.lo, X.min(axis=0))
    np.testing.assert_array_equal(left.hi, X.max(axis=0))


def test_a_mean_far_larger_than_the_spread_keeps_the_spread():
    """Sums of squares would lose every digit here (1e18 against 1): deviations keep them."""
    rng = np.random.default_rng(2)
    offset = 1e9
    X = offset + rng.standard_normal((3000, 2))   # the subtraction below is exact
    want = np.std(X - offset, axis=0)
    naive = np.sqrt(np.maximum((X * X).mean(axis=0) - X.mean(axis=0) ** 2, 0))
    assert np.all(np.abs(naive - want) / want > 1e-3)   # the test case is hard
    for cuts in ([], [1000, 1001, 2500]):
        m = _merged(X, cuts)
        # merging, block means near 1e9 differ by ~0.03 known to ~1e-7: 1e-8 relative
        np.testing.assert_allclose(m.std(), want, rtol=1e-8)
        # the mean itself is a float near 1e9: right to its last bit or so
        np.testing.assert_allclose(m.mean - offset, np.mean(X - offset, axis=0),
                                   rtol=0, atol=2 * np.spacing(offset))


def test_float32_rows_accumulate_in_float64():
    X32 = (np.random.default_rng(3).standard_normal((20000, 3)) * 100 + 1e3).astype(np.float32)
    m = moments_of(X32)
    X64 = X32.astype(np.float64)
    np.testing.assert_allclose(m.mean, X64.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(m.std(), X64.std(axis=0), rtol=1e-12)


def test_constant_features_keep_scale_one_as_in_scikit_learn():
    X = np.random.default_rng(4).standard_normal((40, 3))
    X[:, 1] = 0.1   # 0.1 is not exact in binary: its float mean may differ by rounding
    m = _merged(X, [13, 14])
    s = m.scaler()
    assert s.scale[1] == 1.0 and StandardScaler().fit(X).scale_[1] == 1.0
    assert np.all(s.transform(X)[:, 1] == 0.0)
    assert m.constant().tolist() == [False, True, False]


def test_moments_of_selected_rows_in_blocks():
    X = np.random.default_rng(5).standard_normal((3000, 2000))
    rows = np.flatnonzero(np.random.default_rng(6).random(3000) < 0.7)
    assert block_rows(2000) < rows.size   # several blocks
    m = moments_of(X, rows)
    np.testing.assert_allclose(m.mean, X[rows].mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(m.std(), X[rows].std(axis=0), rtol=1e-12)
    assert m.n == rows.size


def test_packed_record_round_trips_and_empty_moments_merge_to_nothing():
    X = np.random.default_rng(7).standard_normal((10, 4))
    m = Moments.of(X)
    back = Moments.unpack(m.pack())
    assert m.pack().size == 4 * 4 + 1 and back.n == 10
    for a, b in ((m.mean, back.mean), (m.m2, back.m2), (m.lo, back.lo), (m.hi, back.hi)):
        np.testing.assert_array_equal(a, b)
    empty = Moments.empty(4)
    for merged in (empty.merge(m), m.merge(empty)):
        np.testing.assert_array_equal(merged.pack(), m.pack())
    assert Moments.of(X[:0]).n == 0
    with pytest.raises(ValueError, match="no rows"):
        empty.scaler()
    with pytest.raises(ValueError, match="4 d \\+ 1"):
        Moments.unpack(np.zeros(6))


def test_non_finite_rows_are_named_not_turned_into_a_scaler():
    X = np.random.default_rng(8).standard_normal((10, 3))
    X[4, 2] = np.nan
    m = Moments.of(X[:5]).merge(Moments.of(X[5:]))
    assert m.bad_features().tolist() == [2]
    with pytest.raises(ValueError, match="finite"):
        m.scaler()


def test_transform_in_place_keeps_the_dtype():
    s = Scaler([1.0, 2.0], [2.0, 4.0])
    X = np.array([[3.0, 2.0], [1.0, 10.0]], dtype=np.float32)
    out = s.transform(X, out=X)
    assert out is X and X.dtype == np.float32
    np.testing.assert_array_equal(X, [[1.0, 0.0], [0.0, 2.0]])


def test_spread_ratio_over_non_constant_features():
    rng = np.random.default_rng(9)
    X = rng.standard_normal((1000, 4)) * [1.0, 1e4, 1.0, 3.0]
    X[:, 2] = 7.0   # constant: no spread to compare
    ratio, wide, narrow = spread_ratio(moments_of(X))
    assert (wide, narrow) == (1, 0)
    assert ratio == pytest.approx(X[:, 1].std() / X[:, 0].std(), rel=1e-12)
    assert spread_ratio(moments_of(X[:, 2:3])) == (1.0, -1, -1)
