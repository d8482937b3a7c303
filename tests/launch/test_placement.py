"""Data placement and task assignment end to end: exact sample accounting under every
policy and mode, one result whoever computes which chunk, node-local reads, and I/O
faults retried, reported or skipped, never silently."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mpisgd.data import write_shard
from mpisgd.data.partition import holdout_mask

from .datasets import sets
from .test_train import summary_of, theta_of

ROWS = (1000, 2531, 347)   # uneven shards
EPOCHS = 2


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("uneven")
    rng = np.random.default_rng(0)
    w = rng.standard_normal(5)
    for i, n in enumerate(ROWS):
        X = rng.standard_normal((n, 5))
        write_shard(str(folder / f"part-{i}.h5"), X, X @ w + 0.1 * rng.standard_normal(n),
                    "regression", 0)
    return str(folder)


def _job(data: str, *extra: str) -> list[str]:
    return sets(f"data.train='{data}'", "data.chunk_rows=100", "train.batch_size=400",
                f"train.epochs={EPOCHS}", "optimizer.lr=0.05", "optimizer.schedule='constant'",
                "debug.trace_rows=true", *extra)


MODES = {"allreduce": (4, []), "ps-bsp": (5, ["mode='ps'"]),
         "ps-asp": (5, ["mode='ps'", "ps.consistency='asp'"]),
         "ps2-bsp": (6, ["mode='ps'", "ps.servers=2"])}
CASES = [("allreduce", "partition", "static"), ("allreduce", "storage", "static"),
         ("allreduce", "storage", "random"), ("allreduce", "storage", "balanced"),
         ("allreduce", "storage", "locality"), ("ps-bsp", "storage", "static"),
         ("ps-bsp", "storage", "balanced"), ("ps-asp", "storage", "balanced"),
         ("ps-asp", "storage", "random"), ("ps-bsp", "server", "static"),
         ("ps2-bsp", "server", "balanced"), ("ps-asp", "server", "random")]


@pytest.mark.parametrize("mode, placement, policy", CASES,
                         ids=["-".join(c) for c in CASES])
def test_every_training_row_exactly_once_per_epoch(launch, tmp_path, uneven, mode,
                                                  placement, policy):
    n, extra = MODES[mode]
    out = tmp_path / "run"
    launch(n, _job(uneven, f"data.placement='{placement}'", f"data.assign='{policy}'", *extra)
           + ["--out", str(out)], timeout=180, check=True)
    total = sum(ROWS)
    train = np.flatnonzero(~holdout_mask(0, total, 0.2, seed=0))
    traces = [np.load(out / "trace" / f"rank{r}.npz") for r in range(n)]
    for epoch in range(EPOCHS):
        used = np.concatenate([t[f"arr_{epoch}"] for t in traces if f"arr_{epoch}" in t])
        np.testing.assert_array_equal(np.sort(used), train)
    s = summary_of(out)
    if placement != "partition":
        io = s["data_io"]["total"]
        chunks = sum(-(-r // 100) for r in ROWS)   # 39 chunks of at most 100 rows
        assert io["chunks"] == EPOCHS * chunks and io["retries"] == 0
        assert io["skipped_rows"] == 0 and io["bytes"] > 0


def test_one_result_whoever_computes_which_chunk(launch, tmp_path, uneven):
    """A step is the same set of chunks under static, random and balanced: results agree
    to rounding; random repeats bitwise, balanced to rounding (who summed what may
    differ). (locality deals the epoch by node: other steps, another trajectory.)"""
    thetas = {}
    for policy in ("static", "random", "balanced", "random", "balanced"):
        out = tmp_path / f"{policy}{len(thetas)}"
        launch(4, _job(uneven, "data.placement='storage'", f"data.assign='{policy}'",
                       "debug.trace_rows=false") + ["--out", str(out)],
               timeout=180, check=True)
        thetas.setdefault(policy, []).append(theta_of(out))
    ref = thetas["static"][0]
    for runs in thetas.values():
        for t in runs:
            np.testing.assert_allclose(t, ref, rtol=1e-10, atol=1e-12)
    assert thetas["random"][0].tobytes() == thetas["random"][1].tobytes()


@pytest.mark.parametrize("batch", [0, 400], ids=["gd", "minibatch"])
def test_server_placement_trains_like_the_workers_own_data(launch, tmp_path, uneven, batch):
    """bsp with the servers holding the data: full-batch GD equals partition placement
    (the same sums, in another order); minibatches equal storage placement (the same
    chunks per step)."""
    ref = "partition" if batch == 0 else "storage"
    thetas = {}
    for placement in (ref, "server"):
        out = tmp_path / placement
        launch(5, _job(uneven, "mode='ps'", "ps.servers=2", f"data.placement='{placement}'",
                       f"train.batch_size={batch}", "train.epochs=8" if batch == 0 else
                       "train.epochs=2", "debug.trace_rows=false") + ["--out", str(out)],
               timeout=180, check=True)
        thetas[placement] = theta_of(out)
    np.testing.assert_allclose(thetas["server"], thetas[ref], rtol=1e-10, atol=1e-12)
    s = summary_of(tmp_path / "server")
    assert s["data_io"]["total"]["chunks"] > 0


@pytest.fixture(scope="module")
def per_node(tmp_path_factory) -> str:
    """8 equal shards and a manifest placing two on each of 4 nodes."""
    folder = tmp_path_factory.mktemp("per-node")
    rng = np.random.default_rng(1)
    w = rng.standard_normal(4)
    shards = []
    for i in range(8):
        X = rng.standard_normal((400, 4))
        write_shard(str(folder / f"part-{i}.h5"), X, X @ w, "regression", 0)
        shards.append({"path": f"part-{i}.h5", "rows": 400, "node": i // 2})
    (folder / "manifest.json").write_text(json.dumps({"shard": shards}))
    return str(folder / "manifest.json")


@pytest.mark.parametrize("policy", ["locality", "static"])
def test_locality_reads_node_local_chunks(launch, tmp_path, per_node, policy):
    out = tmp_path / "run"
    launch(8, _job(per_node, "data.placement='storage'", f"data.assign='{policy}'",
                   "topology.ranks_per_node=2") + ["--out", str(out)],
           timeout=180, check=True)
    share = summary_of(out)["data_io"]["total"]["local_share"]
    if policy == "locality":
        assert share >= 0.9
    else:   # shuffled chunks in contiguous ranges: about one in four is local
        assert share < 0.5


def test_read_failing_twice_is_retried_and_changes_nothing(launch, tmp_path, uneven):
    job = _job(uneven, "data.placement='storage'", "debug.trace_rows=false")
    launch(4, job + ["--out", str(tmp_path / "clean")], timeout=180, check=True)
    out = tmp_path / "flaky"
    launch(4, job + ["--set", "debug.read_fail_file='part-1'", "--set",
                     "debug.read_fail_times=2", "--out", str(out)], timeout=180, check=True)
    io = summary_of(out)["data_io"]["total"]
    assert io["retries"] == 2 * 4 and io["skipped_rows"] == 0   # twice on each rank
    assert theta_of(out).tobytes() == theta_of(tmp_path / "clean").tobytes()


# A file failing every read stops the job naming it: tests/faults (read-fault-persistent).


def test_skip_mode_finishes_and_reports_the_skipped_rows(launch, tmp_path, uneven):
    out = tmp_path / "run"
    r = launch(4, _job(uneven, "data.placement='storage'", "debug.read_fail_file='part-2'",
                       "debug.read_fail_prob=1.0", "data.read_retries=1",
                       "data.retry_delay=0.0", "data.on_read_error='skip'")
               + ["--out", str(out)], timeout=180, check=True)
    io = summary_of(out)["data_io"]
    assert io["total"]["skipped_rows"] == EPOCHS * ROWS[2]   # all of part-2, each epoch
    assert io["total"]["skipped_chunks"] == EPOCHS * 4
    assert "skipped 694 rows in 8 chunk(s)" in r.stderr and "part-2.h5" in r.stderr


def test_partition_streams_a_block_too_big_for_memory(launch, tmp_path, uneven):
    """A block larger than its rank's share of memory is streamed (and says so), to the
    result of storage placement with static assignment."""
    job = _job(uneven, "debug.trace_rows=false")
    launch(4, job + ["--set", "data.placement='storage'", "--out", str(tmp_path / "storage")],
           timeout=180, check=True)
    out = tmp_path / "streamed"
    r = launch(4, job + ["--out", str(out)], env={"MPISGD_MEMORY_BUDGET": "10000"},
               timeout=180, check=True)
    assert "does not fit in its share of memory: streaming it" in r.stderr
    assert summary_of(out)["data_io"]["total"]["chunks"] > 0
    assert theta_of(out).tobytes() == theta_of(tmp_path / "storage").tobytes()
    # The job stays as given; the run records what it followed instead, and why.
    assert "placement = \"partition\"" in (out / "config.toml").read_text()
    effective = (out / "effective.toml").read_text()
    assert "placement = \"storage\"" in effective and "does not fit" in effective
    change = summary_of(out)["effective"]["data.placement"]
    assert change["value"] == "storage" and change["job"] == "partition"


def _manifests(run) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run.glob("checkpoints/step-*/manifest.json"))]


@pytest.mark.parametrize("placement", ["partition", "storage"])
def test_a_checkpoints_epoch_counts_the_placements_steps(launch, tmp_path, uneven, placement):
    """The epoch in a checkpoint's manifest is its step over the steps per epoch of the
    placement that ran: storage placement steps through chunks (40 chunks of at most 100 rows,
    4 per step: 10 steps an epoch), partition placement through the training rows
    (3102 rows in batches of 400: 8 steps), so the two differ."""
    out = tmp_path / "run"
    launch(4, _job(uneven, "debug.trace_rows=false", f"data.placement='{placement}'",
                   "checkpoint.every_steps=3", "checkpoint.keep=10")
           + ["--out", str(out)], timeout=180, check=True)
    s = summary_of(out)
    spe = s["steps_per_epoch"]
    assert spe == (10 if placement == "storage" else 8)
    manifests = _manifests(out)
    assert [m["step"] for m in manifests] == [*range(3, s["steps"], 3), s["steps"]]
    assert all(m["epoch"] == m["step"] // spe for m in manifests)
    assert s["effective"] == {}
