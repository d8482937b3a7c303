"""Sparse (CSR) datasets: the shard layout read across shards, its validation, the
converters (LIBSVM, SciPy .npz, hashed CSV) against scikit-learn and SciPy, the sparse
generator and ``mpisgd data info``."""

from __future__ import annotations

import re
import warnings

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import dump_svmlight_file, load_svmlight_file
from sklearn.utils import murmurhash3_32

from mpisgd.commands.data import main
from mpisgd.config import load_config
from mpisgd.data import (
    CsrBlock,
    iter_csr_blocks,
    open_dataset,
    read_csr_rows,
    read_rows,
    sparse_convert,
    sparse_to_folder,
    write_csr_shard,
    write_shard,
)
from mpisgd.data.convert import ConvertWarning, convert
from mpisgd.data.hashing import murmur3_32
from mpisgd.errors import ConfigError, DataError
from mpisgd.train.prepare import check_job


def _matrix(info) -> tuple[sp.csr_matrix, np.ndarray]:
    indptr, indices, values, y = read_csr_rows(info, 0, info.n_rows, check_values=True)
    assert indptr.dtype == np.int64 and indices.dtype == info.index_dtype
    return sp.csr_matrix((values, indices, indptr), shape=(info.n_rows, info.n_features)), y


def _same(a, b) -> None:
    """Equal sparse matrices, explicit zeros aside."""
    assert a.shape == b.shape
    np.testing.assert_array_equal(sp.csr_matrix(a).toarray(), sp.csr_matrix(b).toarray())


def _random(n=60, d=40, density=0.1, seed=0):
    rng = np.random.default_rng(seed)
    A = sp.random(n, d, density=density, format="csr", random_state=seed,
                  data_rvs=lambda k: np.round(rng.standard_normal(k), 4))
    A.data[A.indptr[3]:A.indptr[4]] = 0   # an empty row
    A.eliminate_zeros()
    return A, rng


# ------------------------------------------------------------------ layout and reading

def _shards(tmp_path, A, y, sizes):
    folder = tmp_path / "csr"
    folder.mkdir()
    a = 0
    for k, n in enumerate(sizes):
        part = A[a:a + n]
        write_csr_shard(folder / f"part-{k:05d}.h5", part.indptr, part.indices, part.data,
                        y[a:a + n], n_features=A.shape[1], task="regression", n_classes=0)
        a += n
    return folder


def test_read_csr_rows_across_shards_equals_the_scipy_slice(tmp_path):
    A, rng = _random(n=50)
    y = rng.standard_normal(50)
    info = open_dataset(_shards(tmp_path, A, y, [7, 0, 20, 1, 22]))
    assert (info.layout, info.nnz, info.rows) == ("csr", A.nnz, (7, 0, 20, 1, 22))
    assert info.shard_nnz == tuple(A[a:b].nnz for a, b in zip(info.offsets, info.offsets[1:]))
    for lo, hi in [(0, 50), (5, 8), (6, 29), (7, 7), (27, 28), (26, 50), (3, 4)]:
        indptr, indices, values, yy = read_csr_rows(info, lo, hi)
        assert indptr[0] == 0 and len(indptr) == hi - lo + 1
        _same(sp.csr_matrix((values, indices, indptr), shape=(hi - lo, 40)), A[lo:hi])
        np.testing.assert_array_equal(yy, y[lo:hi])
    blocks = list(iter_csr_blocks(info, 2, 49, block_rows=6))
    assert [a for a, _, _ in blocks] == list(range(2, 49, 6))
    _same(sp.vstack([sp.csr_matrix((b.values, b.indices, b.indptr), shape=(len(b), 40))
                     for _, b, _ in blocks]), A[2:49])


def test_dense_readers_refuse_a_csr_dataset_and_training_checks_what_it_can_do(tmp_path):
    A, rng = _random()
    info = open_dataset(_shards(tmp_path, A, rng.standard_normal(60), [60]))
    with pytest.raises(DataError, match="is sparse .*read here yet"):
        read_rows(info, 0, 2)
    write_shard(tmp_path / "dense.h5", A.toarray(), rng.standard_normal(60), "regression", 0)
    with pytest.raises(DataError, match="is dense"):
        read_csr_rows(open_dataset(tmp_path / "dense.h5"), 0, 2)
    for mode in ("allreduce", "ps"):
        check_job(load_config(None, [f"mode='{mode}'", "model.name='linear'"]), info, None, 1)
    for bad, needle in (("data.standardize=true", "data.standardize = true"),
                        ("model.name='mlp'", "model.name = 'mlp'"),
                        ("optimizer.name='adamw'", "optimizer.name = 'adamw'")):
        cfg = load_config(None, ["model.name='linear'", bad])
        with pytest.raises(ConfigError, match=f"is sparse .*{re.escape(needle)}"):
            check_job(cfg, info, None, 1)


