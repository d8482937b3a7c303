"""Datasets: the HDF5 shard format, synthetic generators and converters.

The format, readers, checks, writers and the dense generators load with the package: a
training run needs them. The converters (CSV, LIBSVM, npz, hashing) and the sparse
readers, writers and generator load when first used (PEP 562): every rank of every run
imports this package, and they added 60-80 ms of imports to each process. The converter
itself is ``mpisgd.data.convert.convert`` (a lazy ``convert`` here would be shadowed by
the submodule of that name once anything imports it).
"""

import importlib

from mpisgd.data.checks import check_values
from mpisgd.data.csr import CsrBlock, require_dense
from mpisgd.data.format import DatasetInfo, open_dataset
from mpisgd.data.read import DatasetReader, iter_blocks, read_rows
from mpisgd.data.synth import (
    SynthData,
    make_linear,
    make_logistic,
    make_multiclass,
    synth_to_folder,
)
from mpisgd.data.write import FolderBuild, ShardWriter, shard_file_name, write_shard

_LAZY = {
    "detect_format": "mpisgd.data.inputs",
    "CsrReader": "mpisgd.data.csr_read",
    "iter_csr_blocks": "mpisgd.data.csr_read",
    "read_csr_rows": "mpisgd.data.csr_read",
    "CsrShardWriter": "mpisgd.data.csr_write",
    "write_csr_shard": "mpisgd.data.csr_write",
    "sparse_to_folder": "mpisgd.data.synth_sparse",
}

__all__ = [
    "CsrBlock", "CsrReader", "CsrShardWriter", "DatasetInfo", "DatasetReader", "FolderBuild",
    "ShardWriter", "SynthData", "check_values", "detect_format", "iter_blocks",
    "iter_csr_blocks", "make_linear", "make_logistic", "make_multiclass", "open_dataset",
    "read_csr_rows", "read_rows", "require_dense", "shard_file_name", "sparse_to_folder",
    "synth_to_folder", "write_csr_shard", "write_shard",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mpisgd.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
