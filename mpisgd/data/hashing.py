"""The hashing trick: strings to feature ids with a seeded 32-bit MurmurHash3.

``murmur3_32`` is MurmurHash3_x86_32 of the UTF-8 bytes, the hash scikit-learn's
``FeatureHasher`` and Vowpal Wabbit use, computed for a whole array of strings at once in
NumPy: the strings are laid out as rows of little-endian 32-bit words and the rounds run
column by column, each over the rows still that long. A feature's id is the hash's low
``bits`` bits, so ids fill [0, 2^bits) and any bits up to 32 give the same ids for the
same strings whatever the block, shard or machine.
"""

from __future__ import annotations

import numbers

import numpy as np

from mpisgd.errors import DataError

MAX_BITS = 32
_C1, _C2 = np.uint32(0xCC9E2D51), np.uint32(0x1B873593)
_M1, _M2 = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _scramble(k: np.ndarray) -> np.ndarray:
    return _rotl(k * _C1, 15) * _C2


def murmur3_32(keys, seed: int = 0) -> np.ndarray:
    """MurmurHash3_x86_32 of each string's UTF-8 bytes (bytes as they are), as uint32;
    equal to ``sklearn.utils.murmurhash3_32(key, seed, positive=True)``."""
    data = [k if isinstance(k, bytes) else str(k).encode("utf-8") for k in keys]
    n = len(data)
    h = np.full(n, np.uint32(seed & 0xFFFFFFFF), dtype=np.uint32)
    if n == 0:
        return h
    lengths = np.fromiter((len(b) for b in data), dtype=np.int64, count=n)
    width = max(4, -(-int(lengths.max()) // 4) * 4)
    # NumPy's fixed-width bytes pad with zeros, which is what the tail round reads.
    words = np.array(data, dtype=f"S{width}").view("<u4").reshape(n, width // 4)
    full, tail = lengths // 4, lengths % 4
    for j in range(width // 4):
        k = words[:, j].astype(np.uint32)
        body = full > j
        if body.any():
            x = h[body] ^ _scramble(k[body])
            h[body] = _rotl(x, 13) * np.uint32(5) + np.uint32(0xE6546B64)
        last = (full == j) & (tail > 0)
        if last.any():
            h[last] ^= _scramble(k[last])
    h ^= lengths.astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= _M1
    h ^= h >> np.uint32(13)
    h *= _M2
    h ^= h >> np.uint32(16)
    return h


def check_bits(bits) -> int:
    if not isinstance(bits, numbers.Integral) or isinstance(bits, bool) \
            or not 1 <= bits <= MAX_BITS:
        raise DataError(f"hash_features must be a number of bits in 1..{MAX_BITS} (2^bits "
                        f"features); found {bits!r}")
    return int(bits)


def hashed_ids(keys, seed: int, bits: int) -> np.ndarray:
    """Feature ids in [0, 2^bits) of ``keys`` (int64): the low bits of their hash."""
    mask = np.uint32((1 << bits) - 1 if bits < 32 else 0xFFFFFFFF)
    return (murmur3_32(keys, seed) & mask).astype(np.int64)