def test_csr_block_slices_take_and_sums():
    A, _ = _random(n=12, d=9, density=0.4)
    b = CsrBlock(A.indptr, A.indices, A.data)
    for rows in (slice(2, 7), slice(5, 5), np.array([4, 0, 3, 11]), np.arange(12) % 3 == 0):
        part = b[rows]
        _same(sp.csr_matrix((part.values, part.indices, part.indptr),
                            shape=(len(part), 9)), A[rows])
    np.testing.assert_array_equal(b.toarray(9), A.toarray())
    block, repeat = CsrBlock.from_entries(3, [2, 0, 2, 0, 2], [5, 1, 5, 0, 1], [1., 2., 3., 4., 5.])
    summed = block.sum_repeats(repeat)
    np.testing.assert_array_equal(summed.toarray(6), [[4, 2, 0, 0, 0, 0], [0] * 6,
                                                      [0, 5, 0, 0, 0, 4]])


# ------------------------------------------------------------------ bad CSR shards

def _bad_shard(path, case):
    indptr = np.array([0, 2, 3, 5], np.int64)
    indices = np.array([0, 3, 1, 2, 4], np.uint32)
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    if case == "index-out-of-range":
        indices[2] = 9
    elif case == "decreasing-indptr":
        indptr[1:3] = [4, 1]
    elif case == "nan-value":
        values[3] = np.nan
    elif case == "unsorted-row":
        indices[:2] = [3, 0]
    elif case == "indptr-end":
        indptr[-1] = 4
    with h5py.File(path, "w") as f:
        f.attrs.update(format="mpisgd", format_version=3, task="regression", n_features=5,
                       n_classes=0, n_rows=3, layout="csr", nnz=5)
        f["indptr"], f["indices"], f["values"] = indptr, indices, values
        f["y"] = np.zeros(3)


@pytest.mark.parametrize("case, message", [
    # rows are global: the first shard holds row 0
    ("index-out-of-range", "feature index 9 in row 2 is outside 0..4"),
    ("decreasing-indptr", r"indptr decreases at row 2 \(4 then 1\)"),
    ("nan-value", r"values has 1 non-finite value\(s\) \(1 NaN, 0 Inf\); the first is in row 3"),
    ("unsorted-row", "row 1 lists feature 0 after 3; the indices of a row must be sorted"),
    ("indptr-end", "indptr must start at 0 and end at nnz=5"),
])
def test_bad_csr_shard_is_an_error_naming_it_and_data_info_exits_2(tmp_path, capsys, case,
                                                                   message):
    folder = tmp_path / "bad"
    folder.mkdir()
    write_csr_shard(folder / "part-0.h5", [0, 1], [2], [1.0], [0.5], n_features=5,
                    task="regression", n_classes=0)
    _bad_shard(folder / "part-1.h5", case)
    with pytest.raises(DataError, match=message) as err:
        read_csr_rows(open_dataset(folder), 0, 4, check_values=True)
    assert "part-1.h5" in str(err.value)
    assert main(["info", str(folder)]) == 2
    stderr = capsys.readouterr().err
    assert "part-1.h5" in stderr and stderr.startswith("mpisgd: error:")


def test_writer_refuses_bad_blocks(tmp_path):
    kw = dict(n_features=4, task="binary", n_classes=2)
    with pytest.raises(DataError, match="feature index 4 in row 0 is outside 0..3"):
        write_csr_shard(tmp_path / "a.h5", [0, 1], [4], [1.0], [1], **kw)
    with pytest.raises(DataError, match="lists feature 1 after 1"):
        write_csr_shard(tmp_path / "b.h5", [0, 2], [1, 1], [1.0, 2.0], [1], **kw)
    with pytest.raises(DataError, match="labels outside the classes"):
        write_csr_shard(tmp_path / "c.h5", [0, 1], [1], [1.0], [2], **kw)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ converters

