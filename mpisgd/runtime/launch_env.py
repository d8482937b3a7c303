"""What the launcher tells a process before MPI starts (its rank, the ranks on its node),
and the MPI settings that must be in the environment before MPI starts in this process.

When more ranks share a node than it has cores, a rank that busy-polls inside a
collective steals the core a working rank needs. The launchers tell each process how
many ranks share its node; when that exceeds the cores, mpisgd asks Open MPI to yield
while it waits (MPICH's default progress loop already calls sched_yield). MPICH's
"heavy" yield (nanosleep) is opt-in with ``MPISGD_YIELD=1``: it costs every small,
latency-bound collective a sleep, and pays only when steps are long compared with the
collective (measured: README, "Oversubscribing"). A user's own
setting always wins.
"""

from __future__ import annotations

import os

# Environment variables, per launcher, that hold this process's rank in the job. The MPI
# launchers' own come first: under `mpirun` inside a Slurm allocation every rank inherits
# the batch step's SLURM_PROCID (0), which names the task, not the rank.
RANK_VARS = ("PMI_RANK",               # MPICH hydra, Intel MPI, srun --mpi=pmi2
             "OMPI_COMM_WORLD_RANK",   # Open MPI's mpirun
             "PMIX_RANK",              # any PMIx launcher (srun --mpi=pmix, prterun)
             "SLURM_PROCID")           # srun
# Environment variables, per launcher, that hold the number of ranks on this node.
_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS",             # MPICH hydra
                    "OMPI_COMM_WORLD_LOCAL_SIZE",  # Open MPI
                    "SLURM_NTASKS_PER_NODE")       # srun (may be '4(x2)': ignored then)

# What makes each MPI yield a waiting rank's core: always when oversubscribed ...
YIELD_SETTINGS = {"OMPI_MCA_mpi_yield_when_idle": "1"}   # Open MPI
# BLAS libraries start one thread per core in every process unless told otherwise: with
# 8 ranks on 2 cores, the oracle's small A^T A products took 2.6 s of spinning threads in
# the default job (0.05 s at one thread per rank). NumPy reads these when it loads.
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
# ... and only on request (MPISGD_YIELD=1), because it costs latency.
HEAVY_YIELD_SETTINGS = {"MPIR_CVAR_ENABLE_HEAVY_YIELD": "1"}  # MPICH: nanosleep, not sched_yield


def launcher_rank(environ=None) -> str | None:
    """This process's rank as the launcher that started it says, before MPI starts;
    None when no launcher started it (one process: ``python -m mpisgd``)."""
    environ = os.environ if environ is None else environ
    for name in RANK_VARS:
        if name in environ:
            return environ[name]
    return None


def ranks_on_this_node() -> int | None:
    for var in _LOCAL_SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return None


def cores_here() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def tune_for_oversubscription() -> bool:
    """Set yield-when-idle for the MPI library if this node is oversubscribed, and the
    BLAS threads of each rank to its share of the cores.

    Returns True if the node is oversubscribed. Must run before ``mpi4py.MPI`` and NumPy
    are imported. ``MPISGD_YIELD=0`` turns it off; ``=1`` forces it, heavy yield included.
    """
    forced = os.environ.get("MPISGD_YIELD")
    local = ranks_on_this_node()
    over = local is not None and local > cores_here()
    if local is not None:   # BLAS threads per rank = cores / ranks, as numba's (one at least)
        for var in BLAS_THREAD_VARS:
            os.environ.setdefault(var, str(max(1, cores_here() // local)))
    if forced == "0" or not (over or forced == "1"):
        return over
    settings = dict(YIELD_SETTINGS, **(HEAVY_YIELD_SETTINGS if forced == "1" else {}))
    for key, value in settings.items():
        os.environ.setdefault(key, value)
    return over
