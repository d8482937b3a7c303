"""Seeded synthetic datasets (linear, logistic, multiclass) in memory or as shard folders.

Rows are generated in fixed-size blocks; block i draws from its own stream
``SeedSequence(seed, spawn_key=(1, i))`` and the true parameters from
``SeedSequence(seed, spawn_key=(0,))``. The block size depends only on n_features, so
the data is a function of (kind, seed, n_rows, n_features, parameters) alone: the same
in memory and on disk, for any shard count and either dtype (float32 data is the
float64 data rounded).
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Iterator, NamedTuple

import numpy as np

from mpisgd.data.format import DatasetInfo, float_dtype, open_dataset
from mpisgd.data.write import FolderBuild, ShardWriter, shard_file_name
from mpisgd.errors import DataError

KINDS = ("linear", "logistic", "multiclass")
# float64 bytes of X per generated block: bounds memory (the block, its cast copy and
# the labels stay well under 64 MiB) whatever n_rows is.
GEN_BLOCK_BYTES = 16 << 20


class SynthData(NamedTuple):
    """Generated rows and the parameters that produced them."""

    X: np.ndarray
    y: np.ndarray
    true_w: np.ndarray  # (d,), or (d, C) for multiclass: logits = X @ W + b
    true_b: float | np.ndarray  # float, or (C,) for multiclass


def gen_block_rows(n_features: int) -> int:
    """Rows per generated block; fixed by n_features so the data never depends on sharding."""
    return max(1, GEN_BLOCK_BYTES // (8 * n_features))


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise DataError(f"synth: {name} must be an integer >= {minimum}; found {value!r}")
    return int(value)


def _check_params(kind, n_rows, n_features, n_classes, noise, separation, seed):
    if kind not in KINDS:
        raise DataError(f"synth: kind must be one of {', '.join(KINDS)}; found {kind!r}")
    _positive_int("n_rows", n_rows)
    _positive_int("n_features", n_features)
    _positive_int("seed", seed, minimum=0)
    if kind == "multiclass":
        _positive_int("n_classes", n_classes, minimum=2)
    if not (isinstance(noise, numbers.Real) and math.isfinite(noise) and noise >= 0):
        raise DataError(f"synth: noise must be a finite number >= 0; found {noise!r}")
    if not (isinstance(separation, numbers.Real) and math.isfinite(separation)
            and separation > 0):
        raise DataError(f"synth: separation must be a finite number > 0; found {separation!r}")


def _truth(kind: str, d: int, n_classes: int, separation: float, seed: int):
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    if kind == "linear":
        return rng.standard_normal(d), float(rng.standard_normal())
    # Scaled by 1/sqrt(d) so that X @ w has unit variance whatever d is; ``separation``
    # then sets how confidently the classes can be told apart.
    if kind == "logistic":
        w = separation * rng.standard_normal(d) / math.sqrt(d)
        return w, float(separation * 0.5 * rng.standard_normal())
    W = separation * rng.standard_normal((d, n_classes)) / math.sqrt(d)
    return W, separation * 0.5 * rng.standard_normal(n_classes)


def _blocks(kind, n_rows, n_features, noise, true_w, true_b, seed, dtype
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    step = gen_block_rows(n_features)
    for i, a in enumerate(range(0, n_rows, step)):
        m = min(step, n_rows - a)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, i)))
        X = rng.standard_normal((m, n_features))
        z = X @ true_w + true_b
        if kind == "linear":
            y = (z + noise * rng.standard_normal(m)).astype(dtype)
        elif kind == "logistic":
            # 0.5 * (1 + tanh(z/2)) is the sigmoid without overflow for large |z|.
            y = (rng.random(m) < 0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.int64)
        else:
            # Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits).
            y = np.argmax(z + rng.gumbel(size=z.shape), axis=1).astype(np.int64)
        yield X.astype(dtype, copy=False), y


def _make(kind, n_rows, n_features, n_classes, noise, separation, seed, dtype) -> SynthData:
    _check_params(kind, n_rows, n_features, n_classes, noise, separation, seed)
    dt = float_dtype(dtype, "synth")
    w, b = _truth(kind, n_features, n_classes, separation, seed)
    parts = list(_blocks(kind, n_rows, n_features, noise, w, b, seed, dt))
    X = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return SynthData(X, y, w, b)


def make_linear(n_rows: int, n_features: int, noise: float = 0.1, seed: int = 0,
                dtype="float32") -> SynthData:
    """X ~ N(0, 1), w ~ N(0, 1), b ~ N(0, 1), y = X w + b + noise * N(0, 1)."""
    return _make("linear", n_rows, n_features, 0, noise, 1.0, seed, dtype)


def make_logistic(n_rows: int, n_features: int, separation: float = 2.0, seed: int = 0,
                  dtype="float32") -> SynthData:
    """X ~ N(0, 1), y ~ Bernoulli(sigmoid(X w + b)) in {0, 1}.

    w ~ separation * N(0, 1/d) and b ~ separation * N(0, 1/4): larger ``separation``
    means fewer labels on the "wrong" side.
    """
    return _make("logistic", n_rows, n_features, 2, 0.0, separation, seed, dtype)


def make_multiclass(n_rows: int, n_features: int, n_classes: int = 3,
                    separation: float = 2.0, seed: int = 0, dtype="float32") -> SynthData:
    """X ~ N(0, 1), y ~ softmax(X W + b) in 0..C-1, W (d, C) ~ separation * N(0, 1/d)."""
    return _make("multiclass", n_rows, n_features, n_classes, 0.0, separation, seed, dtype)


def synth_to_folder(kind: str, folder, *, n_rows: int, n_features: int,
                    n_classes: int | None = None, noise: float = 0.1,
                    separation: float = 2.0, seed: int = 0, dtype="float32",
                    n_shards: int = 1, overwrite: bool = False) -> DatasetInfo:
    """Write a synthetic dataset as ``n_shards`` shards in ``folder``; return its info.

    Streams fixed-size blocks, so memory stays bounded for any ``n_rows``. The folder
    is built under a temporary name beside ``folder`` and renamed into place; if
    ``folder`` appears meanwhile (another process made it), that one is kept.
    ``noise`` applies to kind 'linear' only, ``separation`` to the classifiers.
    ``n_classes`` defaults to 3 for 'multiclass'; it is 0 / 2 for linear / logistic.
    """
    if kind == "multiclass":
        n_classes = 3 if n_classes is None else n_classes
    elif kind in KINDS:
        implied = 0 if kind == "linear" else 2
        if n_classes not in (None, implied):
            raise DataError(f"synth: kind '{kind}' has n_classes={implied}; found "
                            f"n_classes={n_classes!r}")
        n_classes = implied
    _check_params(kind, n_rows, n_features, n_classes, noise, separation, seed)
    n_shards = _positive_int("n_shards", n_shards)
    if n_shards > n_rows:
        raise DataError(f"synth: n_shards={n_shards} is more than n_rows={n_rows}; every "
                        "shard needs at least one row")
    dt = float_dtype(dtype, "synth")
    task = {"linear": "regression", "logistic": "binary", "multiclass": "multiclass"}[kind]
    w, b = _truth(kind, n_features, n_classes, separation, seed)
    bounds = [k * n_rows // n_shards for k in range(n_shards + 1)]
    with FolderBuild(folder, overwrite=overwrite) as build:
        blocks = _blocks(kind, n_rows, n_features, noise, w, b, seed, dt)
        X, y, pos = None, None, 0  # the current block and the next unwritten row in it
        for k in range(n_shards):
            need = bounds[k + 1] - bounds[k]
            path = os.path.join(build.path, shard_file_name(k, n_shards))
            with ShardWriter(path, n_features, task, n_classes, dt, true_w=w, true_b=b,
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
