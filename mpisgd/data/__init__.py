"""Datasets: the HDF5 shard format, synthetic generators and converters."""

from mpisgd.data.convert import convert, detect_format
from mpisgd.data.format import (DatasetInfo, DatasetReader, FolderBuild, ShardWriter,
    check_values, iter_blocks, open_dataset, read_rows, shard_file_name, write_shard)
from mpisgd.data.synth import (SynthData, make_linear, make_logistic, make_multiclass,
    synth_to_folder)

__all__ = [
    "DatasetInfo", "DatasetReader", "FolderBuild", "ShardWriter", "SynthData",
    "check_values", "convert", "detect_format", "iter_blocks", "make_linear",
    "make_logistic", "make_multiclass", "open_dataset", "read_rows", "shard_file_name",
    "synth_to_folder", "write_shard",
]
