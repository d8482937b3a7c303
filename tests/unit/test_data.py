"""The data layer: shard format round trips, open_dataset errors, value checks,
synthetic generators, converters and the ``mpisgd data`` command line."""

from __future__ import annotations

import bz2
import os

import h5py
import numpy as np
import pytest

from mpisgd.commands.data import main
from mpisgd.data import (
    DatasetReader,
    FolderBuild,
    ShardWriter,
    check_values,
    iter_blocks,
    make_linear,
    make_logistic,
    make_multiclass,
    open_dataset,
    read_rows,
    synth_to_folder,
    write_shard,
)
from mpisgd.data.convert import convert
from mpisgd.errors import DataError, OutputError


def _regression(n, d=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(dtype), rng.standard_normal(n).astype(dtype)


def _folder(tmp_path, sizes, d=3, task="regression", n_classes=0, dtype=np.float64):
    """A folder of shards with ``sizes`` rows each; returns (folder, X, y) concatenated."""
    folder = tmp_path / "ds"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Xs, ys = [], []
    for k, n in enumerate(sizes):
        X = rng.standard_normal((n, d)).astype(dtype)
        y = (rng.integers(0, n_classes, n) if n_classes else rng.standard_normal(n).astype(dtype))
        write_shard(folder / f"part-{k:05d}.h5", X, y, task, n_classes, chunk_rows=4)
        Xs.append(X)
        ys.append(y)
    return folder, np.concatenate(Xs), np.concatenate(ys)


# --------------------------------------------------------------------- round trips

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_rows_across_shard_boundaries(tmp_path, dtype):
    folder, X, y = _folder(tmp_path, [7, 0, 5, 1, 11], dtype=dtype)
    info = open_dataset(folder)
    assert info.n_rows == 24 and info.rows == (7, 0, 5, 1, 11)
    assert info.offsets == (0, 7, 7, 12, 13, 24)
    assert info.dtype == np.dtype(dtype) and info.task == "regression"
    with DatasetReader(info) as reader:
        for start in range(0, 25):
            for stop in range(start, 25):
                Xr, yr = reader.read(start, stop)
                assert Xr.flags.c_contiguous and Xr.dtype == dtype and yr.dtype == dtype
                np.testing.assert_array_equal(Xr, X[start:stop])
                np.testing.assert_array_equal(yr, y[start:stop])
    Xr, yr = read_rows(info, 3, 20)
    np.testing.assert_array_equal(Xr, X[3:20])


def test_classification_round_trip_and_metadata(tmp_path):
    X, _ = _regression(20, d=4, dtype=np.float32)
    y = np.arange(20) % 3
    w, b = np.ones((4, 3)), np.array([0.5, -0.5, 0.0])
    path = tmp_path / "one.h5"
    write_shard(path, X, y, "multiclass", 3, true_w=w, true_b=b,
                label_values=[2.0, 4.0, 9.0], feature_names=["a", "b", "c", "d"])
    info = open_dataset(path)
    assert (info.task, info.n_classes, info.n_features, info.shards) == \
        ("multiclass", 3, 4, (str(path),))
    np.testing.assert_array_equal(info.true_w, w)
    np.testing.assert_array_equal(info.true_b, b)
    np.testing.assert_array_equal(info.label_values, [2, 4, 9])
    assert info.feature_names == ("a", "b", "c", "d")
    Xr, yr = read_rows(info, 0, 20)
    assert yr.dtype == np.int64
    np.testing.assert_array_equal(yr, y)
    np.testing.assert_array_equal(Xr, X)
    assert info.locate(0) == (0, 0) and info.locate(19) == (0, 19)


def test_iter_blocks_covers_range(tmp_path):
    folder, X, y = _folder(tmp_path, [5, 6, 7])
    info = open_dataset(folder)
    got = list(iter_blocks(info, 2, 17, block_rows=4))
    assert [a for a, _, _ in got] == [2, 6, 10, 14]
    np.testing.assert_array_equal(np.concatenate([b for _, b, _ in got]), X[2:17])


def test_read_rows_out_of_range(tmp_path):
    folder, _, _ = _folder(tmp_path, [3])
    info = open_dataset(folder)
    with pytest.raises(DataError, match=r"row range \[2, 4\) is outside"):
        read_rows(info, 2, 4)


def test_shard_writer_streams_and_is_atomic(tmp_path):
    path = tmp_path / "s.h5"
    X, y = _regression(30)
    with ShardWriter(path, 3, "regression", 0, "float64", chunk_rows=8) as w:
        for a in range(0, 30, 7):
            w.append(X[a:a + 7], y[a:a + 7])
        assert not path.exists()  # nothing under the final name until close
        assert len(list(tmp_path.glob("s.h5.tmp-*"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]
    info = open_dataset(path)
    np.testing.assert_array_equal(read_rows(info, 0, 30)[0], X)


def test_shard_writer_failure_leaves_nothing(tmp_path):
    path = tmp_path / "s.h5"
    X, y = _regression(4)
    with pytest.raises(DataError, match="labels outside the classes"):
        with ShardWriter(path, 3, "binary", 2, "float32") as w:
            w.append(X, np.array([0, 1, 1, 0]))
            w.append(X, np.array([0, 1, 5, 0]))
    assert list(tmp_path.iterdir()) == []


def test_write_shard_to_missing_folder_is_output_error(tmp_path):
    X, y = _regression(3)
    with pytest.raises(OutputError, match="cannot write shard"):
        write_shard(tmp_path / "no" / "s.h5", X, y, "regression", 0)


def test_write_shard_rejects_int_X(tmp_path):
    with pytest.raises(DataError, match="dtype must be float32 or float64"):
        write_shard(tmp_path / "s.h5", np.ones((2, 2), dtype=np.int64), np.ones(2),
                    "regression", 0)


# --------------------------------------------------------------- open_dataset errors

def _raw_shard(path, X, y, **attrs):
    """An HDF5 file written by hand, to build broken shards."""
    base = dict(format="mpisgd", format_version=1, task="regression",
                n_features=np.shape(X)[1] if np.ndim(X) == 2 else 0, n_classes=0,
                n_rows=0 if X is None else len(X))
    base.update(attrs)
    with h5py.File(path, "w") as f:
        if X is not None:
            f["X"] = X
        if y is not None:
            f["y"] = y
        for k, v in base.items():
            if v is not None:
                f.attrs[k] = v


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"data file '.*nope.h5' does not exist"):
        open_dataset(tmp_path / "nope.h5")


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match=r"contains no shard files"):
        open_dataset(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without permission")
def test_unreadable_file(tmp_path):
    path = tmp_path / "s.h5"
    write_shard(path, *_regression(3), "regression", 0)
    path.chmod(0)
    try:
        with pytest.raises(DataError, match="not readable"):
            open_dataset(path)
    finally:
        path.chmod(0o644)


def test_unreadable_file_message(tmp_path, monkeypatch):
    # Runs as root too, where chmod 000 does not stop reading: fake the permission check.
    path = tmp_path / "s.h5"
    write_shard(path, *_regression(3), "regression", 0)
    real = os.access
    monkeypatch.setattr("mpisgd.data.format.os.access",
                        lambda p, mode: False if str(p) == str(path) else real(p, mode))
    with pytest.raises(DataError, match=r"data file '.*s.h5' is not readable \(permission"):
        open_dataset(path)


def test_not_hdf5(tmp_path):
    path = tmp_path / "s.h5"
    path.write_text("hello")
    with pytest.raises(DataError, match=r"'.*s.h5' is not a readable HDF5 file"):
        open_dataset(path)


def test_truncated_shard_in_folder_is_named(tmp_path):
    folder, _, _ = _folder(tmp_path, [50, 60, 70])
    bad = folder / "part-00001.h5"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"part-00001.h5' is not a readable HDF5 file") as e:
        open_dataset(folder)
    assert "truncated" in str(e.value)


def test_wrong_dataset_names(tmp_path):
    path = tmp_path / "s.h5"
    _raw_shard(path, None, np.zeros(3), n_features=2, n_rows=3)
    with h5py.File(path, "a") as f:
        f["features"] = np.zeros((3, 2))
    with pytest.raises(DataError, match=r"has no dataset 'X'.*found 'features', 'y'"):
        open_dataset(path)


def test_int_X(tmp_path):
    path = tmp_path / "s.h5"
    _raw_shard(path, np.zeros((3, 2), dtype=np.int32), np.zeros(3))
    with pytest.raises(DataError, match=r"X in '.*' has dtype int32; expected float32 or float64"):
        open_dataset(path)


def test_classification_y_must_be_int(tmp_path):
    path = tmp_path / "s.h5"
    _raw_shard(path, np.zeros((3, 2)), np.zeros(3), task="binary", n_classes=2)
    with pytest.raises(DataError, match=r"expected integer labels"):
        open_dataset(path)


def test_shape_mismatch(tmp_path):
    path = tmp_path / "s.h5"
    _raw_shard(path, np.zeros((100, 2)), np.zeros(99))
    with pytest.raises(DataError, match=r"shape mismatch: X has 100 rows but y has 99 in '.*s.h5'"):
        open_dataset(path)


def test_missing_and_wrong_attributes(tmp_path):
    path = tmp_path / "s.h5"
    _raw_shard(path, np.zeros((3, 2)), np.zeros(3), format=None)
    with pytest.raises(DataError, match="has no attribute 'format'"):
        open_dataset(path)
    _raw_shard(path, np.zeros((3, 2)), np.zeros(3), format_version=7)
    with pytest.raises(DataError, match="format_version=7"):
        open_dataset(path)
    _raw_shard(path, np.zeros((3, 2)), np.zeros(3), n_features=5)
    with pytest.raises(DataError, match="n_features=5 but X has 2 columns"):
        open_dataset(path)
    _raw_shard(path, np.zeros((3, 2)), np.zeros(3), task="ranking")
    with pytest.raises(DataError, match="task must be one of"):
        open_dataset(path)
    _raw_shard(path, np.zeros((3, 2)), np.zeros(3), n_rows=4)
    with pytest.raises(DataError, match="n_rows=4 but X has 3 rows"):
        open_dataset(path)


def test_empty_dataset(tmp_path):
    folder, _, _ = _folder(tmp_path, [0, 0])
    with pytest.raises(DataError, match=r"dataset '.*ds' is empty"):
        open_dataset(folder)


def test_inconsistent_shards(tmp_path):
    folder, _, _ = _folder(tmp_path, [3, 4])
    write_shard(folder / "part-00002.h5", *_regression(3, d=4), "regression", 0)
    with pytest.raises(DataError, match=r"'.*part-00002.h5' has n_features=4 but "
                                        r"'.*part-00000.h5' has n_features=3"):
        open_dataset(folder)
    os.remove(folder / "part-00002.h5")
    write_shard(folder / "part-00002.h5", *_regression(3, dtype=np.float32), "regression", 0)
    with pytest.raises(DataError, match="has dtype=float32 but"):
        open_dataset(folder)


# ------------------------------------------------------------------- check_values

def _info(tmp_path, task="regression", n_classes=0):
    path = tmp_path / "c.h5"
    y = np.zeros(2, dtype=np.int64) if n_classes else np.zeros(2)
    write_shard(path, np.zeros((2, 3)), y, task, n_classes)
    return open_dataset(path)


def test_check_values_nan_inf(tmp_path):
    info = _info(tmp_path)
    X, y = np.zeros((200, 3)), np.zeros(200)
    check_values(X, y, info, "block")
    X[150, 2] = np.nan
    X[170, 0] = np.inf
    with pytest.raises(DataError, match=r"block: X has 2 non-finite value\(s\) \(1 NaN, 1 Inf\); "
                                        r"the first is at row 1150, column 2"):
        check_values(X, y, info, "block", first_row=1000)
    X[:] = 0
    y[7] = -np.inf
    with pytest.raises(DataError, match=r"y has 1 non-finite .* at row 7"):
        check_values(X, y, info, "block")


def test_check_values_huge_but_finite(tmp_path):
    # The fast path (a sum) overflows; the slow path must then find nothing wrong.
    info = _info(tmp_path)
    X = np.full((4, 3), 1e308)
    check_values(X, np.zeros(4), info, "block")


def test_check_values_labels(tmp_path):
    info = _info(tmp_path, "multiclass", 3)
    X, y = np.zeros((200, 3)), np.zeros(200, dtype=np.int64)
    check_values(X, y, info, "block")
    y[123] = 7
    with pytest.raises(DataError, match="labels outside the classes: found label 7 at row 123 "
                                        "but n_classes=3"):
        check_values(X, y, info, "block")
    y[123] = -1
    with pytest.raises(DataError, match="found label -1 at row 123"):
        check_values(X, y, info, "block")


# ---------------------------------------------------------------------- synthetic

def test_synth_independent_of_shard_count(tmp_path, monkeypatch):
    # Small generation blocks so that 1000 rows span many blocks and shard boundaries.
    monkeypatch.setattr("mpisgd.data.synth.GEN_BLOCK_BYTES", 8 * 4 * 64)
    ref = make_logistic(1000, 4, seed=5, dtype="float64")
    for shards in (1, 3, 7):
        info = synth_to_folder("logistic", tmp_path / f"s{shards}", n_rows=1000, n_features=4,
                               seed=5, dtype="float64", n_shards=shards)
        assert info.n_shards == shards and info.task == "binary"
        X, y = read_rows(info, 0, 1000)
        np.testing.assert_array_equal(X, ref.X)
        np.testing.assert_array_equal(y, ref.y)
        np.testing.assert_array_equal(info.true_w, ref.true_w)
        assert info.true_b == ref.true_b
    other = make_logistic(1000, 4, seed=6, dtype="float64")
    assert not np.array_equal(other.X, ref.X)


def test_synth_generators():
    lin = make_linear(2000, 5, noise=0.0, seed=1)
    assert lin.X.dtype == np.float32 and lin.y.dtype == np.float32
    np.testing.assert_allclose(lin.y, lin.X.astype(np.float64) @ lin.true_w + lin.true_b,
                               rtol=1e-4, atol=1e-4)
    f64 = make_linear(2000, 5, noise=0.0, seed=1, dtype="float64")
    np.testing.assert_array_equal(f64.X.astype(np.float32), lin.X)
    mc = make_multiclass(3000, 6, 4, separation=8.0, seed=2)
    assert mc.true_w.shape == (6, 4) and mc.true_b.shape == (4,)
    assert set(np.unique(mc.y)) == {0, 1, 2, 3}
    # With a strong separation most labels agree with the most likely class.
    agree = np.mean(np.argmax(mc.X @ mc.true_w + mc.true_b, axis=1) == mc.y)
    assert agree > 0.8
    lg = make_logistic(3000, 6, seed=3)
    assert set(np.unique(lg.y)) == {0, 1}


def test_synth_to_folder_refuses_existing_and_overwrites(tmp_path):
    out = tmp_path / "d"
    synth_to_folder("linear", out, n_rows=10, n_features=2, seed=0)
    with pytest.raises(OutputError, match="already exists"):
        synth_to_folder("linear", out, n_rows=10, n_features=2, seed=0)
    info = synth_to_folder("linear", out, n_rows=12, n_features=2, seed=0, overwrite=True)
    assert info.n_rows == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporaries left


def test_folder_build_keeps_a_folder_that_appeared_meanwhile(tmp_path):
    target = tmp_path / "d"
    with FolderBuild(target) as build:
        (target).mkdir()
        (target / "theirs.h5").write_text("x")
        (tmp_path / build.path / "ours.h5").write_text("y")
    assert build.kept_existing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert [p.name for p in target.iterdir()] == ["theirs.h5"]


def test_synth_bad_parameters(tmp_path):
    with pytest.raises(DataError, match="n_shards=5 is more than n_rows=3"):
        synth_to_folder("linear", tmp_path / "d", n_rows=3, n_features=2, n_shards=5)
    with pytest.raises(DataError, match="kind must be one of"):
        synth_to_folder("cubic", tmp_path / "d", n_rows=3, n_features=2)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ convert

def test_convert_csv_header_streaming(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((23, 3)).round(4)
    labels = rng.choice([3.0, 5.0, 9.0], size=23)
    lines = ["a,b,label,c"] + [f"{r[0]},{r[1]},{int(l)},{r[2]}" for r, l in zip(X, labels)]
    lines.insert(5, "")  # a blank line: skipped, still counted in line numbers
    src = tmp_path / "in.csv"
    src.write_text("\n".join(lines) + "\n")
    info = convert(src, tmp_path / "out", label_column="label", block_rows=4,
                   rows_per_shard=10, dtype="float64")
    assert (info.task, info.n_classes, info.rows) == ("multiclass", 3, (10, 10, 3))
    assert info.feature_names == ("a", "b", "c")
    np.testing.assert_array_equal(info.label_values, [3, 5, 9])
    Xr, yr = read_rows(info, 0, 23)
    np.testing.assert_array_equal(Xr, X)
    np.testing.assert_array_equal(yr, np.searchsorted([3, 5, 9], labels))


def test_convert_csv_no_header_regression_single_file(tmp_path):
    X = np.arange(12.0).reshape(4, 3) / 7
    y = np.array([0.5, 1.25, -3.0, 2.0])
    src = tmp_path / "in.txt"
    src.write_text("\n".join(" ".join(repr(float(v)) for v in (yy, *row)) for row, yy in zip(X, y)))
    info = convert(src, tmp_path / "out.h5", label_column=0, dtype="float32")
    assert info.task == "regression" and info.shards == (str(tmp_path / "out.h5"),)
    Xr, yr = read_rows(info, 0, 4)
    np.testing.assert_array_equal(Xr, X.astype(np.float32))
    np.testing.assert_array_equal(yr, y.astype(np.float32))


def test_convert_csv_errors_name_the_line(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("1,2,0\n3,4,1\n5,6,1\n7,1\n")
    with pytest.raises(DataError, match=r"line 4 of '.*in.csv' has 2 fields; expected 3"):
        convert(src, tmp_path / "o", block_rows=2)
    src.write_text("1,2,0\n3,4,1\n5,abc,1\n")
    with pytest.raises(DataError, match=r"line 3 of '.*in.csv': field 2 is 'abc'"):
        convert(src, tmp_path / "o", block_rows=2)
    src.write_text("1,2,0\n3,nan,1\n")
    with pytest.raises(DataError, match=r"line 2 of '.*in.csv' has a non-finite"):
        convert(src, tmp_path / "o")
    src.write_text("1,2,0\n3,4,1.5\n")
    with pytest.raises(DataError, match=r"task 'binary' needs integer labels, but line 2"):
        convert(src, tmp_path / "o", task="binary")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_convert_npz(tmp_path):
    X = np.arange(20.0).reshape(10, 2)
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1])
    np.savez(tmp_path / "d.npz", X=X, y=y)
    info = convert(tmp_path / "d.npz", tmp_path / "o", rows_per_shard=4, block_rows=3)
    assert (info.task, info.n_classes, info.rows) == ("binary", 2, (4, 4, 2))
    np.testing.assert_array_equal(info.label_values, [0, 1])
    Xr, yr = read_rows(info, 0, 10)
    np.testing.assert_array_equal(Xr, X.astype(np.float32))
    np.testing.assert_array_equal(yr, y)
    np.savez(tmp_path / "bad.npz", A=X, y=y)
    with pytest.raises(DataError, match=r"expected arrays 'X'"):
        convert(tmp_path / "bad.npz", tmp_path / "o2")


def test_convert_libsvm(tmp_path):
    text = ("+1 1:0.5 3:2 # comment\n"
            "-1 2:1.5\n"
            "\n"
            "+1 qid:3 4:-1 1:1\n")
    src = tmp_path / "d.svm.bz2"
    src.write_bytes(bz2.compress(text.encode()))
    info = convert(src, tmp_path / "o.h5", block_rows=2)
    assert (info.task, info.n_classes, info.n_features) == ("binary", 2, 4)
    np.testing.assert_array_equal(info.label_values, [-1, 1])
    Xr, yr = read_rows(info, 0, 3)
    np.testing.assert_array_equal(Xr, [[0.5, 0, 2, 0], [0, 1.5, 0, 0], [1, 0, 0, -1]])
    np.testing.assert_array_equal(yr, [1, 0, 1])
    info = convert(src, tmp_path / "o6.h5", n_features=6, task="regression")
    assert info.n_features == 6 and info.task == "regression"
    np.testing.assert_array_equal(read_rows(info, 0, 3)[1], [1, -1, 1])
    bad = tmp_path / "bad.libsvm"
    bad.write_text("1 1:2\n0 0:1\n")
    with pytest.raises(DataError, match=r"line 2 of .* feature index 0; LIBSVM indices are "
                                        r"1-based"):
        convert(bad, tmp_path / "b.h5")


def test_convert_refuses_existing_output(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("1,2\n3,4\n")
    (tmp_path / "o.h5").write_text("keep me")
    with pytest.raises(OutputError, match="already exists"):
        convert(src, tmp_path / "o.h5")
    assert (tmp_path / "o.h5").read_text() == "keep me"


# ---------------------------------------------------------------------------- CLI

def test_cli_synth_info_convert(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["synth", "--kind", "multiclass", "--rows", "300", "--features", "4",
                 "--classes", "3", "--shards", "2", "--seed", "1", str(out)]) == 0
    assert "300 rows x 4 features, multiclass" in capsys.readouterr().out
    assert main(["info", str(out), "--columns", "2"]) == 0
    text = capsys.readouterr().out
    assert "rows:      300" in text and "part-00001.h5  150 rows" in text
    assert "class counts:" in text and "non-finite values: 0" in text
    src = tmp_path / "in.csv"
    src.write_text("x,y,t\n1,2,0.5\n3,4,1.5\n")
    assert main(["convert", str(src), str(tmp_path / "c.h5"), "--label-column", "t"]) == 0
    assert "regression" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mpisgd: error: data file '") and "does not exist" in err
    assert "Traceback" not in err
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n4,5\n")
    assert main(["convert", str(bad), str(tmp_path / "o.h5")]) == 2
    assert "line 2 of" in capsys.readouterr().err
    assert main(["synth", "--kind", "linear", "--rows", "0", "--features", "2",
                 str(tmp_path / "s")]) == 2
    assert "n_rows must be an integer >= 1" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0


def test_convert_shuffle_permutes_whole_rows_reproducibly(tmp_path):
    """--shuffle SEED: the same rows (features and label together) in another order,
    the same order for the same seed, another for another seed."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 3)).round(4)
    y = np.repeat([0, 1], 250)   # stored in label order: the case shuffling is for
    csv = tmp_path / "in.csv"
    np.savetxt(csv, np.column_stack([X, y]), delimiter=",", fmt="%.4f")
    outs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert main(["convert", str(csv), str(tmp_path / name), "--shuffle", str(seed),
                     "--rows-per-shard", "200", "--dtype", "float64"]) == 0
        info = open_dataset(str(tmp_path / name))
        outs[name] = read_rows(info, 0, info.n_rows)
    Xa, ya = outs["a"]
    rows = lambda A, b: sorted(map(tuple, np.column_stack([A, b])))  # noqa: E731
    assert rows(Xa, ya) == rows(X, y)
    assert not np.array_equal(ya, np.sort(ya))   # no longer in label order
    np.testing.assert_array_equal(outs["b"][0], Xa)
    assert not np.array_equal(outs["c"][0], Xa)


def test_shuffle_through_many_buckets_is_a_permutation(tmp_path):
    from mpisgd.data.shuffle import shuffled

    X = np.arange(3000, dtype=np.float32).reshape(1000, 3)
    y = np.arange(1000)
    blocks = [(X[i:i + 128], y[i:i + 128]) for i in range(0, 1000, 128)]
    out = list(shuffled(iter(blocks), 5, 1000, 12, str(tmp_path / "out"), bucket_bytes=1200))
    assert len(out) > 5   # 10 buckets of about 100 rows
    ys = np.concatenate([b[1] for b in out])
    Xs = np.concatenate([b[0] for b in out])
    np.testing.assert_array_equal(np.sort(ys), y)
    np.testing.assert_array_equal(Xs[:, 0], 3 * ys)   # rows stay whole
    assert not np.array_equal(ys, y)
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".shuffle-")] == []
