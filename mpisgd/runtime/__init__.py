"""The process around a run: MPI environment, numba threads, supervisor, signals, logs,
progress. Imports nothing else of mpisgd but errors."""
