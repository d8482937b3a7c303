"""mpisgd: distributed gradient descent over MPI, on HDF5 data, with Numba kernels.

``mpisgd.load_model(path)`` reads a trained model (model.h5, solve's oracle.h5, or a
run folder) for use in one process: ``predict``, ``predict_proba``, ``score``.
"""

import importlib

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "TrainedModel"]

# Attributes imported when first used (PEP 562): the implementation sits on a high layer
# (kernels, data, store) and pulls in numba and h5py, while ``import mpisgd`` must stay
# light and below every layer (the command line imports it before MPI and numba start).
_LAZY = {"load_model": "mpisgd.predictor", "TrainedModel": "mpisgd.predictor"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mpisgd' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
