"""The commands of ``python -m mpisgd`` (see :mod:`mpisgd.cli` for the table)."""
