"""A sparse (CSR) dataset given to training is refused by every rank alike, naming the
mode, until the sparse models train on it."""

from __future__ import annotations

import pytest

from mpisgd.data import sparse_to_folder

from .datasets import sets


@pytest.mark.parametrize("mode", ["allreduce", "ps"])
def test_training_a_sparse_dataset_is_one_agreed_error(launch, tmp_path, mode):
    data = sparse_to_folder(tmp_path / "sparse", n_rows=200, n_features=1000, nnz=8,
                            n_shards=2)
    out = tmp_path / "run"
    r = launch(2, ["jobs/logreg.toml", *sets(f"data.train='{data.path}'", f"mode='{mode}'"),
                   "--out", str(out)], timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"sparse datasets are not trained yet by mode '{mode}'" in r.stderr
    assert r.stderr.count("mpisgd: error:") == 1 and "Traceback" not in r.stderr, r.stderr