@pytest.mark.parametrize("zero_based", [False, True])
def test_libsvm_to_csr_equals_load_svmlight_file(tmp_path, zero_based):
    A, rng = _random(n=90, d=30)
    y = rng.choice([-1.0, 1.0], 90)
    path = tmp_path / "a.svm"
    dump_svmlight_file(A, y, str(path), zero_based=zero_based)
    B, yb = load_svmlight_file(str(path), zero_based=zero_based, n_features=30)
    info = convert(path, tmp_path / "out", layout="csr", zero_based=zero_based,
                   rows_per_shard=40, n_features=30, dtype="float64")
    assert (info.layout, info.n_shards, info.task, info.n_features) == ("csr", 3, "binary", 30)
    M, codes = _matrix(info)
    _same(M, B)
    np.testing.assert_array_equal(info.label_values[codes], yb)
    # small enough: without --sparse it stays dense, as it trains today
    dense = convert(path, tmp_path / "d.h5", zero_based=zero_based, n_features=30,
                    dtype="float64")
    assert dense.layout == "dense"
    np.testing.assert_array_equal(read_rows(dense, 0, 90)[0], B.toarray())


def test_libsvm_becomes_csr_by_itself_when_dense_would_be_large(tmp_path, monkeypatch):
    A, rng = _random(n=30, d=500, density=0.02)
    path = tmp_path / "wide.svm"
    dump_svmlight_file(A, rng.standard_normal(30), str(path), zero_based=False)
    monkeypatch.setattr(sparse_convert, "DENSE_LIMIT", 30 * 500 * 4 - 1)
    with pytest.warns(ConvertWarning, match=r"30 rows x 500 features would take .* GiB dense; "
                                            r"written as CSR .*--dense"):
        info = convert(path, tmp_path / "w.h5", task="regression", n_features=500,
                       dtype="float64")
    assert info.layout == "csr"
    _same(_matrix(info)[0], load_svmlight_file(str(path), n_features=500)[0])
    assert convert(path, tmp_path / "dense.h5", task="regression", layout="dense").layout == \
        "dense"


def test_libsvm_missing_values_and_repeated_features(tmp_path):
    path = tmp_path / "m.svm"
    path.write_text("1 1:0.5 3:nan\n0 2:1.5\n1 1:2 2:0 4:1\n")
    with pytest.raises(DataError, match="line 1 of .* feature index 3 is missing .*"
                                        "--missing drop|zero"):
        convert(path, tmp_path / "e.h5", layout="csr")
    with pytest.warns(ConvertWarning, match="filled 1 missing value"):
        info = convert(path, tmp_path / "z.h5", layout="csr", missing="zero", dtype="float64")
    np.testing.assert_array_equal(_matrix(info)[0].toarray(),
                                  [[0.5, 0, 0, 0], [0, 1.5, 0, 0], [2, 0, 0, 1]])
    assert info.nnz == 4   # the explicit zero is left out
    with pytest.warns(ConvertWarning, match="dropped 1 row"):
        info = convert(path, tmp_path / "d.h5", layout="csr", missing="drop")
    assert info.n_rows == 2
    with pytest.raises(DataError, match="--missing mean fills dense columns"):
        convert(path, tmp_path / "m.h5", layout="csr", missing="mean")
    path.write_text("1 1:0.5 1:2\n0 2:1\n")
    with pytest.raises(DataError, match="line 1 of .* lists feature index 1 twice"):
        convert(path, tmp_path / "r.h5", layout="csr")


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_scipy_npz_equals_the_matrix(tmp_path, fmt):
    A, rng = _random(n=70, d=25)
    y = rng.integers(0, 3, 70)
    sp.save_npz(tmp_path / "m.npz", A.asformat(fmt))
    np.save(tmp_path / "y.npy", y)
    info = convert(tmp_path / "m.npz", tmp_path / "out", labels=tmp_path / "y.npy",
                   layout="csr", rows_per_shard=30, dtype="float64")
    assert (info.n_rows, info.n_features, info.n_classes) == (70, 25, 3)
    M, codes = _matrix(info)
    _same(M, A)
    np.testing.assert_array_equal(codes, y)
    with pytest.raises(DataError, match="SciPy sparse matrix without labels; .*--labels"):
        convert(tmp_path / "m.npz", tmp_path / "nolabels.h5")


