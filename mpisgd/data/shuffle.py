"""Rows in a uniformly random order, for data larger than memory: a one-time shuffle at
conversion (``mpisgd data convert --shuffle SEED``).

Data stored in label or time order makes contiguous blocks of rows unlike the whole;
shuffled once, its blocks are as good as rows (``train.shuffle_block``). Two passes,
memory bounded by one bucket: every row goes to a uniformly drawn bucket (a file beside
the output), then each bucket is loaded, permuted and passed on in turn. Drawing buckets
uniformly and permuting each uniformly gives a uniformly random permutation of all rows.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from typing import Iterable, Iterator

import numpy as np

from mpisgd.data.csr import CsrBlock, concat
from mpisgd.errors import OutputError

# A bucket's rows must fit in memory at once: about this many bytes of X.
BUCKET_BYTES = 256 << 20


def shuffled(blocks: Iterable[tuple[np.ndarray, np.ndarray]], seed: int, n_rows: int | None,
             row_bytes: int | None, scratch_beside: str,
             bucket_bytes: int = BUCKET_BYTES) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The rows of ``blocks`` (X, y pairs; X dense or a CsrBlock) in a random order fixed
    by ``seed``.

    ``n_rows`` (None: unknown) and ``row_bytes`` (None: measured on the first block, for
    CSR rows) size the buckets; the scratch folder is made beside ``scratch_beside``
    (the same file system as the output) and removed at the end, also on error.
    """
    blocks = iter(blocks)
    first = next(blocks, None)
    if first is None:
        return
    if row_bytes is None:
        X = first[0]
        row_bytes = max(1, (X.indices.nbytes + X.values.nbytes) // max(1, len(X))) + 16
    blocks = itertools.chain([first], blocks)
    n_buckets = max(1, -(-(n_rows or 0) * row_bytes // bucket_bytes)) if n_rows else 16
    rng = np.random.default_rng([seed, 7])
    parent = os.path.dirname(os.path.abspath(scratch_beside))
    try:
        scratch = tempfile.mkdtemp(prefix=".shuffle-", dir=parent)
    except OSError as exc:
        raise OutputError(f"cannot make a scratch folder in '{parent}' for --shuffle: "
                          f"{exc.strerror or exc}.") from None
    try:
        pieces = _scatter(blocks, rng, n_buckets, scratch)
        for bucket in range(n_buckets):
            parts = [np.load(p) for p in pieces[bucket]]
            if not parts:
                continue
            X = np.concatenate([p["X"] for p in parts]) if "X" in parts[0] else \
                concat([CsrBlock(p["indptr"], p["indices"], p["values"]) for p in parts])
            y = np.concatenate([p["y"] for p in parts])
            order = rng.permutation(len(y))
            yield X[order], y[order]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _scatter(blocks, rng: np.random.Generator, n_buckets: int,
             scratch: str) -> list[list[str]]:
    """Pass 1: each block's rows to uniformly drawn buckets, one .npz per (block, bucket)."""
    pieces: list[list[str]] = [[] for _ in range(n_buckets)]
    for k, (X, y) in enumerate(blocks):
        to = rng.integers(0, n_buckets, size=len(y))
        for bucket in range(n_buckets):
            pick = np.flatnonzero(to == bucket)
            if pick.size:
                path = os.path.join(scratch, f"{bucket}-{k}.npz")
                rows = X[pick]
                arrays = dict(X=rows) if isinstance(rows, np.ndarray) else dict(
                    indptr=rows.indptr, indices=rows.indices, values=rows.values)
                try:
                    np.savez(path, y=y[pick], **arrays)
                except OSError as exc:
                    raise OutputError(f"cannot write shuffle scratch file '{path}': "
                                      f"{exc.strerror or exc}.") from None
                pieces[bucket].append(path)
    return pieces
