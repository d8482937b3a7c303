"""Seeded synthetic sparse data (``data synth --kind sparse``): Zipf-distributed feature
ids, logistic labels from a sparse true weight vector, written as CSR shards.

Each row draws ``nnz`` feature ids from a power law over [0, n_features): id ``j`` comes
with probability about proportional to ``(j + 1) ** -zipf``, so the first few features
are in most rows and most features in few (repeats within a row merge, so a row holds
at most ``nnz``). Values are uniform on (0, 2]. The true weight of feature ``j`` is a
function of ``j`` and the seed (:func:`true_weights`: a seeded hash, non-zero for a
``DENSITY`` share of the ids), so no array of n_features entries is ever made and any
count up to 2^32 works. ``y ~ Bernoulli(sigmoid(x . w + b))``.

Rows come in blocks of a size fixed by ``nnz``; block i draws from
``SeedSequence(seed, spawn_key=(1, i))`` and ``b`` from ``spawn_key=(0,)``, so the data
is fixed by the seed and the parameters, whatever the shard count.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Iterator

import numpy as np

from mpisgd.data.csr import CsrBlock
from mpisgd.data.csr_write import CsrShardWriter
from mpisgd.data.format import DatasetInfo, float_dtype, open_dataset
from mpisgd.data.write import FolderBuild, shard_file_name
from mpisgd.errors import DataError

MAX_FEATURES = 1 << 32
DENSITY = 0.25          # share of the features with a non-zero true weight
GEN_DRAWS = 1 << 20     # feature draws per generated block: bounds memory
TRUE_W_MAX = 1 << 16    # true_w is stored in the shards up to this many features
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: uint64 to uniformly scattered uint64."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _unit(h: np.ndarray) -> np.ndarray:
    """uint64 to float64 in [0, 1)."""
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def weight_scale(nnz: int, separation: float, density: float = DENSITY) -> float:
    """The true weights' spread: a row's ``x . w`` then has a spread of about
    ``separation`` (nnz values with E[v^2] = 4/3, a ``density`` share weighted)."""
    return separation / math.sqrt(nnz * density * 4.0 / 3.0)


def true_weights(ids, seed: int, scale: float, density: float = DENSITY) -> np.ndarray:
    """The true weight of each feature id: ``scale * N(0, 1)`` for a ``density`` share
    of the ids (picked by a hash of the id and the seed), 0 for the others."""
    key = np.random.SeedSequence(seed, spawn_key=(2,)).generate_state(1, np.uint64)[0]
    h1 = _mix(np.asarray(ids).astype(np.uint64) ^ key)
    h2 = _mix(h1 + _GOLDEN)
    h3 = _mix(h2 + _GOLDEN)
    normal = np.sqrt(-2.0 * np.log(_unit(h2) + 2.0 ** -54)) * np.cos(2 * np.pi * _unit(h3))
    return np.where(_unit(h1) < density, scale * normal, 0.0)


def true_bias(seed: int, separation: float) -> float:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    return float(separation * 0.5 * rng.standard_normal())


def zipf_ids(u: np.ndarray, n_features: int, zipf: float) -> np.ndarray:
    """Feature ids from uniforms ``u``: the inverse distribution function of a power
    law of exponent ``zipf`` on [1, n_features + 1), floored and shifted to 0."""
    top = n_features + 1.0
    if abs(zipf - 1.0) < 1e-9:
        x = top ** u
    else:
        a = 1.0 - zipf
        x = (1.0 + u * (top ** a - 1.0)) ** (1.0 / a)
    return np.clip(np.floor(x).astype(np.int64) - 1, 0, n_features - 1)


def sparse_block_rows(nnz: int) -> int:
    """Rows per generated block; fixed by nnz so the data never depends on sharding."""
    return max(1, GEN_DRAWS // nnz)


def sparse_blocks(n_rows: int, n_features: int, nnz: int, zipf: float = 1.1,
                  separation: float = 2.0, seed: int = 0, dtype="float32"
                  ) -> Iterator[tuple[CsrBlock, np.ndarray]]:
    """The generated rows as (CsrBlock, y) blocks."""
    scale, b = weight_scale(nnz, separation), true_bias(seed, separation)
    step = sparse_block_rows(nnz)
    for i, a in enumerate(range(0, n_rows, step)):
        m = min(step, n_rows - a)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, i)))
        ids = np.sort(zipf_ids(rng.random((m, nnz)), n_features, zipf), axis=1)
        vals = 2.0 - 2.0 * rng.random((m, nnz))
        first = np.ones((m, nnz), dtype=bool)
        first[:, 1:] = ids[:, 1:] != ids[:, :-1]
        counts = first.sum(axis=1)
        ids, vals = ids[first], vals[first]
        rows = np.repeat(np.arange(m), counts)
        z = np.bincount(rows, weights=vals * true_weights(ids, seed, scale), minlength=m) + b
        y = (rng.random(m) < 0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.int64)
        yield CsrBlock(np.concatenate([[0], np.cumsum(counts)]), ids, vals.astype(dtype)), y


def _check(n_rows, n_features, nnz, zipf, separation, seed, n_shards) -> None:
    for name, value, low, high in (("n_rows", n_rows, 1, None),
                                   ("n_features", n_features, 1, MAX_FEATURES),
                                   ("nnz", nnz, 1, None), ("seed", seed, 0, None),
                                   ("n_shards", n_shards, 1, n_rows)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) \
                or value < low or (high is not None and value > high):
            raise DataError(f"synth: {name} must be an integer in {low}.."
                            f"{'' if high is None else high}; found {value!r}"
                            + ("; every shard needs at least one row" if name == "n_shards"
                               else ""))
    for name, value in (("zipf", zipf), ("separation", separation)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise DataError(f"synth: {name} must be a finite number > 0; found {value!r}")


def sparse_to_folder(folder, *, n_rows: int, n_features: int, nnz: int, zipf: float = 1.1,
                     separation: float = 2.0, seed: int = 0, dtype="float32",
                     n_shards: int = 1, overwrite: bool = False) -> DatasetInfo:
    """Write a synthetic sparse binary dataset as ``n_shards`` CSR shards in ``folder``
    (built beside it and renamed into place); return its info. ``true_w`` is stored
    when n_features <= TRUE_W_MAX, else given by :func:`true_weights`."""
    _check(n_rows, n_features, nnz, zipf, separation, seed, n_shards)
    dt = float_dtype(dtype, "synth")
    b = true_bias(seed, separation)
    w = true_weights(np.arange(n_features), seed, weight_scale(nnz, separation)) \
        if n_features <= TRUE_W_MAX else None
    bounds = [k * n_rows // n_shards for k in range(n_shards + 1)]
    with FolderBuild(folder, overwrite=overwrite) as build:
        blocks = sparse_blocks(n_rows, n_features, nnz, zipf, separation, seed, dt)
        X, y, pos = None, None, 0  # the current block and the next unwritten row in it
        for k in range(n_shards):
            need = bounds[k + 1] - bounds[k]
            path = os.path.join(build.path, shard_file_name(k, n_shards))
            with CsrShardWriter(path, n_features, "binary", 2, dt, true_w=w, true_b=b,
                                expected_rows=need) as writer:
                while need:
                    if X is None or pos == len(X):
                        X, y = next(blocks)
                        pos = 0
                    take = min(need, len(X) - pos)
                    writer.append(X[pos:pos + take], y[pos:pos + take])
                    pos += take
                    need -= take
    return open_dataset(folder)
