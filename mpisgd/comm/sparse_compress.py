"""Compression of one rank's sparse gradient (sorted unique keys and their values).

A sparse step already sends only the keys it touched; ``comm.compression`` shrinks what
travels with them, as in dense jobs (:mod:`mpisgd.comm.compress`):

* ``fp16``, ``bf16``, ``sign``: every key, its values through the dense codec of that
  many entries (8 + 2m, 2m, or m/8 + 4 per 1024 bytes instead of 4m or 8m);
* ``topk``: the k = ceil(ratio * m) keys of largest magnitude, with their values;
* ``randomk``: k of the m keys drawn from (seed, step, rank), with their values. Unlike
  the dense codec the positions are not shared: each rank's keys differ anyway.

Error feedback is lazy, like the sparse optimizers: the residual of a key (what its
compression dropped) is kept in a vector of the model's width and added to that key's
gradient the next time a step of this rank touches the key. Over a run, the decoded
messages plus the residual sum to the gradients (to float rounding), as in dense jobs;
a key never touched again keeps its residual (it is in the checkpoint). The residual
costs 4 or 8 bytes per parameter on every rank, which the memory report shows.
"""

from __future__ import annotations

import math

import numpy as np

from mpisgd.comm.compress import make_codec

# Schemes that choose keys (their values travel as they are), and those that encode
# the values of every key through a dense codec.
CHOOSERS = ("topk", "randomk")


class SparseCompression:
    """One rank's compression of its steps' (key, value) pairs; see the module."""

    def __init__(self, scheme: str, width: int, dtype, ratio: float, seed: int, rank: int,
                 error_feedback: bool = True):
        self.scheme, self.dtype = scheme, np.dtype(dtype)
        self.ratio, self.seed, self.rank = ratio, seed, rank
        make_codec(scheme, 1, self.dtype, ratio, seed)   # the scheme and ratio, checked
        self.residual = np.zeros(width, dtype=self.dtype) if error_feedback else None

    def _codec(self, m: int):
        """The dense codec over a message's ``m`` values (fp16, bf16, sign)."""
        return make_codec(self.scheme, m, self.dtype, self.ratio, self.seed)

    def payload_bytes(self, m: int) -> int:
        """Bytes of the values of a message that carries ``m`` keys."""
        if self.scheme in CHOOSERS:
            return m * self.dtype.itemsize
        return self._codec(m).nbytes if m else 0

    def compress(self, keys: np.ndarray, vals: np.ndarray, step: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(the keys sent, the payload: uint8) for this rank's sorted unique ``keys`` and
        their ``vals``; the residual keeps what the payload drops."""
        if keys.size == 0:   # nothing to send (payload_bytes(0) == 0 for every scheme)
            return keys, np.empty(0, dtype=np.uint8)
        g = vals.astype(self.dtype, copy=True)
        if self.residual is not None:
            g += self.residual[keys]
        if self.scheme in CHOOSERS:
            chosen = self._choose(g, step)
            sent_keys, sent = keys[chosen], g[chosen]
            payload = sent.view(np.uint8)   # g[chosen] is already a copy
            if self.residual is not None:
                self.residual[keys] = g
                self.residual[sent_keys] = 0
            return sent_keys, payload
        codec = self._codec(keys.size)
        payload = np.empty(codec.nbytes, dtype=np.uint8)
        codec.encode(g, step, payload)
        if self.residual is not None:
            decoded = np.empty_like(g)
            codec.decode(payload, step, decoded)
            self.residual[keys] = g - decoded
        return keys, payload

    def decode(self, payload: np.ndarray, m: int, step: int) -> np.ndarray:
        """The ``m`` values a payload of ``payload_bytes(m)`` bytes carries."""
        if self.scheme in CHOOSERS:
            return payload.view(self.dtype).copy()
        out = np.empty(m, dtype=self.dtype)
        if m:
            self._codec(m).decode(payload, step, out)
        return out

    def _choose(self, g: np.ndarray, step: int) -> np.ndarray:
        """Positions (sorted) of the k entries sent."""
        m = g.size
        k = min(m, max(1, math.ceil(self.ratio * m))) if m else 0
        if k == m:
            return np.arange(m)
        if self.scheme == "topk":
            # NaN sorts last, as the largest: a diverging entry is always sent.
            chosen = np.argpartition(np.abs(g), m - k)[m - k:]
        else:
            rng = np.random.default_rng([self.seed, step, self.rank, 0x5EED])
            chosen = rng.choice(m, size=k, replace=False)
            if not np.isfinite(g).all():   # a NaN/Inf must still reach the divergence check
                chosen[0] = int(np.flatnonzero(~np.isfinite(g))[0])
                chosen = np.unique(chosen)
        chosen.sort()
        return chosen
