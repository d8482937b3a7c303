"""Chunks of rows and who computes them: pure functions of (dataset, config, seed, step).

With ``data.placement = "storage"`` the unit of work is a chunk: ``data.chunk_rows``
consecutive rows of one shard (a shard's last chunk may be shorter; chunks never cross
shards, so a chunk is one contiguous read of one file).

The global minibatch stays well defined under every assignment policy: an epoch visits
the chunks in a seeded permutation (``train.shuffle``; ``locality`` deals it by node),
and step s of the epoch is the next ``chunks_per_step`` of them; that set depends on
(seed, epoch, step) and the layout only. The
assignment decides only *which worker* computes each chunk of the step:

* ``static``: contiguous ranges of the step's chunk list, worker by worker;
* ``random``: the same after a seeded permutation of the step's list (reproducible);
* ``locality``: the epoch order is dealt round-robin from each node's chunks
  (``locality_order``), so a step holds each node's share of its local chunks; each node
  first takes the chunks stored on it (``node`` in the dataset manifest), up to its share
  of the step (by worker count); the rest fill the nodes still short, in node order;
  within a node, contiguous ranges per worker. (The steps' chunk sets are stratified by
  node, so results differ from the other policies' by more than rounding.)
* ``balanced``: workers take the next chunk of the step from a shared counter as they
  finish (``BalancedCounter``), so a fast worker does more; the set is the same, who
  computed what is not, so results are reproducible up to floating-point summation order.

Every chunk of a step is computed exactly once, so every training row is used exactly
once per epoch, whatever the policy, world size or speed of the workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpisgd.data.partition import block_range


@dataclass(frozen=True)
class ChunkTable:
    """Global chunks: rows ``[lo[c], hi[c])`` in shard ``shard[c]``; ``node[c]`` the node
    storing that shard (-1: shared storage)."""

    lo: np.ndarray
    hi: np.ndarray
    shard: np.ndarray
    node: np.ndarray

    @property
    def n(self) -> int:
        return int(self.lo.size)


def chunk_table(offsets, chunk_rows: int, nodes=None) -> ChunkTable:
    """Chunks of every shard, in shard order. ``offsets``: first global row of each shard
    and the total (DatasetInfo.offsets); ``nodes``: each shard's node or None."""
    lo, hi, shard = [], [], []
    for s in range(len(offsets) - 1):
        starts = np.arange(offsets[s], offsets[s + 1], chunk_rows, dtype=np.int64)
        lo.append(starts)
        hi.append(np.minimum(starts + chunk_rows, offsets[s + 1]))
        shard.append(np.full(starts.size, s, dtype=np.int64))
    lo, hi, shard = (np.concatenate(a) for a in (lo, hi, shard))
    node_of = np.array([-1 if nodes is None or nodes[s] is None else nodes[s]
                        for s in range(len(offsets) - 1)], dtype=np.int64)
    return ChunkTable(lo=lo, hi=hi, shard=shard, node=node_of[shard])


