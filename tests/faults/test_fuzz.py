"""Fuzzing job files and HDF5 inputs (hypothesis): random valid and invalid inputs end in
a completed run or a clean error, never a hang, never an internal traceback.

In process, many examples: a random job file either loads or raises ConfigError; a
random shard either opens and reads or raises DataError. Launched, fewer examples (each
is an mpiexec run): a random job on random data ends, within its time limit, with exit
code 0 or a documented error code and one clear message, and leaves no process behind.
Examples are derandomized so CI sees the same ones every run; MPISGD_FUZZ_SCALE=10 runs
ten times as many.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, event, find, given, settings
from hypothesis import strategies as st
from launch.procs import wait_gone

from mpisgd.config import JobConfig, _is_section, _toml_value, load_config
from mpisgd.data.checks import check_values
from mpisgd.data.format import open_dataset
from mpisgd.data.read import read_rows
from mpisgd.errors import ConfigError, DataError

SCALE = int(os.environ.get("MPISGD_FUZZ_SCALE", "1"))
FAST = settings(max_examples=150 * SCALE, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------
# Job files


def _fields(obj, prefix=""):
    """(dotted key, Check) of every key of the job configuration."""
    for f in dataclasses.fields(obj):
        if _is_section(f):
            yield from _fields(getattr(obj, f.name), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f.metadata["check"]


KEYS = list(_fields(JobConfig()))

_any_scalar = st.one_of(st.booleans(), st.integers(-10**6, 10**6),
                        st.floats(allow_nan=False, allow_infinity=False, width=32),
                        st.text(max_size=8), st.lists(st.integers(-3, 300), max_size=3))


def _value_for(check, tidy: bool = False):
    """Values a key may get: of its kind and near its range, or (unless ``tidy``)
    sometimes anything."""
    if check.kind == "choice":
        good = st.sampled_from(check.choices)
    elif check.kind == "bool":
        good = st.booleans()
    elif check.kind == "int":
        lo = int(check.lo) if check.lo is not None else -5
        good = st.integers(lo - 1, lo + 50)
    elif check.kind == "float":
        lo = check.lo if check.lo is not None else -5.0
        good = st.floats(lo - 1, lo + 10, allow_nan=False)
    elif check.kind == "int_list":
        good = st.lists(st.integers(0, 64), max_size=4)
    else:
        good = st.text(max_size=12)
    return good if tidy else st.one_of(good, good, good, _any_scalar)


@st.composite
def job_documents(draw):
    """A job as nested dicts: some real keys with drawn values, maybe a stray key."""
    doc: dict = {}
    tidy = draw(st.booleans())   # half the jobs: right kinds only, no stray keys
    for key, check in draw(st.lists(st.sampled_from(KEYS), max_size=8, unique_by=lambda kc: kc[0])):
        *sections, name = key.split(".")
        node = doc
        for s in sections:
            node = node.setdefault(s, {})
        node[name] = draw(_value_for(check, tidy))
    if not tidy and draw(st.integers(0, 4)) == 0:
        doc.setdefault(draw(st.sampled_from(["model", "data", "typo"])), {})[
            draw(st.sampled_from(["lr", "bogus", "epoch"]))] = 1
    return doc


def _toml(doc: dict, prefix: str = "") -> str:
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    lines = [f"[{prefix[:-1]}]"] if prefix and scalars else []
    lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(_toml(v, f"{prefix}{k}."))
    return "\n".join(lines) + "\n"


def _load_doc(doc: dict) -> bool:
    """True if the job loads; False if it is a ConfigError; anything else propagates."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.toml"
        path.write_text(_toml(doc))
        try:
            cfg = load_config(str(path), out=str(Path(tmp) / "run"))
        except ConfigError as exc:
            assert str(exc) and "Traceback" not in str(exc)
            return False
        assert isinstance(cfg, JobConfig)
        return True


@FAST
@given(doc=job_documents())
def test_random_job_file_loads_or_is_a_config_error(doc):
    event("loaded" if _load_doc(doc) else "ConfigError")