def test_scipy_npz_labels_in_the_file_and_repeats_summed(tmp_path):
    coo = sp.coo_matrix(([1.0, 2.0, 5.0], ([0, 0, 1], [2, 2, 0])), shape=(2, 3))
    np.savez(tmp_path / "m.npz", format="coo", shape=np.array([2, 3]), row=coo.row,
             col=coo.col, data=coo.data, y=np.array(["b", "a"]))
    info = convert(tmp_path / "m.npz", tmp_path / "o.h5", layout="csr")
    M, codes = _matrix(info)
    np.testing.assert_array_equal(M.toarray(), coo.toarray())   # 1 + 2 at (0, 2)
    assert info.label_values[codes].tolist() == ["b", "a"]


def _murmur_reference(rows, header, bits, seed, numeric):
    """The hashed matrix built entry by entry with scikit-learn's murmurhash3_32."""
    M = sp.dok_matrix((len(rows), 1 << bits))
    for r, row in enumerate(rows):
        for name, field in zip(header, row):
            if name in numeric:
                key, value = name, float(field)
            else:
                key, value = f"{name}={field}", 1.0
            M[r, murmurhash3_32(key, seed=seed, positive=True) & ((1 << bits) - 1)] += value
    return M.tocsr()


def _criteo_like(tmp_path, n=200):
    rng = np.random.default_rng(3)
    colors = np.array(["red", "green", "blue", "black"])
    rows = [[f"{rng.integers(0, 5)}", colors[rng.integers(0, 4)], f"{rng.normal():.4f}",
             f"id{rng.integers(0, 30)}", str(rng.integers(0, 2))] for _ in range(n)]
    path = tmp_path / "c.csv"
    path.write_text("count,color,score,user,click\n" + "".join(",".join(r) + "\n" for r in rows))
    return path, rows


def test_murmur3_equals_scikit_learn():
    keys = ["", "a", "ab", "abc", "abcd", "color=red", "naïve=ü", "x" * 41, "日本"]
    for seed in (0, 1, 42, 2 ** 31 + 5):
        np.testing.assert_array_equal(murmur3_32(keys, seed), [
            murmurhash3_32(k, seed=seed, positive=True) for k in keys])


def test_hashed_csv_equals_the_reference_and_depends_on_the_seed(tmp_path):
    path, rows = _criteo_like(tmp_path)
    header = ["count", "color", "score", "user"]
    out = {}
    for seed in (0, 0, 7):
        name = f"h{len(out)}.h5"
        info = convert(path, tmp_path / name, hash_features=6, hash_seed=seed, layout="csr",
                       dtype="float64")
        M, y = _matrix(info)
        assert info.n_features == 64 and info.task == "binary"
        np.testing.assert_array_equal(y, [int(r[-1]) for r in rows])
        # numeric columns keep their values (summed where ids collide, as everywhere)
        _same(M, _murmur_reference([r[:-1] for r in rows], header, 6, seed,
                                   numeric={"count", "score"}))
        out[name] = M
    _same(out["h0.h5"], out["h1.h5"])
    assert abs(out["h0.h5"] - out["h2.h5"]).max() > 0
    # a numeric column named categorical hashes its values as words
    info = convert(path, tmp_path / "cat.h5", hash_features=6, categorical=("count",),
                   layout="csr", dtype="float64")
    _same(_matrix(info)[0], _murmur_reference([r[:-1] for r in rows], header, 6, 0,
                                              numeric={"score"}))


def test_hashed_csv_without_a_header_names_columns_by_field_number(tmp_path):
    _, rows = _criteo_like(tmp_path, n=40)
    path = tmp_path / "noheader.csv"
    path.write_text("".join(",".join(r) + "\n" for r in rows))
    info = convert(path, tmp_path / "n.h5", hash_features=8, hash_seed=2, layout="csr",
                   dtype="float64")
    assert info.n_rows == 40
    _same(_matrix(info)[0], _murmur_reference([r[:-1] for r in rows], ["0", "1", "2", "3"],
                                              8, 2, numeric={"0", "2"}))
    np.save(tmp_path / "y.npy", np.zeros(40))
    with pytest.raises(DataError, match="--labels gives the labels of a SciPy sparse .npz"):
        convert(path, tmp_path / "l.h5", labels=tmp_path / "y.npy")


