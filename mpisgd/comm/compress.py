"""Gradient compression for transport, with error feedback.

A codec turns a gradient of ``n`` entries into a fixed number of bytes (``nbytes``) and
back. Fixed sizes keep every exchange a plain buffer message (an ``Allgather`` of equal
blocks, a parameter-server push of a preallocated size): no pickling, no size handshake.

* ``fp16``: a power-of-two scale (so scaling is exact) brings the largest magnitude to
  2^14, then IEEE half precision: 11 significant bits and no overflow, whatever the
  magnitude of the gradient sum. 8 + 2n bytes.
* ``bf16``: the top 16 bits of float32, rounded to nearest even (NaN kept NaN). 2n bytes.
* ``topk``: the k = ceil(ratio * n) entries of largest magnitude, as int32 indices and
  values. k * (4 + itemsize) bytes.
* ``randomk``: k entries at positions drawn from (seed, step), the same on every rank and
  server, so only values travel and the values of all ranks can be summed densely (one
  ``Allreduce`` of k values). k * itemsize bytes.
* ``sign``: one bit per entry and a float32 scale per chunk of ``SIGN_CHUNK`` entries,
  the chunk's mean magnitude, so a chunk decodes to sign x scale and keeps its L1 norm.
  (n + 7) // 8 + 4 * chunks bytes, rounded up to 8.

Every codec propagates NaN and Inf (a diverging run still stops with a clear error).
:class:`ErrorFeedback` keeps, per rank, what the codec dropped and adds it to the next
gradient, so over T steps the decoded messages plus the final residual sum exactly to the
gradients (up to float rounding): compressed SGD then converges like SGD (Karimireddy et
al., 2019, "Error feedback fixes SignSGD").
"""

from __future__ import annotations

import math

import numpy as np

SCHEMES = ("none", "fp16", "bf16", "topk", "randomk", "sign")
SIGN_CHUNK = 1024


class Codec:
    """Encode ``n`` entries of ``dtype`` into ``nbytes`` bytes; decode back (lossy)."""

    name = "none"
    summable = False   # True: encodings of several ranks add up as the arrays they decode to

    def __init__(self, n: int, dtype, ratio: float = 0.01, seed: int = 0):
        self.n = int(n)
        self.dtype = np.dtype(dtype)
        self.ratio, self.seed = ratio, seed
        self.nbytes = self._size()

    def _size(self) -> int:
        raise NotImplementedError

    def encode(self, g: np.ndarray, step: int, out: np.ndarray) -> None:
        """Write the encoding of ``g`` (n entries) into ``out`` (nbytes uint8)."""
        raise NotImplementedError

    def decode(self, data: np.ndarray, step: int, out: np.ndarray) -> None:
        """Overwrite ``out`` (n entries) with what ``data`` decodes to."""
        raise NotImplementedError

    def decode_add(self, data: np.ndarray, step: int, out: np.ndarray,
                   tmp: np.ndarray) -> None:
        """``out += decode(data)``; ``tmp`` is n entries of scratch."""
        self.decode(data, step, tmp)
        out += tmp


def _k(n: int, ratio: float) -> int:
    return min(n, max(1, math.ceil(ratio * n))) if n else 0


class FP16(Codec):
    name = "fp16"

    def _size(self) -> int:
        return 8 + 2 * self.n

    def encode(self, g, step, out):
        top = float(np.max(np.abs(g))) if self.n else 0.0
        if not math.isfinite(top):
            scale = math.nan   # every entry decodes to NaN: the divergence is reported
        elif top == 0.0:
            scale = 1.0
        else:
            # A power of two putting the largest magnitude in [2^14, 2^15), below 65504
            # (the largest half): g / scale and back are exact, only the cast rounds.
            scale = 2.0 ** (math.frexp(top)[1] - 15)
        out[:8].view(np.float64)[0] = scale
        half = out[8:].view(np.float16)
        np.divide(g, scale, out=half, casting="unsafe")

    def decode(self, data, step, out):
        scale = data[:8].view(np.float64)[0]
        np.multiply(data[8:].view(np.float16), scale, out=out, casting="unsafe")


