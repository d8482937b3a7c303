"""Sparse (CSR) training end to end in allreduce mode: the same model as a dense job on
the densified data, whatever the exchange (pairs or dense Allreduce) and the world size;
bitwise repeat and exact resume; clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import sparse as sp

import mpisgd
from mpisgd.data import write_csr_shard, write_shard
from mpisgd.data.partition import holdout_mask
from mpisgd.store.modelfile import load_model

from .datasets import sets


def _csr_data(folder, task: str, n_rows=1500, d=300, nnz=6, seed=0):
    """A CSR shard pair and the same rows dense: (sparse folder, dense folder)."""
    rng = np.random.default_rng(seed)
    cols = np.sort(np.stack([rng.choice(d, nnz, replace=False) for _ in range(n_rows)]), 1)
    vals = rng.normal(size=(n_rows, nnz))
    X = sp.csr_matrix((vals.ravel(), cols.ravel(), np.arange(0, n_rows * nnz + 1, nnz)),
                      shape=(n_rows, d))
    w = rng.normal(size=(d, 3))
    scores = X @ w
    if task == "regression":
        y, C = scores[:, 0] + 0.1 * rng.normal(size=n_rows), 0
    elif task == "binary":
        y, C = (scores[:, 0] > 0).astype(np.int64), 2
    else:
        y, C = np.argmax(scores, 1).astype(np.int64), 3
    sparse_dir, dense_dir = folder / "csr", folder / "dense"
    sparse_dir.mkdir(parents=True)
    dense_dir.mkdir()
    half = n_rows // 2
    for k, (a, b) in enumerate(((0, half), (half, n_rows))):
        part = X[a:b]
        write_csr_shard(str(sparse_dir / f"part-{k}.h5"), part.indptr.astype(np.int64),
                        part.indices.astype(np.uint32), part.data, y[a:b], n_features=d,
                        task=task, n_classes=C)
        write_shard(str(dense_dir / f"part-{k}.h5"), part.toarray(), y[a:b], task, C)
    return str(sparse_dir), str(dense_dir)


MODEL = {"regression": "linear", "binary": "logistic", "multiclass": "softmax"}


def _job(data: str, task: str, *extra: str) -> list[str]:
    return ["jobs/logreg.toml", *sets(f"data.train='{data}'", f"model.name='{MODEL[task]}'",
                                      "optimizer.lr=0.05", "optimizer.momentum=0", "model.l2=0",
                                      "train.epochs=2",
                                      "train.batch_size=128", *extra)]


def _theta(run) -> np.ndarray:
    return load_model(run / "model.h5").theta


def _summary(run) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module", params=["regression", "binary", "multiclass"])
def csr(request, tmp_path_factory):
    task = request.param
    sparse_dir, dense_dir = _csr_data(tmp_path_factory.mktemp(task), task)
    return task, sparse_dir, dense_dir


@pytest.mark.parametrize("n, optimizer", [(1, "sgd"), (3, "adagrad")])
def test_sparse_job_equals_the_dense_job_on_the_densified_data(launch, tmp_path, csr, n,
                                                               optimizer):
    """SGD and AdaGrad move no weight whose gradient is zero, so the lazy step is the dense
    step: the two runs differ by the kernels' rounding only."""
    task, sparse_dir, dense_dir = csr
    opt = f"optimizer.name='{optimizer}'"
    launch(n, _job(sparse_dir, task, opt) + ["--out",
           str(tmp_path / "s")], timeout=120, check=True)
    launch(n, _job(dense_dir, task, opt) + ["--out", str(tmp_path / "d")], timeout=120,
           check=True)
    np.testing.assert_allclose(_theta(tmp_path / "s"), _theta(tmp_path / "d"), rtol=1e-9,
                               atol=1e-11)
    s, d = _summary(tmp_path / "s"), _summary(tmp_path / "d")
    assert s["samples"] == d["samples"] and s["steps"] == d["steps"]
    scalars = {k: v for k, v in d["test"].items() if isinstance(v, float)}
    assert {k: s["test"][k] for k in scalars} == pytest.approx(scalars, rel=1e-7)