def test_job_strategy_reaches_both_outcomes():
    """The fuzzing above is not vacuous: its strategy makes jobs that load and jobs that
    do not, each with several keys set."""
    find(job_documents(), lambda d: sum(map(len, d.values())) >= 3 and _load_doc(d),
         settings=settings(database=None, derandomize=True, max_examples=2000))
    find(job_documents(), lambda d: not _load_doc(d),
         settings=settings(database=None, derandomize=True))


@FAST
@given(text=st.text(max_size=200))
def test_random_text_as_job_file_is_a_config_error_or_a_job(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            load_config(str(path))
        except ConfigError:
            pass


@FAST
@given(overrides=st.lists(st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from([k for k, _ in KEYS] + ["x", "a.b.c"]),
              st.one_of(st.text(max_size=10), st.integers().map(str), st.just("'adam'"))),
), max_size=4))
def test_random_overrides_load_or_are_a_config_error(overrides):
    try:
        load_config(None, overrides)
    except ConfigError:
        pass


# --------------------------------------------------------------------------------------
# HDF5 inputs

@st.composite
def shards(draw):
    """The arguments of one shard file: a valid one, then (mostly) one part made wrong."""
    rows = draw(st.integers(0, 12))
    feats = draw(st.integers(1, 4))
    task = draw(st.sampled_from(["regression", "binary", "multiclass"]))
    n_classes = {"regression": 0, "binary": 2, "multiclass": 3}[task]
    spec = dict(x_shape=(rows, feats), x_dtype=draw(st.sampled_from(["float64", "float32"])),
                y_rows=rows, y_kind="float" if task == "regression" else "int",
                y_hi=max(n_classes - 1, 0), special=None,
                attrs={"format": "mpisgd", "format_version": 1, "task": task,
                       "n_features": feats, "n_classes": n_classes, "n_rows": rows},
                names=("X", "y"), seed=draw(st.integers(0, 2**16)))
    fault = draw(st.sampled_from([None, None, None, "x_dtype", "x_shape", "y_rows",
                                  "special", "attr", "drop", "names", "labels", "y_kind"]))
    attrs = spec["attrs"]
    if fault == "x_dtype":
        spec["x_dtype"] = draw(st.sampled_from(["int32", "float16", "int64", "bool"]))
    elif fault == "x_shape":
        spec["x_shape"] = draw(st.sampled_from([(rows,), (rows, feats, 1), (rows, feats + 1)]))
    elif fault == "y_rows":
        spec["y_rows"] = draw(st.sampled_from([max(rows - 1, 0), rows + 1]))
    elif fault == "special":
        spec["special"] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    elif fault == "attr":
        key = draw(st.sampled_from(sorted(attrs)))
        attrs[key] = draw(st.sampled_from([-1, 0, 2, 7, "other", "ranking", 1.5]))
    elif fault == "drop":
        del attrs[draw(st.sampled_from(sorted(attrs)))]
    elif fault == "names":
        spec["names"] = draw(st.sampled_from([("x", "y"), ("X", "labels"), ("data", "target")]))
    elif fault == "labels":
        spec["y_hi"] = n_classes + draw(st.integers(0, 3))
    elif fault == "y_kind":
        spec["y_kind"] = "float" if spec["y_kind"] == "int" else "int"
    return spec


def write_fuzzed(path: Path, spec: dict) -> None:
    rng = np.random.default_rng(spec["seed"])
    X = rng.normal(size=spec["x_shape"]).astype(spec["x_dtype"])
    if spec["y_kind"] == "float":
        y = rng.normal(size=spec["y_rows"])
    else:
        y = rng.integers(0, spec["y_hi"] + 1, size=spec["y_rows"])
    if spec["special"] is not None and X.size and X.dtype.kind == "f":
        X.flat[rng.integers(X.size)] = spec["special"]
    with h5py.File(path, "w") as f:
        f.create_dataset(spec["names"][0], data=X)
        f.create_dataset(spec["names"][1], data=y)
        f.attrs.update(spec["attrs"])