class BF16(Codec):
    name = "bf16"

    def _size(self) -> int:
        return 2 * self.n

    def encode(self, g, step, out):
        bits = np.ascontiguousarray(g, dtype=np.float32).view(np.uint32)
        # Round to nearest even on the 16 bits dropped; NaN would round into Inf or the
        # sign bit, so it is written as the canonical quiet NaN instead.
        rounded = (bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16
        rounded = np.where(np.isnan(g), 0x7FC0, rounded)
        out.view(np.uint16)[:] = rounded

    def decode(self, data, step, out):
        wide = data.view(np.uint16).astype(np.uint32) << 16
        np.copyto(out, wide.view(np.float32), casting="unsafe")


class TopK(Codec):
    name = "topk"

    def _size(self) -> int:
        self.k = _k(self.n, self.ratio)
        return self.k * (4 + self.dtype.itemsize)

    def _split(self, data):
        return data[:4 * self.k].view(np.int32), data[4 * self.k:].view(self.dtype)

    def encode(self, g, step, out):
        idx, vals = self._split(out)
        if self.k == self.n:
            chosen = np.arange(self.n)
        else:
            # NaN sorts last, as the largest: a diverging entry is always sent.
            chosen = np.argpartition(np.abs(g), self.n - self.k)[self.n - self.k:]
            chosen.sort()
        idx[:] = chosen
        vals[:] = g[chosen]

    def decode(self, data, step, out):
        idx, vals = self._split(data)
        out[:] = 0
        out[idx] = vals

    def decode_add(self, data, step, out, tmp):
        idx, vals = self._split(data)
        out[idx] += vals   # indices are distinct within one encoding


class RandomK(Codec):
    name = "randomk"
    summable = True

    def _size(self) -> int:
        self.k = _k(self.n, self.ratio)
        self._step, self._positions = None, None
        return self.k * self.dtype.itemsize

    def positions(self, step: int) -> np.ndarray:
        """The k positions of ``step``: a function of (seed, step) only. Kept for the
        step, which encodes, decodes its own message and decodes everyone's with them."""
        if step != self._step:
            rng = np.random.default_rng([self.seed, step, 0x5EED])
            self._positions = np.sort(rng.choice(self.n, size=self.k, replace=False))
            self._step = step
        return self._positions

    def encode(self, g, step, out):
        values = out.view(self.dtype)
        values[:] = g[self.positions(step)]
        if self.k and not np.isfinite(g.sum()):
            values[0] = np.nan   # a NaN/Inf elsewhere must still reach the divergence check

    def decode(self, data, step, out):
        out[:] = 0
        out[self.positions(step)] = data.view(self.dtype)

    def decode_add(self, data, step, out, tmp):
        out[self.positions(step)] += data.view(self.dtype)


class Sign(Codec):
    name = "sign"

    def _size(self) -> int:
        self.chunks = -(-self.n // SIGN_CHUNK)
        bits = (self.n + 7) // 8
        return -(-(4 * self.chunks + bits) // 8) * 8

    def _split(self, data):
        scales = data[:4 * self.chunks].view(np.float32)
        return scales, data[4 * self.chunks:4 * self.chunks + (self.n + 7) // 8]

    def encode(self, g, step, out):
        scales, bits = self._split(out)
        mag = np.abs(g)
        full = self.n // SIGN_CHUNK * SIGN_CHUNK
        if full:
            scales[:full // SIGN_CHUNK] = mag[:full].reshape(-1, SIGN_CHUNK).mean(axis=1)
        if full < self.n:
            scales[-1] = mag[full:].mean()
        bits[:] = np.packbits(np.signbit(g))   # 1: negative

    def decode(self, data, step, out):
        scales, bits = self._split(data)
        negative = np.unpackbits(bits, count=self.n).astype(bool)
        np.copyto(out, np.repeat(scales, SIGN_CHUNK)[:self.n], casting="unsafe")
        np.negative(out, out=out, where=negative)


_CODECS = {c.name: c for c in (FP16, BF16, TopK, RandomK, Sign)}


def make_codec(scheme: str, n: int, dtype, ratio: float = 0.01, seed: int = 0) -> Codec | None:
    """The codec for ``scheme`` over ``n`` entries; None for ``"none"``."""
    if scheme == "none":
        return None
    if scheme not in _CODECS:
        raise ValueError(f"The 'scheme' parameter must be one of {SCHEMES}. Got {scheme!r}.")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"The 'ratio' parameter must be in (0, 1]. Got {ratio!r} instead.")
    return _CODECS[scheme](n, dtype, ratio, seed)


class ErrorFeedback:
    """One rank's compression of a stream of gradients, with its residual.

    ``compress(g, step, out)`` adds the residual to ``g`` in place, encodes it into
    ``out`` and keeps what the encoding lost as the next residual. ``enabled = False``
    drops the loss instead (plain compressed SGD).
    """

    def __init__(self, codec: Codec, enabled: bool = True):
        self.codec = codec
        self.residual = np.zeros(codec.n, dtype=codec.dtype) if enabled else None
        self._sent = np.empty(codec.n, dtype=codec.dtype)

    def compress(self, g: np.ndarray, step: int, out: np.ndarray) -> None:
        if self.residual is None:
            self.codec.encode(g, step, out)
            return
        g += self.residual
        self.codec.encode(g, step, out)
        self.codec.decode(out, step, self._sent)
        np.subtract(g, self._sent, out=self.residual)
