"""mpisgd: distributed gradient descent over MPI, on HDF5 data, with Numba kernels."""

__version__ = "0.1.0"
