"""Datasets: the HDF5 shard format, synthetic generators and converters."""

from mpisgd.data.checks import check_values
from mpisgd.data.convert import convert
from mpisgd.data.csr import CsrBlock, require_dense
from mpisgd.data.csr_read import CsrReader, iter_csr_blocks, read_csr_rows
from mpisgd.data.csr_write import CsrShardWriter, write_csr_shard
from mpisgd.data.format import DatasetInfo, open_dataset
from mpisgd.data.inputs import detect_format
from mpisgd.data.read import DatasetReader, iter_blocks, read_rows
from mpisgd.data.synth import (
    SynthData,
    make_linear,
    make_logistic,
    make_multiclass,
    synth_to_folder,
)
from mpisgd.data.synth_sparse import sparse_to_folder
from mpisgd.data.write import FolderBuild, ShardWriter, shard_file_name, write_shard

__all__ = [
    "CsrBlock", "CsrReader", "CsrShardWriter", "DatasetInfo", "DatasetReader", "FolderBuild",
    "ShardWriter", "SynthData", "check_values", "convert", "detect_format", "iter_blocks",
    "iter_csr_blocks", "make_linear", "make_logistic", "make_multiclass", "open_dataset",
    "read_csr_rows", "read_rows", "require_dense", "shard_file_name", "sparse_to_folder",
    "synth_to_folder", "write_csr_shard", "write_shard",
]
