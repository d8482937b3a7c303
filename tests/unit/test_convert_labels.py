"""``mpisgd data convert``: the task (and the many-classes warning), the label column,
missing values, 0-based LIBSVM, inputs given where a dataset belongs, and labels that
are words (class names)."""

from __future__ import annotations

import re
import warnings

import h5py
import numpy as np
import pytest
from sklearn.datasets import dump_svmlight_file, load_breast_cancer, load_diabetes, load_wine

from mpisgd.commands.data import main
from mpisgd.data import open_dataset, read_rows, write_shard
from mpisgd.data.convert import ConvertWarning, convert
from mpisgd.errors import DataError

DIABETES_HEADER = "age,sex,bmi,bp,s1,s2,s3,s4,s5,s6,progression"


def _diabetes_csv(tmp_path):
    X, y = load_diabetes(return_X_y=True, scaled=False)   # y: whole numbers, 214 distinct
    path = tmp_path / "diabetes.csv"
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header=DIABETES_HEADER,
               comments="", fmt="%.10g")
    return path, X, y


def test_diabetes_converts_as_regression_with_task_and_warns_without(tmp_path, capsys):
    path, X, y = _diabetes_csv(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no warning when the task is given
        info = convert(path, tmp_path / "reg.h5", task="regression", dtype="float64")
    assert (info.task, info.n_classes, info.label_values) == ("regression", 0, None)
    Xr, yr = read_rows(info, 0, info.n_rows)
    np.testing.assert_array_equal(Xr, X)
    np.testing.assert_array_equal(yr, y)
    assert info.feature_names == tuple(DIABETES_HEADER.split(",")[:-1])

    with pytest.warns(ConvertWarning, match=r"214 distinct integer labels in 442 rows .*"
                                            r"--task regression"):
        info = convert(path, tmp_path / "guessed.h5")
    assert (info.task, info.n_classes) == ("multiclass", 214)
    assert main(["convert", str(path), str(tmp_path / "cli.h5")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("mpisgd: warning: ") and "--task regression" in err
    assert main(["convert", str(path), str(tmp_path / "cli-reg.h5"), "--task",
                 "regression"]) == 0
    assert capsys.readouterr().err == ""


def test_wine_classes_keep_their_labels_without_a_warning(tmp_path):
    X, y = load_wine(return_X_y=True)
    path = tmp_path / "wine.csv"
    np.savetxt(path, np.column_stack([y + 1, X]), delimiter=",", fmt="%.10g")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = convert(path, tmp_path / "wine.h5", label_column=0, dtype="float64")
    assert (info.task, info.n_classes) == ("multiclass", 3)
    np.testing.assert_array_equal(info.label_values, [1, 2, 3])
    Xr, yr = read_rows(info, 0, info.n_rows)
    np.testing.assert_array_equal(info.label_values[yr], y + 1)
    np.testing.assert_array_equal(Xr, X)


def test_label_column_by_name_or_index(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,target,b\n1,5,2\n3,7,4\n5,5,6\n")
    for column in ("target", "1", "-2"):
        out = tmp_path / f"o{column}.h5"
        assert main(["convert", str(path), str(out), "--label-column", column]) == 0
        info = open_dataset(out)
        assert info.feature_names == ("a", "b") and info.label_values.tolist() == [5, 7]
    with pytest.raises(DataError, match="label column 'nope' is not in the header"):
        convert(path, tmp_path / "x.h5", label_column="nope")


MISSING = "a,b,c,t\n1,2,3,0\n4,,6,1\n7,NA,9,1\n10,11,?,0\n13,14,15,1\n"
A = np.array([[1, 2, 3], [4, np.nan, 6], [7, np.nan, 9], [10, 11, np.nan], [13, 14, 15]])
T = np.array([0, 1, 1, 0, 1])


@pytest.mark.parametrize("policy", ["drop", "zero", "mean"])
def test_missing_values_each_mode(tmp_path, policy, capsys):
    src = tmp_path / "m.csv"
    src.write_text(MISSING)
    out = tmp_path / f"{policy}.h5"
    assert main(["convert", str(src), str(out), "--missing", policy, "--dtype",
                 "float64"]) == 0
    X, y = read_rows(open_dataset(out), 0, open_dataset(out).n_rows)
    gaps = np.isnan(A)
    if policy == "drop":
        keep = ~gaps.any(axis=1)
        np.testing.assert_array_equal(X, A[keep])
        np.testing.assert_array_equal(y, T[keep])
        assert "dropped 3 row(s)" in capsys.readouterr().err
        return
    fill = np.zeros(3) if policy == "zero" else np.nanmean(A, axis=0)
    np.testing.assert_array_equal(X, np.where(gaps, fill, A))
    np.testing.assert_array_equal(y, T)
    assert "filled 3 missing value(s)" in capsys.readouterr().err


def test_missing_values_by_default_name_line_and_column(tmp_path):
    src = tmp_path / "m.csv"
    src.write_text(MISSING)
    with pytest.raises(DataError, match=r"line 3 of '.*m.csv' has a non-finite value: "
                                        r"column 'b' \(field 2\) is missing.*"
                                        r"--missing drop\|zero\|mean"):
        convert(src, tmp_path / "o.h5")
    src.write_text("1,2,0\n3,4,1\n5,6,\n")   # no header: the field number
    with pytest.raises(DataError, match=r"line 3 of .* missing value in the label field 3; "
                                        r".*--missing drop"):
        convert(src, tmp_path / "o.h5", missing="mean")
    with pytest.warns(ConvertWarning, match=r"dropped 1 row\(s\) with a missing value"):
        info = convert(src, tmp_path / "dropped.h5", missing="drop")
    assert info.n_rows == 2
    src.write_text("a,b,t\n1,,0\n2,,1\n")
    with pytest.raises(DataError, match=r"column 'b' \(field 2\) of .* has no value at all"):
        convert(src, tmp_path / "o.h5", missing="mean")
    src.write_text("a,b,t\n1,inf,0\n2,3,1\n")   # infinity is no missing value
    with pytest.raises(DataError, match=r"non-finite value \(inf\) in column 'b'"):
        convert(src, tmp_path / "o.h5", missing="zero")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dropped.h5", "m.csv"]


def test_npz_nan_is_a_missing_value(tmp_path):
    np.savez(tmp_path / "d.npz", X=A, y=T)
    with pytest.raises(DataError, match=r"row 1 of .* column 1 of X is missing"):
        convert(tmp_path / "d.npz", tmp_path / "o.h5")
    with pytest.warns(ConvertWarning, match="dropped 3 row"):
        info = convert(tmp_path / "d.npz", tmp_path / "o.h5", missing="drop", dtype="float64")
    np.testing.assert_array_equal(read_rows(info, 0, info.n_rows)[0], A[[0, 4]])


@pytest.mark.parametrize("zero_based", [True, False])
def test_libsvm_from_scikit_learn(tmp_path, zero_based):
    X, y = load_wine(return_X_y=True)
    X[:, 0] = np.where(np.arange(len(X)) % 3 == 0, 0.0, X[:, 0])   # sparse entries too
    path = tmp_path / "wine.svm"
    dump_svmlight_file(X, y, str(path), zero_based=zero_based)
    args = ["convert", str(path), str(tmp_path / "w.h5"), "--dtype", "float64"]
    assert main(args + (["--zero-based"] if zero_based else [])) == 0
    info = open_dataset(tmp_path / "w.h5")
    Xr, yr = read_rows(info, 0, info.n_rows)
    assert info.n_features == X.shape[1]
    np.testing.assert_array_equal(Xr, X)
    np.testing.assert_array_equal(info.label_values[yr], y)
    if zero_based:   # read as 1-based: index 0 is refused, naming the flag
        with pytest.raises(DataError, match=r"feature index 0; LIBSVM indices are 1-based "
                                            r"\(.*dump_svmlight_file.*--zero-based\)"):
            convert(path, tmp_path / "bad.h5")


def test_an_input_given_as_a_dataset_says_convert_it_first(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("1,2,0\n3,4,1\n")
    with pytest.raises(DataError, match=r"'.*train.csv' is a CSV file, not an mpisgd "
                                        r"dataset .*convert it first: `mpisgd data convert "
                                        r".*train.csv .*train.h5`"):
        open_dataset(csv)
    (tmp_path / "notes").write_text("some text\n")
    with pytest.raises(DataError, match="is a text file.*convert it first"):
        open_dataset(tmp_path / "notes")
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "part.svm").write_text("1 1:2\n")
    with pytest.raises(DataError, match=r"contains no shard files.*It holds part.svm: "
                                        r"convert it first"):
        open_dataset(folder)


# ---------------------------------------------------------------------------------
# Word labels (class names): classes are the sorted distinct strings, as scikit-learn's.

def _words_csv(path, X, labels, header=True, label_first=False):
    names = [f"x{j}" for j in range(X.shape[1])]
    with open(path, "w") as fh:
        if header:
            fh.write(",".join(["diagnosis", *names] if label_first else [*names, "diagnosis"])
                     + "\n")
        for row, label in zip(X, labels):
            fields = [f"{v:.10g}" for v in row]
            fh.write(",".join([label, *fields] if label_first else [*fields, label]) + "\n")
    return path


def test_breast_cancer_word_labels_become_sorted_classes(tmp_path, capsys):
    X, y = load_breast_cancer(return_X_y=True)
    words = np.array(["malignant", "benign"])[y]   # sklearn: 0 = malignant
    src = _words_csv(tmp_path / "bc.csv", X, words)
    out = tmp_path / "bc"
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # two classes: no warning
        assert main(["convert", str(src), str(out), "--label-column", "diagnosis",
                     "--dtype", "float64", "--rows-per-shard", "200"]) == 0
    info = open_dataset(out)
    assert (info.task, info.n_classes, info.n_shards) == ("binary", 2, 3)
    assert info.label_values.dtype.kind == "U"
    assert info.label_values.tolist() == sorted(set(words)) == ["benign", "malignant"]
    Xr, codes = read_rows(info, 0, info.n_rows)
    np.testing.assert_array_equal(Xr, X)
    np.testing.assert_array_equal(info.label_values[codes], words)
    for shard in info.shards:   # every shard holds the names; version 2 says so
        with h5py.File(shard, "r") as f:
            assert f.attrs["format_version"] == 2
            assert list(f.attrs["label_values"]) == ["benign", "malignant"]
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "labels:    class=original: 0=benign, 1=malignant" in text
    assert f"class counts: 0 (benign): {np.sum(y == 1)}, 1 (malignant): {np.sum(y == 0)}" \
        in text
    # Numeric labels keep writing version 1 files, as before.
    np.savetxt(tmp_path / "n.csv", np.column_stack([X, y]), delimiter=",", fmt="%.10g")
    with h5py.File(convert(tmp_path / "n.csv", tmp_path / "n.h5").shards[0], "r") as f:
        assert f.attrs["format_version"] == 1 and f.attrs["label_values"].dtype == np.float64


def test_word_labels_without_a_header_first_column_and_quoted(tmp_path):
    X, y = load_wine(return_X_y=True)
    names = np.array(["barolo", "grignolino", "barbera"])[y]
    src = _words_csv(tmp_path / "w.csv", X, names, header=False, label_first=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = convert(src, tmp_path / "w.h5", label_column=0, dtype="float64")
    assert info.n_rows == len(y) and info.feature_names is None   # line 1 is data
    assert info.label_values.tolist() == ["barbera", "barolo", "grignolino"]
    Xr, codes = read_rows(info, 0, info.n_rows)
    np.testing.assert_array_equal(info.label_values[codes], names)
    np.testing.assert_array_equal(Xr, X)
    (tmp_path / "q.csv").write_text('a,b,c\n1,2,"big, red"\n3,4, small \n5,6,\'small\'\n')
    info = convert(tmp_path / "q.csv", tmp_path / "q.h5")
    assert info.label_values.tolist() == ["big, red", "small"]
    np.testing.assert_array_equal(read_rows(info, 0, 3)[1], [0, 1, 1])
    # a header of numeric column names over word labels reads as data: the warning says so
    (tmp_path / "h.csv").write_text("0,1,label\n1,2,cat\n3,4,dog\n5,6,cat\n7,8,dog\n")
    with pytest.warns(ConvertWarning) as caught:   # and the 3 classes of 5 rows warn
        convert(tmp_path / "h.csv", tmp_path / "h.h5")
    assert any(re.search(r"line 1 was read as data, but its label 'label' occurs on no other "
                         r"line.*--label-column label", str(w.message)) for w in caught)
    info = convert(tmp_path / "h.csv", tmp_path / "h2.h5", label_column="label")
    assert info.label_values.tolist() == ["cat", "dog"] and info.n_rows == 4


def test_word_labels_for_regression_are_an_error_naming_column_and_value(tmp_path, capsys):
    src = tmp_path / "t.csv"
    src.write_text("age,bmi,diagnosis\n50,22.5,benign\n61,30.1,malignant\n")
    for extra in ([], ["--missing", "drop"], ["--classes", "0"]):
        task = [] if extra[:1] == ["--classes"] else ["--task", "regression"]
        assert main(["convert", str(src), str(tmp_path / "o.h5"), *task, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("mpisgd: error:") == 1 and "Traceback" not in err
        assert "task 'regression' needs numbers as labels, but the label column " \
               "'diagnosis' (field 3) of" in err and "line 2 has 'benign'" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_mixed_numbers_and_words_are_names_sorted_as_strings(tmp_path):
    src = tmp_path / "m.csv"
    src.write_text("a,t\n1,2\n2,10\n3,x\n4,1\n5,2\n6,x\n7,10\n8,1\n9,1.0\n")
    with pytest.warns(ConvertWarning, match=r"5 distinct labels in 9 rows"):
        info = convert(src, tmp_path / "m.h5")
    # "1" and "1.0" are two names; "10" sorts before "2"
    assert info.label_values.tolist() == ["1", "1.0", "10", "2", "x"]
    np.testing.assert_array_equal(info.label_values[read_rows(info, 0, 9)[1]],
                                  ["2", "10", "x", "1", "2", "x", "10", "1", "1.0"])
    with pytest.raises(DataError, match=r"task 'binary' with n_classes=2 needs 2 distinct "
                                        r"labels; .* has 5: 1, 1.0, 10, 2, x"):
        convert(src, tmp_path / "b.h5", task="binary")


def test_word_labels_missing_values_and_limits(tmp_path):
    src = tmp_path / "m.csv"
    src.write_text("a,b,t\n1,2,yes\n3,,no\n5,6,NA\n7,8,no\n9,10,yes\n")
    with pytest.raises(DataError, match=r"line 4 .* missing value in the label column 't'"):
        convert(src, tmp_path / "o.h5", missing="zero")
    with pytest.warns(ConvertWarning, match=r"dropped 2 row"):
        info = convert(src, tmp_path / "o.h5", missing="drop", dtype="float64")
    assert info.label_values.tolist() == ["no", "yes"]
    np.testing.assert_array_equal(read_rows(info, 0, 3)[1], [1, 0, 1])
    src.write_text("a,t\n1,x\n2,y,3\n")   # a ragged row, although only some columns are read
    with pytest.raises(DataError, match=r"line 3 of .* has 3 fields; expected 2 .*ragged"):
        convert(src, tmp_path / "x.h5")
    src.write_text("a,t\n1,only\n2,only\n")
    with pytest.raises(DataError, match=r"every label of .* is 'only'; classification needs "
                                        r"at least 2"):
        convert(src, tmp_path / "x.h5")
    rows = 4 * 60   # 60 names: many classes for their rows warns, naming the label column
    src.write_text("a,t\n" + "".join(f"{i},n{i % 60}\n" for i in range(rows)))
    with pytest.warns(ConvertWarning, match=r"60 distinct labels in 240 rows.*--label-column"):
        convert(src, tmp_path / "many.h5")
    src.write_text("a,t\n" + "".join(f"{i},id{i}\n" for i in range(1002)))
    with pytest.raises(DataError, match=r"more than 1000 distinct labels in the label column "
                                        r"'t' .*words such as 'id0'"):
        convert(src, tmp_path / "ids.h5")


def test_npz_and_libsvm_word_labels(tmp_path):
    X, y = load_wine(return_X_y=True)
    names = np.array(["barolo", "grignolino", "barbera"])[y]
    for kind, labels in (("str", names), ("bytes", np.char.encode(names, "utf-8"))):
        np.savez(tmp_path / f"{kind}.npz", X=X, y=labels)
        info = convert(tmp_path / f"{kind}.npz", tmp_path / f"{kind}.h5")
        assert info.label_values.tolist() == ["barbera", "barolo", "grignolino"]
        np.testing.assert_array_equal(info.label_values[read_rows(info, 0, len(y))[1]], names)
    np.savez(tmp_path / "digits.npz", X=X, y=(y + 1).astype(str))   # strings of numbers
    assert convert(tmp_path / "digits.npz", tmp_path / "d.h5").label_values.tolist() == \
        [1, 2, 3]
    np.savez(tmp_path / "obj.npz", X=X, y=names.astype(object))
    with pytest.raises(DataError, match=r"object array \(pickled\); mpisgd does not unpickle "
                                        r".*y=np.asarray\(y, dtype=str\)"):
        convert(tmp_path / "obj.npz", tmp_path / "o.h5")
    svm = tmp_path / "w.svm"
    svm.write_text("".join(f"{n} 1:{a:.6g} 3:{b:.6g}\n" for n, a, b in zip(names, X[:, 0],
                                                                        X[:, 2])))
    info = convert(svm, tmp_path / "svm.h5")
    assert info.n_features == 3 and info.label_values.tolist()[0] == "barbera"
    np.testing.assert_array_equal(info.label_values[read_rows(info, 0, len(y))[1]], names)
    with pytest.raises(DataError, match="task 'regression' needs numbers as labels, but the "
                                        "label of .* line 1 has 'barolo'"):
        convert(svm, tmp_path / "r.h5", task="regression", n_features=3)


def test_shards_must_agree_on_their_labels(tmp_path):
    X = np.zeros((2, 2), dtype=np.float32)
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_shard(folder / "part-0.h5", X, [0, 1], "binary", 2, label_values=["no", "yes"])
    write_shard(folder / "part-1.h5", X, [0, 1], "binary", 2, label_values=["yes", "zz"])
    with pytest.raises(DataError, match=r"shards of .* disagree: the classes of .*part-1.h5' "
                                        r"stand for the labels \[yes, zz\] but those of "
                                        r".*part-0.h5' for \[no, yes\]"):
        open_dataset(folder)
    (folder / "part-1.h5").unlink()
    write_shard(folder / "part-1.h5", X, [0, 1], "binary", 2, label_values=[0, 1])
    with pytest.raises(DataError, match=r"labels \[0, 1\] but those of .* for \[no, yes\]"):
        open_dataset(folder)
