"""Which rank does what: a pure function of (world size, config, node layout).

Every rank computes the same answer from the same inputs, before any message, so a
world too small for the requested servers is the same clear error everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpisgd.data.partition import block_range
from mpisgd.errors import ConfigError


@dataclass(frozen=True)
class Roles:
    """Server and worker ranks. In allreduce mode every rank is a worker."""

    servers: tuple[int, ...]
    workers: tuple[int, ...]

    def is_server(self, rank: int) -> bool:
        return rank in self.servers

    def worker_index(self, rank: int) -> int:
        """Position among the workers (the data partition index); -1 for a server."""
        return self.workers.index(rank) if rank in self.workers else -1

    def server_index(self, rank: int) -> int:
        return self.servers.index(rank) if rank in self.servers else -1


def assign_roles(size: int, mode: str, n_servers: int = 1, placement: str = "first") -> Roles:
    """Roles for ``mode``.

    ``placement = "first"``: ranks 0..N-1 serve (N = 1: rank 0). ``"spread"``: server
    i is the first rank of the i-th of N equal groups of ranks, which is one server per
    node when N equals the node count and ranks are placed by node (the launchers'
    default block placement).
    """
    if mode != "ps":
        return Roles(servers=(), workers=tuple(range(size)))
    if size < n_servers + 1:
        raise ConfigError(f"ps.servers = {n_servers} needs at least {n_servers + 1} ranks "
                          f"({n_servers} server(s) and 1 worker); the job has {size}.",
                          agreed=True)
    if placement == "first":
        servers = tuple(range(n_servers))
    else:
        servers = tuple(block_range(size, n_servers, i)[0] for i in range(n_servers))
    workers = tuple(r for r in range(size) if r not in servers)
    return Roles(servers=servers, workers=workers)


def key_range(n_params: int, n_servers: int, server: int) -> tuple[int, int]:
    """Parameters [lo, hi) held by ``server``: contiguous, balanced key ranges."""
    return block_range(n_params, n_servers, server)