def test_pairs_and_dense_exchange_and_world_sizes_agree(launch, tmp_path, csr):
    task, sparse_dir, _ = csr
    runs = {}
    for n, method in ((2, "pairs"), (2, "dense"), (4, "auto"), (1, "auto")):
        out = tmp_path / f"{n}-{method}"
        launch(n, _job(sparse_dir, task, "optimizer.name='adam'", f"comm.sparse='{method}'")
               + ["--out", str(out)], timeout=120, check=True)
        runs[n, method] = _theta(out)
        assert _summary(out)["sparse"]["exchange"] == method
    # Two ranks: a sum of two values does not depend on the order, so bitwise.
    np.testing.assert_array_equal(runs[2, "pairs"], runs[2, "dense"])
    for key in ((4, "auto"), (1, "auto")):
        np.testing.assert_allclose(runs[key], runs[2, "pairs"], rtol=1e-4, atol=1e-6)


def test_bitwise_repeat_and_exact_resume_at_another_size(launch, tmp_path):
    sparse_dir, _ = _csr_data(tmp_path / "data", "binary")
    job = _job(sparse_dir, "binary", "optimizer.name='ftrl'", "optimizer.ftrl_l1=0.01",
               "train.epochs=3", "checkpoint.every_steps=5", "comm.sparse='pairs'",
               "optimizer.schedule='constant'")   # max_steps would change cosine's length
    launch(2, job + ["--out", str(tmp_path / "a")], timeout=120, check=True)
    launch(2, job + ["--out", str(tmp_path / "b")], timeout=120, check=True)
    np.testing.assert_array_equal(_theta(tmp_path / "a"), _theta(tmp_path / "b"))
    out = tmp_path / "r"
    launch(3, job + ["--set", "train.max_steps=15", "--out", str(out)], timeout=120,
           check=True)
    r = launch(2, job + ["--out", str(out), "--resume", "auto"], timeout=120, check=True)
    assert "resuming at step 15" in r.stdout
    # The optimizer state and theta come back exactly; the steps after differ from the
    # uninterrupted run only by the 3-rank steps' sums before the checkpoint.
    np.testing.assert_allclose(_theta(out), _theta(tmp_path / "a"), rtol=1e-4, atol=1e-6)
    same = tmp_path / "same"
    launch(2, job + ["--set", "train.max_steps=15", "--out", str(same)], timeout=120,
           check=True)
    launch(2, job + ["--out", str(same), "--resume", "auto"], timeout=120, check=True)
    np.testing.assert_array_equal(_theta(same), _theta(tmp_path / "a"))


@pytest.mark.parametrize("mode", ["allreduce", "ps"])
def test_sparse_synth_job_learns_and_reports_its_traffic(launch, tmp_path, mode):
    out = tmp_path / "run"
    launch(3, ["jobs/logreg.toml", *sets("data.synth.kind='sparse'", "data.synth.rows=6000",
                                         "data.synth.features=50000", "data.synth.nnz=10",
                                         "optimizer.name='adagrad'", "optimizer.lr=0.2",
                                         "train.epochs=3", "train.batch_size=256",
                                         f"mode='{mode}'"),
               "--out", str(out)], timeout=120, check=True)
    s = _summary(out)
    assert s["test"]["accuracy"] > 0.7
    sparse = s["sparse"]
    if mode == "ps":   # push + pull of the step's keys against the whole vector each way
        assert sparse["share_of_dense"] < 0.1
    else:
        assert sparse["steps"]["pairs"] == s["steps"]
        assert sparse["bytes_per_step_sent"] < 0.2 * sparse["bytes_per_step_dense"]


SYNTH = sets("data.synth.kind='sparse'", "data.synth.rows=6000", "data.synth.features=50000",
             "data.synth.nnz=10", "optimizer.name='adagrad'", "optimizer.lr=0.2",
             "train.epochs=3", "train.batch_size=256")


_PLAIN: dict[str, dict] = {}


def _plain(launch, folder, mode: str) -> dict:
    """The summary of the uncompressed synthetic job in ``mode`` (run once per module)."""
    if mode not in _PLAIN:
        out = folder / f"plain-{mode}"
        launch(3, ["jobs/logreg.toml", *SYNTH, *sets(f"mode='{mode}'"), "--out", str(out)],
               timeout=120, check=True)
        _PLAIN[mode] = _summary(out)
    return _PLAIN[mode]


def _bytes_per_step(s: dict) -> float:
    sparse = s["sparse"]
    return sparse.get("bytes_per_step_sent", sparse.get("bytes_per_step"))


@pytest.mark.parametrize("mode, scheme, share", [
    ("allreduce", "fp16", 0.85), ("allreduce", "topk", 0.35), ("allreduce", "sign", 0.75),
    ("ps", "topk", 0.8), ("ps", "fp16", 0.95)])