def test_hashed_csv_missing_values(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("a,color,y\n1.5,red,0\n,blue,1\n2,NA,1\n-1,red,1\n")
    with pytest.raises(DataError, match="line 3 of .* column 'a' \\(field 1\\) is missing"):
        convert(path, tmp_path / "e.h5", hash_features=8, layout="csr")
    with pytest.warns(ConvertWarning, match="dropped 2 row"):
        info = convert(path, tmp_path / "d.h5", hash_features=8, layout="csr", missing="drop")
    assert info.n_rows == 2
    with pytest.warns(ConvertWarning, match="filled 2 missing value"):
        info = convert(path, tmp_path / "z.h5", hash_features=8, layout="csr", missing="zero")
    assert info.n_rows == 4 and np.diff(_matrix(info)[0].indptr).tolist() == [2, 1, 1, 2]


def test_sparse_output_of_a_dense_csv_and_shuffle(tmp_path):
    X = np.array([[0, 1.5, 0], [2, 0, 0], [0, 0, 0], [1, 1, 1]] * 10)
    y = np.arange(40) % 2
    path = tmp_path / "d.csv"
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header="a,b,c,t", comments="")
    info = convert(path, tmp_path / "s.h5", layout="csr", dtype="float64")
    assert info.nnz == 50 and info.feature_names == ("a", "b", "c")
    np.testing.assert_array_equal(_matrix(info)[0].toarray(), X)
    runs = [convert(path, tmp_path / f"sh{k}", layout="csr", shuffle=5, dtype="float64")
            for k in range(2)]
    (M0, y0), (M1, y1) = (_matrix(i) for i in runs)
    _same(M0, M1)
    rows = {tuple(r) + (t,) for r, t in zip(M0.toarray(), y0)}
    assert rows == {tuple(r) + (t,) for r, t in zip(X, y)} and not np.array_equal(y0, y)


# ------------------------------------------------------------------ the generator

def test_synth_sparse_is_zipf_shaped_and_seeded(tmp_path):
    info = sparse_to_folder(tmp_path / "s", n_rows=4000, n_features=2000, nnz=20, seed=3)
    M, y = _matrix(info)
    share = np.asarray((M != 0).sum(axis=0)).ravel() / info.n_rows
    assert share.max() > 0.5 and share[0] == share.max()   # a feature in most rows
    assert np.median(share) < 0.005                         # most features in few
    assert 0 < y.mean() < 1 and np.diff(M.indptr).max() <= 20
    assert info.true_w.shape == (2000,) and np.count_nonzero(info.true_w) < 1000
    again = sparse_to_folder(tmp_path / "t", n_rows=4000, n_features=2000, nnz=20, seed=3,
                             n_shards=3)
    M3, y3 = _matrix(again)
    _same(M, M3)
    np.testing.assert_array_equal(y, y3)
    other, _ = _matrix(sparse_to_folder(tmp_path / "u", n_rows=4000, n_features=2000, nnz=20,
                                        seed=4))
    assert abs(M - other).max() > 0


def test_synth_sparse_with_2_to_the_32_features(tmp_path, capsys):
    out = tmp_path / "wide"
    assert main(["synth", "--kind", "sparse", "--rows", "300", "--features", str(2 ** 32),
                 "--nnz", "6", "--shards", "2", str(out)]) == 0
    info = open_dataset(out)
    assert info.n_features == 2 ** 32 and info.index_dtype == np.uint32
    assert info.true_w is None   # a function of the id, not an array of 2^32
    indptr, indices, values, y = read_csr_rows(info, 0, 300, check_values=True)
    assert indices.max() < 2 ** 32 and indices.max() > 2 ** 20 and (values > 0).all()
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layout:    csr" in text and f"features:  {2 ** 32}" in text
    assert f"non-zeros: {info.nnz} (" in text and "non-zeros per row: mean" in text
    assert main(["synth", "--kind", "sparse", "--rows", "3", "--features", str(2 ** 32 + 1),
                 str(tmp_path / "too")]) == 2


def test_cli_convert_flags(tmp_path, capsys):
    path, rows = _criteo_like(tmp_path, n=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["convert", str(path), str(tmp_path / "h"), "--hash-features", "10",
                     "--categorical", "count,3", "--sparse", "--rows-per-shard", "20"]) == 0
    info = open_dataset(tmp_path / "h")
    assert (info.layout, info.n_shards, info.n_features) == ("csr", 3, 1024)
    assert main(["info", str(tmp_path / "h"), "--no-stats"]) == 0
    assert "non-zeros:" in capsys.readouterr().out
    assert main(["convert", str(path), str(tmp_path / "x.h5"), "--hash-features", "33"]) == 2
    assert "1..32" in capsys.readouterr().err
    assert main(["convert", str(path), str(tmp_path / "y.h5"), "--sparse", "--dense"]) == 2
