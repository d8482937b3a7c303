"""``mpisgd info``: versions of everything that decides how mpisgd runs here.

Imports numba: the caller sets numba's cache folder first (see :mod:`mpisgd.cli`).
"""

from __future__ import annotations

import argparse
import os
import sys

import h5py
import mpi4py
import numba
import numpy
from mpi4py import MPI

from mpisgd import __version__
from mpisgd.runtime import mpi_launcher


def main(argv: list[str]) -> int:
    """Print one line per component on rank 0 (any rank may run it)."""
    argparse.ArgumentParser(
        prog="mpisgd info", usage="python -m mpisgd info",
        description="Versions of everything that decides how mpisgd runs here: Python, "
                    "mpi4py and the MPI library, NumPy, numba (threading layer, threads, "
                    "cache folder), h5py and HDF5, and whether the MPI launcher can keep "
                    "a job going through a process's death (ps.on_worker_failure = "
                    "\"continue\"). One process, no mpiexec needed.",
    ).parse_args(argv)
    lib = MPI.Get_library_version().strip().splitlines()[0]
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet: report what numba would pick
        layer = f"not yet chosen (config: {numba.config.THREADING_LAYER})"
    rows = [("mpisgd", __version__), ("python", sys.version.split()[0]),
            ("mpi4py", mpi4py.__version__), ("MPI library", lib),
            ("MPI standard", "%d.%d" % MPI.Get_version()),
            ("world size", str(MPI.COMM_WORLD.Get_size())),
            ("numpy", numpy.__version__), ("numba", numba.__version__),
            ("numba threading layer", layer),
            ("numba threads", str(numba.get_num_threads())),
            ("numba cache", os.environ.get("NUMBA_CACHE_DIR", "")),
            ("h5py", h5py.__version__), ("HDF5", h5py.version.hdf5_version)]
    if MPI.COMM_WORLD.Get_rank() == 0:
        rows.append(("keep-alive flag", _keep_alive()))
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{width}}  {v}")
    return 0


def _keep_alive() -> str:
    """Whether the launcher beside this Python (else on PATH) keeps a job going when one
    of its processes dies, and with which flag (mpisgd.runtime.mpi_launcher)."""
    program = mpi_launcher.default_mpiexec()
    if program is None:
        return "no mpiexec beside this Python nor on PATH"
    return mpi_launcher.keep_alive_line(mpi_launcher.launcher_kind(program), program)