def test_compressed_sparse_jobs_learn_like_the_plain_ones_and_send_less(
        launch, tmp_path, tmp_path_factory, mode, scheme, share):
    """Each rank's values compressed (topk: a tenth of its keys), with error feedback:
    held-out accuracy within 2 points of the uncompressed job, fewer bytes per step (ps:
    push and pull, the pulls uncompressed), and in allreduce mode a resumed run (the
    residuals are in the checkpoint) ends bitwise like an unbroken one."""
    plain = _plain(launch, tmp_path_factory.getbasetemp(), mode)
    out = tmp_path / "run"
    job = ["jobs/logreg.toml", *SYNTH, *sets(f"mode='{mode}'", f"comm.compression='{scheme}'",
                                             "comm.topk_ratio=0.1",
                                             "checkpoint.every_steps=20")]
    launch(3, job + ["--out", str(out)], timeout=120, check=True)
    s = _summary(out)
    assert s["compression"]["scheme"] == scheme
    assert s["test"]["accuracy"] > plain["test"]["accuracy"] - 0.02, s["test"]
    assert _bytes_per_step(s) < share * _bytes_per_step(plain), (s["sparse"], plain["sparse"])
    if mode == "ps":
        return
    resumed = tmp_path / "resumed"
    r = launch(3, job + sets("debug.signal_rank=1", "debug.signal_step=25")
               + ["--out", str(resumed)], timeout=120)
    assert r.returncode == 75, r.stderr   # stopped by the signal, checkpoint written
    launch(3, job + ["--out", str(resumed), "--resume", "auto"], timeout=120, check=True)
    np.testing.assert_array_equal(_theta(resumed), _theta(out))


