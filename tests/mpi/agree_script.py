"""Run under mpiexec (with a timeout) by test_collectives.py: error agreement and topology
at any size."""

import sys

from mpi4py import MPI

from mpisgd.comm import agree, agreed_call, bcast_value, make_topology
from mpisgd.errors import CommError, DataError

topo = make_topology()
world, rank, size = topo.world, topo.rank, topo.size
checks = []

# 1. No error anywhere: agree returns on every rank.
agree(world, None)
checks.append("none")

# 2. A DataError on the last rank only: every rank raises the same DataError naming it.
try:
    agreed_call(world, lambda: (_ for _ in ()).throw(DataError("shard missing"))
                if rank == size - 1 else None)
except DataError as exc:
    expect = "shard missing" if size == 1 else f"rank {size - 1}: shard missing"
    if str(exc) != expect or not exc.agreed:
        raise SystemExit(f"rank {rank}: wrong agreed error {exc!r}") from None
    checks.append("one")
else:
    raise SystemExit(f"rank {rank}: no error raised")

# 3. A foreign exception becomes a CommError carrying its type and the ranks.
try:
    agreed_call(world, lambda: 1 / 0 if rank % 2 == 0 else None)
except CommError as exc:
    if "ZeroDivisionError" not in str(exc) or not exc.agreed:
        raise SystemExit(f"rank {rank}: {exc!r}") from None
    checks.append("foreign")

# 4. bcast_value: root's result reaches everyone; root's error reaches everyone.
if bcast_value(world, lambda: 42) != 42:
    raise SystemExit("bcast_value")
try:
    bcast_value(world, lambda: (_ for _ in ()).throw(DataError("root failed")))
except DataError as exc:
    if "root failed" not in str(exc):
        raise SystemExit(f"rank {rank}: {exc!r}") from None
    checks.append("bcast")

# 5. Topology: emulated nodes from MPISGD_RANKS_PER_NODE.
rpn = int(sys.argv[1]) if len(sys.argv) > 1 else 0
if rpn:
    if topo.local_size != min(rpn, size - (rank // rpn) * rpn) or topo.node_index != rank // rpn:
        raise SystemExit(f"rank {rank}: topology {topo}")
    # The leaders' communicator: exactly the first rank of every node, in node order.
    if (topo.leaders != MPI.COMM_NULL) != (topo.local_rank == 0):
        raise SystemExit(f"rank {rank}: leaders communicator on a non-leader or missing")
    if topo.local_rank == 0 and (topo.leaders.Get_size() != topo.node_count
                                 or topo.leaders.Get_rank() != topo.node_index):
        raise SystemExit(f"rank {rank}: leaders {topo.leaders.Get_rank()}/"
                         f"{topo.leaders.Get_size()} for node {topo.node_index}")
    checks.append("topology")

# The library's communicator is a duplicate: not COMM_WORLD itself.
if MPI.Comm.Compare(world, MPI.COMM_WORLD) != MPI.CONGRUENT:
    raise SystemExit("world is not a duplicate of COMM_WORLD")
counts = world.gather(len(checks))
topo.free()
if rank == 0:
    print("OK", size, counts)
