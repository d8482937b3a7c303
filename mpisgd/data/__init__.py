"""Datasets: the HDF5 shard format, synthetic generators and converters."""

from mpisgd.data.checks import check_values
from mpisgd.data.convert import convert
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
from mpisgd.data.write import FolderBuild, ShardWriter, shard_file_name, write_shard

__all__ = [
    "DatasetInfo", "DatasetReader", "FolderBuild", "ShardWriter", "SynthData",
    "check_values", "convert", "detect_format", "iter_blocks", "make_linear",
    "make_logistic", "make_multiclass", "open_dataset", "read_rows", "shard_file_name",
    "synth_to_folder", "write_shard",
]