def _read_shard(spec: dict, cut: int | None = None) -> bool:
    """True if the shard opens and reads cleanly; False if it is a DataError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.h5"
        write_fuzzed(path, spec)
        if cut is not None:   # truncated: a copy cut short
            data = path.read_bytes()
            path.write_bytes(data[:cut])
        try:
            info = open_dataset(str(path))
            X, y = read_rows(info, 0, info.n_rows)
            check_values(X, y, info, f"rows of '{path}'")
        except DataError as exc:
            assert str(exc)
            return False
        return True


@FAST
@given(spec=shards(), cut=st.sampled_from([None, None, None, 0, 100, 1000, 3000]))
def test_random_shard_opens_and_reads_or_is_a_data_error(spec, cut):
    event("read" if _read_shard(spec, cut) else "DataError")


def test_shard_strategy_reaches_both_outcomes():
    find(shards(), lambda spec: spec["x_shape"][0] >= 5 and _read_shard(spec),
         settings=settings(database=None, derandomize=True, max_examples=2000))
    find(shards(), lambda spec: not _read_shard(spec),
         settings=settings(database=None, derandomize=True))


# --------------------------------------------------------------------------------------
# Launched: random jobs on random data, end to end

EXIT_CODES = {0, 2, 3, 4}   # done; bad input; communication/stall; training diverged


@st.composite
def launched_jobs(draw):
    model = draw(st.sampled_from(["linear", "logistic", "softmax", "mlp"]))
    kind = {"linear": "linear", "logistic": "logistic", "softmax": "multiclass",
            "mlp": draw(st.sampled_from(["linear", "logistic"]))}[model]
    overrides = [
        f"model.name='{model}'", f"data.synth.kind='{kind}'",
        f"data.synth.rows={draw(st.sampled_from([1, 5, 40, 400]))}",
        f"data.synth.features={draw(st.integers(1, 6))}",
        f"data.synth.shards={draw(st.integers(1, 3))}",
        f"train.epochs={draw(st.integers(1, 2))}",
        f"train.batch_size={draw(st.sampled_from([0, 1, 16, 64, 10_000]))}",
        f"optimizer.name='{draw(st.sampled_from(['sgd', 'adam', 'adagrad', 'adamw']))}'",
        f"optimizer.lr={draw(st.sampled_from([1e-3, 0.1, 10.0, 1e8, -1.0]))}",
        f"mode='{draw(st.sampled_from(['allreduce', 'allreduce', 'ps']))}'",
        f"data.placement='{draw(st.sampled_from(['partition', 'storage']))}'",
        f"comm.compression='{draw(st.sampled_from(['none', 'none', 'topk', 'fp16']))}'",
    ]
    if model == "mlp":
        overrides.append(f"model.hidden=[{draw(st.integers(1, 8))}]")
    data = draw(st.one_of(st.none(), st.none(), shards()))
    return overrides, data, draw(st.sampled_from([2, 3]))


@settings(max_examples=8 * SCALE, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(job=launched_jobs())
def test_random_job_ends_cleanly(launch, tmp_path_factory, job):
    overrides, data, n = job
    tmp = tmp_path_factory.mktemp("fuzz")
    out = tmp / "run"
    args = [w for o in overrides for w in ("--set", o)]
    if data is not None:
        write_fuzzed(tmp / "shard.h5", data)
        args += ["--set", f"data.train='{tmp / 'shard.h5'}'", "--set", "data.test_fraction=0.2"]
    t0 = time.monotonic()
    proc = launch.start(n, args + ["--out", str(out), "--set", "train.step_timeout=20"])
    try:
        stdout, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"HANG: {args}\n{stdout[-2000:]}\n{stderr[-2000:]}")
    where = f"{args} at {n} ranks: exit {proc.returncode}\n{stdout[-2000:]}\n{stderr[-2000:]}"
    assert time.monotonic() - t0 < 60, where
    assert wait_gone(str(out), timeout=10) == [], "leftover processes: " + where
    assert proc.returncode in EXIT_CODES, where
    event(f"exit {proc.returncode}")
    assert "Traceback" not in stdout + stderr, where
    if proc.returncode:
        assert len(re.findall(r"mpisgd: error", stderr)) == 1, where
