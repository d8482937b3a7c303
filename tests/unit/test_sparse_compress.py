"""Compression of sparse gradients (mpisgd/comm/sparse_compress.py) and the compressed
pairs exchange at one rank (mpisgd/comm/sparse_reduce.py)."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from mpisgd.comm.sparse_compress import SparseCompression
from mpisgd.comm.sparse_reduce import SparseReducer

pytestmark = pytest.mark.quick

WIDTH = 1000
SCHEMES = ("fp16", "bf16", "topk", "randomk", "sign")


def _step(rng, m=80):
    keys = np.sort(rng.choice(WIDTH, size=m, replace=False)).astype(np.int64)
    return keys, rng.normal(size=m).astype(np.float32)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sent_plus_residual_is_every_gradient(scheme):
    """Error feedback loses nothing: over 30 steps the decoded messages plus the
    residual sum to the gradients, key by key (float32 rounding)."""
    rng = np.random.default_rng(0)
    comp = SparseCompression(scheme, WIDTH, np.float32, 0.1, seed=3, rank=1)
    given = np.zeros(WIDTH)
    sent = np.zeros(WIDTH)
    for step in range(30):
        keys, vals = _step(rng)
        given[keys] += vals
        out_keys, payload = comp.compress(keys, vals, step)
        assert payload.nbytes == comp.payload_bytes(out_keys.size)
        assert np.isin(out_keys, keys).all() and (np.diff(out_keys) > 0).all()
        np.add.at(sent, out_keys, comp.decode(payload, out_keys.size, step))
    np.testing.assert_allclose(sent + comp.residual, given, atol=2e-5)


@pytest.mark.parametrize("scheme, ratio", [("fp16", 0.5), ("bf16", 0.5), ("topk", 0.2),
                                           ("randomk", 0.15), ("sign", 0.1)])
def test_payload_is_smaller_than_the_values(scheme, ratio):
    comp = SparseCompression(scheme, WIDTH, np.float32, 0.1, seed=0, rank=0)
    keys, vals = _step(np.random.default_rng(1), m=800)
    out_keys, payload = comp.compress(keys, vals, 0)
    assert payload.nbytes <= ratio * vals.nbytes + 8


def test_topk_sends_the_largest_and_keeps_the_rest_for_later():
    comp = SparseCompression("topk", WIDTH, np.float64, 0.25, seed=0, rank=0)
    keys = np.array([3, 10, 11, 500], dtype=np.int64)
    vals = np.array([0.1, -4.0, 0.2, 0.3])
    out_keys, payload = comp.compress(keys, vals, 0)
    assert out_keys.tolist() == [10]
    assert comp.decode(payload, 1, 0).tolist() == [-4.0]
    assert comp.residual[[3, 11, 500]].tolist() == [0.1, 0.2, 0.3]
    # the next step that touches key 500 adds its residual: now the largest
    out_keys, payload = comp.compress(np.array([500], dtype=np.int64), np.array([0.05]), 1)
    assert out_keys.tolist() == [500] and comp.decode(payload, 1, 1)[0] == pytest.approx(0.35)


@pytest.mark.parametrize("scheme", ["topk", "randomk", "fp16", "sign"])
def test_a_nan_is_always_sent(scheme):
    comp = SparseCompression(scheme, WIDTH, np.float32, 0.01, seed=0, rank=0)
    keys, vals = _step(np.random.default_rng(2), m=500)
    vals[123] = np.nan
    out_keys, payload = comp.compress(keys, vals, 0)
    assert np.isnan(comp.decode(payload, out_keys.size, 0)).any()


def test_without_error_feedback_there_is_no_residual():
    comp = SparseCompression("topk", WIDTH, np.float32, 0.1, seed=0, rank=0,
                             error_feedback=False)
    assert comp.residual is None
    keys, vals = _step(np.random.default_rng(3))
    out_keys, _ = comp.compress(keys, vals, 0)
    assert out_keys.size == 8


def test_the_reducer_at_one_rank_returns_the_decoded_pairs():
    comp = SparseCompression("topk", WIDTH, np.float32, 0.5, seed=0, rank=0)
    reduce = SparseReducer(MPI.COMM_SELF, WIDTH, np.float32, "auto", 2, comp)
    assert reduce.residual is comp.residual
    keys = np.array([1, 2, 7, 9], dtype=np.int64)
    vals = np.array([1.0, -5.0, 0.5, 3.0], dtype=np.float32)
    out_keys, out_vals, head = reduce(keys, vals, np.array([2.0, 4.0]), step=0)
    assert out_keys.tolist() == [2, 9] and out_vals.tolist() == [-5.0, 3.0]
    assert head.tolist() == [2.0, 4.0]
    assert reduce.steps["pairs"] == 1