@pytest.mark.parametrize("extra, needle", [
    ("model.name='mlp'", "model.name = 'mlp'"),
    ("data.standardize=true", "data.standardize = true"),
    ("train.sync_every=4", "train.sync_every > 1"),
    ("mode='ps';ps.node_aggregate=true", "ps.node_aggregate"),
])
def test_what_sparse_data_cannot_train_with_is_one_agreed_error(launch, tmp_path, extra,
                                                                needle):
    sparse_dir, _ = _csr_data(tmp_path / "data", "binary", n_rows=200)
    r = launch(3, _job(sparse_dir, "binary", *extra.split(";"))
               + ["--out", str(tmp_path / "run")], timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "is sparse (CSR)" in r.stderr and needle in r.stderr, r.stderr
    assert r.stderr.count("mpisgd: error:") == 1 and "Traceback" not in r.stderr, r.stderr


def test_ftrl_on_dense_data_is_refused(launch, tmp_path):
    r = launch(2, ["jobs/logreg.toml", *sets("optimizer.name='ftrl'"), "--out",
                   str(tmp_path / "run")], timeout=60)
    assert r.returncode == 2 and "'ftrl' updates sparse models" in r.stderr, r.stderr


# -- parameter-server mode ---------------------------------------------------------------

@pytest.mark.parametrize("servers", [1, 2])
def test_ps_bsp_equals_allreduce_bitwise(launch, tmp_path, csr, servers):
    """Two workers' pushes summed in worker order on the servers, two ranks' pairs summed
    in rank order in allreduce: a sum of two is the same either way, so bitwise."""
    task, sparse_dir, _ = csr
    ps = tmp_path / "ps"
    launch(2 + servers, _job(sparse_dir, task, "optimizer.name='adagrad'", "mode='ps'",
                             f"ps.servers={servers}") + ["--out", str(ps)],
           timeout=120, check=True)
    ar = tmp_path / "ar"
    launch(2, _job(sparse_dir, task, "optimizer.name='adagrad'", "comm.sparse='pairs'")
           + ["--out", str(ar)], timeout=120, check=True)
    np.testing.assert_array_equal(_theta(ps), _theta(ar))
    s = _summary(ps)
    assert s["samples"] == _summary(ar)["samples"]


CHUNKED = {"ar-storage": (2, ["data.placement='storage'", "comm.sparse='pairs'"]),
           "ps-storage": (3, ["data.placement='storage'", "mode='ps'"]),
           "ps-server": (4, ["data.placement='server'", "mode='ps'", "ps.servers=2"])}


@pytest.mark.parametrize("assign", ["static", "balanced"])
def test_csr_chunks_from_storage_or_servers_use_every_row_once_and_agree(launch, tmp_path,
                                                                         assign):
    """CSR rows read chunk by chunk from the files (storage) or sent by the servers that
    hold them (server): each epoch uses every training row once, and allreduce, ps with
    the workers reading and ps with the servers serving train the same model (bitwise
    under static assignment: the same two workers sum the same chunks)."""
    sparse_dir, _ = _csr_data(tmp_path / "data", "binary")
    thetas = {}
    for name, (n, extra) in CHUNKED.items():
        out = tmp_path / name
        launch(n, _job(sparse_dir, "binary", "optimizer.name='adagrad'", "data.chunk_rows=32",
                       f"data.assign='{assign}'", "debug.trace_rows=true", "train.seed=0",
                       "data.test_fraction=0.2", *extra) + ["--out", str(out)],
               timeout=120, check=True)
        train = np.flatnonzero(~holdout_mask(0, 1500, 0.2, seed=0))
        traces = [np.load(out / "trace" / f"rank{r}.npz") for r in range(n)]
        for epoch in range(2):
            used = np.concatenate([t[f"arr_{epoch}"] for t in traces if f"arr_{epoch}" in t])
            np.testing.assert_array_equal(np.sort(used), train, err_msg=name)
        s = _summary(out)
        assert s["test"]["accuracy"] > 0.7, (name, s["test"])
        assert s["data_io"]["total"]["chunks"] == 2 * 48, name   # 2 shards x 24 chunks
        thetas[name] = _theta(out)
    for name, theta in thetas.items():
        if assign == "static":
            np.testing.assert_array_equal(theta, thetas["ar-storage"], err_msg=name)
        else:   # who computes which chunk varies: sums in another order, to rounding
            np.testing.assert_allclose(theta, thetas["ar-storage"], rtol=1e-7, atol=1e-10,
                                       err_msg=name)


@pytest.mark.parametrize("consistency", ["asp", "ssp"])
def test_ps_asynchronous_sparse_jobs_learn(launch, tmp_path, consistency):
    sparse_dir, _ = _csr_data(tmp_path / "data", "binary")
    out = tmp_path / "run"
    launch(4, _job(sparse_dir, "binary", "optimizer.name='adagrad'", "optimizer.lr=0.5",
                   "mode='ps'", "ps.servers=2", f"ps.consistency='{consistency}'",
                   "train.epochs=4") + ["--out", str(out)], timeout=120, check=True)
    s = _summary(out)
    assert s["test"]["accuracy"] > 0.75 and s["test"]["log_loss"] < 0.6, s["test"]
    assert s["ps"]["updates_per_server"] == [s["steps"] * 2] * 2 or consistency == "ssp" \
        or s["ps"]["updates_per_server"][0] > 0


def test_ps_sparse_backup_workers_drop_the_straggler_which_pulls_its_next_keys(launch,
                                                                             tmp_path):
    """bsp with a backup worker: the slow worker's late pushes are dropped, it skips to
    the servers' step and first pulls that step's keys (a pull-only exchange), so it
    never computes on parameters it did not refresh; the job still learns."""
    sparse_dir, _ = _csr_data(tmp_path / "data", "binary")
    out = tmp_path / "run"
    launch(5, _job(sparse_dir, "binary", "optimizer.name='adagrad'", "optimizer.lr=0.5",
                   "mode='ps'", "ps.servers=2", "ps.backup_workers=1", "train.epochs=4",
                   "debug.slow_rank=4", "debug.slow_ms=20") + ["--out", str(out)],
           timeout=120, check=True)
    s = _summary(out)
    assert s["ps"]["gradients_dropped"] > 0
    assert s["ps"]["refreshes"]["4"] > 0 and s["ps"]["refreshes"]["2"] == 0
    assert s["test"]["accuracy"] > 0.75, s["test"]


def test_ps_sparse_resume_at_another_server_count(launch, tmp_path):
    sparse_dir, _ = _csr_data(tmp_path / "data", "binary")
    job = _job(sparse_dir, "binary", "optimizer.name='adam'", "mode='ps'",
               "train.epochs=3", "checkpoint.every_steps=5", "optimizer.schedule='constant'")
    ref = tmp_path / "ref"
    launch(3, job + ["--out", str(ref)], timeout=120, check=True)
    out = tmp_path / "run"
    launch(4, job + sets("ps.servers=2", "train.max_steps=15") + ["--out", str(out)],
           timeout=120, check=True)
    r = launch(3, job + ["--out", str(out), "--resume", "auto"], timeout=120, check=True)
    assert "resuming at step 15" in r.stdout
    # bsp with two workers at both sizes: the same sums, so the same parameters bitwise.
    np.testing.assert_array_equal(_theta(out), _theta(ref))


# -- eval, predict and load_model on CSR rows ------------------------------------------------

def test_eval_predict_and_load_model_read_csr_rows(launch, tmp_path, csr):
    task, sparse_dir, dense_dir = csr
    run = tmp_path / "run"
    launch(2, _job(sparse_dir, task, "optimizer.name='adagrad'") + ["--out", str(run)],
           timeout=120, check=True)
    out = tmp_path / "pred.npy"
    launch(2, ["predict", str(run), "--data", sparse_dir, "--out", str(out)], timeout=60,
           check=True)
    model = mpisgd.load_model(run)
    X = sp.vstack([sp.csr_matrix((f["values"][...], f["indices"][...], f["indptr"][...]),
                                 shape=(f["indptr"].shape[0] - 1, model.n_features_in_))
                   for f in _shards(sparse_dir)]).tocsr()
    dense = np.concatenate([h5py.File(p, "r")["X"][...] for p in sorted(
        Path(dense_dir).glob("*.h5"))])
    pred = model.predict(X)
    np.testing.assert_array_equal(np.load(out), pred)          # predict == load_model
    # CSR == densified rows (a dot product summed in another order: values to rounding)
    np.testing.assert_allclose(pred, model.predict(dense), rtol=1e-12, atol=1e-14)
    metrics = tmp_path / "m.json"
    launch(2, ["eval", str(run), "--data", sparse_dir, "--out", str(metrics)], timeout=60,
           check=True)
    got = json.loads(metrics.read_text())["metrics"]
    y = np.concatenate([h5py.File(p, "r")["y"][...] for p in sorted(
        Path(dense_dir).glob("*.h5"))])
    key = "r2" if task == "regression" else "accuracy"
    assert got[key] == pytest.approx(model.score(X, y), abs=1e-9)


def _shards(folder: str):
    for path in sorted(Path(folder).glob("*.h5")):
        with h5py.File(path, "r") as f:
            yield f


# -- faults: the error discipline holds for sparse jobs -----------------------------------

@pytest.mark.parametrize("mode", ["allreduce", "ps"])
def test_failures_in_sparse_steps_end_the_job_with_one_message(launch, tmp_path, mode):
    sparse_dir, _ = _csr_data(tmp_path / "data", "binary")
    job = _job(sparse_dir, "binary", f"mode='{mode}'", "ps.consistency='asp'")
    r = launch(3, job + sets("debug.fail_rank=2", "debug.fail_step=5") + ["--out",
               str(tmp_path / "exc")], timeout=60, fresh=True)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "injected failure in the gradient kernel at step 5" in r.stderr
    assert "rank 2" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = launch(3, job + sets("debug.fail_rank=2", "debug.fail_step=5", "debug.fail_kind='nan'")
               + ["--out", str(tmp_path / "nan")], timeout=60, fresh=True)
    assert r.returncode == 4 and "NaN/Inf" in r.stderr, (r.stdout, r.stderr)


def test_a_transient_nan_in_a_sparse_job_is_rolled_back(launch, tmp_path):
    sparse_dir, _ = _csr_data(tmp_path / "data", "binary")
    r = launch(2, _job(sparse_dir, "binary", "debug.fail_rank=1", "debug.fail_step=5",
                       "debug.fail_kind='nan'", "train.on_divergence='rollback'",
                       "checkpoint.every_steps=3") + ["--out", str(tmp_path / "run")],
               timeout=60, check=True)
    assert "Rollback 1 of 3: back to step 3" in r.stderr, r.stderr


def test_cross_validation_of_a_sparse_job(launch, tmp_path):
    sparse_dir, _ = _csr_data(tmp_path / "data", "binary")
    out = tmp_path / "cv"
    launch(2, ["cv", *_job(sparse_dir, "binary", "optimizer.name='adagrad'"), "--folds", "3",
               "--out", str(out)], timeout=120, check=True)
    folds = json.loads((out / "cv.json").read_text())
    assert len(folds["per_fold"]) == 3 and folds["mean"]["accuracy"] > 0.7, folds
