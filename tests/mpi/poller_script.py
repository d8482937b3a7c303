"""comm.p2p.Poller at 2 ranks, both ways of waiting: rank 1 answers rank 0's pings
after a delay; rank 0 waits for each answer spinning and sleeping, and checks that
the idle callback runs while it waits and that every answer arrives in order."""

import sys
import time

import numpy as np
from mpi4py import MPI

from mpisgd.comm.p2p import Poller

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
DELAY = 0.05   # rank 1 answers this late: several idle callbacks fit in the wait
buf = np.zeros(1, dtype=np.int64)
if rank == 0:
    for spin in (True, False):
        idle = []
        poller = Poller(1e-3, idle.append, spin=spin)
        for i in range(3):
            req = comm.Irecv(buf, source=1, tag=7)
            comm.Send(np.array([i], dtype=np.int64), dest=1, tag=8)
            assert poller.wait_some([MPI.REQUEST_NULL, req]) == [1]
            assert buf[0] == 10 * i, (buf[0], i)
        # the watchdog sees the time without progress grow within each wait
        assert len(idle) >= 3 and max(idle) > 0.02, (spin, idle)
    print("OK poller", flush=True)
else:
    for _ in range(6):
        comm.Recv(buf, source=0, tag=8)
        time.sleep(DELAY)
        comm.Send(buf * 10, dest=0, tag=7)
sys.exit(0)