def chunks_per_step(n_chunks: int, batch_rows: int, chunk_rows: int) -> int:
    """Chunks in one global step: batch_rows / chunk_rows (at least 1); 0: all (GD)."""
    if batch_rows == 0:
        return n_chunks
    return min(n_chunks, max(1, batch_rows // chunk_rows))


def epoch_order(n_chunks: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order the epoch visits the chunks: a function of (seed, epoch) only."""
    if not shuffle:
        return np.arange(n_chunks, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 2, epoch])))
    return rng.permutation(n_chunks).astype(np.int64, copy=False)


def locality_order(table: ChunkTable, worker_nodes: np.ndarray, seed: int, epoch: int,
                   shuffle: bool, per_step: int) -> np.ndarray:
    """``locality``'s epoch order: each node's chunks (and the shared ones) shuffled
    apart, then dealt step by step, each node its share of the step (``node_quota``).

    So a step holds each node's share of chunks stored on that node, and the step-level
    assignment gives them to workers on their own node; a node whose chunks run out is
    dealt others' (remote) chunks. A function of (seed, epoch) and the layout only.
    """
    base = epoch_order(table.n, seed, epoch, shuffle)
    nodes = np.unique(worker_nodes)
    where = table.node[base]
    lists = [list(base[where == n]) for n in nodes]
    spare = list(base[~np.isin(where, nodes)])
    order: list[int] = []
    spe = -(-table.n // per_step)
    for k in range(spe):
        quota = node_quota(min(per_step, table.n - k * per_step), worker_nodes, epoch * spe + k)
        for i in range(nodes.size):
            take = lists[i][:quota[i]]
            del lists[i][:quota[i]]
            for _ in range(quota[i] - len(take)):   # this node's own chunks ran out
                donor = spare if spare else max(lists, key=len)
                if donor:
                    take.append(donor.pop(0))
            order.extend(take)
    return np.asarray(order, dtype=np.int64)


def node_quota(n_chunks: int, worker_nodes: np.ndarray, step: int) -> list[int]:
    """Chunks of a step of ``n_chunks`` each node computes: its workers' static shares,
    rotated by step so that, when a step has fewer chunks than workers, every node
    gets its turn (and with it its own chunks)."""
    nodes = np.unique(worker_nodes)
    w = worker_nodes.size
    shares = np.array([np.subtract(*block_range(n_chunks, w, i)[::-1]) for i in range(w)])
    shares = np.roll(shares, (step * n_chunks) % w)
    return [int(shares[worker_nodes == n].sum()) for n in nodes]


def step_chunks(order: np.ndarray, per_step: int, step_in_epoch: int) -> np.ndarray:
    """The chunks of the epoch's step ``step_in_epoch`` (the last step may have fewer)."""
    return order[step_in_epoch * per_step:(step_in_epoch + 1) * per_step]


def assign(policy: str, chunks: np.ndarray, table: ChunkTable, worker_nodes: np.ndarray,
           worker: int, seed: int, step: int) -> np.ndarray:
    """The chunks of one step that ``worker`` (0-based among the workers) computes.

    ``worker_nodes[w]`` is the node index of worker w. Not for ``balanced`` (dynamic).
    """
    n_workers = worker_nodes.size
    if policy == "static":
        a, b = block_range(chunks.size, n_workers, worker)
        return chunks[a:b]
    if policy == "random":
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 3, step])))
        mixed = chunks[rng.permutation(chunks.size)]
        a, b = block_range(chunks.size, n_workers, worker)
        return mixed[a:b]
    if policy == "locality":
        return _locality(chunks, table, worker_nodes, worker, step)
    raise ValueError(f"The 'policy' parameter must be 'static', 'random' or 'locality'. "
                     f"Got {policy!r} instead.")


def _locality(chunks, table, worker_nodes, worker, step) -> np.ndarray:
    nodes = np.unique(worker_nodes)
    quota = node_quota(chunks.size, worker_nodes, step)
    where = table.node[chunks]
    mine: list[list[int]] = [[] for _ in nodes]
    pool: list[int] = []
    for i, n in enumerate(nodes):
        local = chunks[where == n]
        mine[i] = list(local[:quota[i]])
        pool.extend(local[quota[i]:])
    pool.extend(chunks[~np.isin(where, nodes)])
    pool.sort()   # step order of the leftovers does not matter; a fixed one does
    for i in range(nodes.size):
        need = quota[i] - len(mine[i])
        mine[i].extend(pool[:need])
        del pool[:need]
    i = int(np.searchsorted(nodes, worker_nodes[worker]))
    peers = np.flatnonzero(worker_nodes == nodes[i])
    a, b = block_range(len(mine[i]), peers.size, int(np.searchsorted(peers, worker)))
    return np.asarray(mine[i][a:b], dtype=np.int64)
