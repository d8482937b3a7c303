"""The reliability catalogue: every fault and bad input, the modes it applies to, and
what must happen.

Each scenario runs at 4 ranks in each of its modes (tests/faults/test_catalogue.py) and
must end within ``limit`` seconds with ``code``, a message containing every fragment of
``says`` (and naming ``rank`` where the fault is one rank's), no Python traceback, and no
process of the job left behind. ``resume`` scenarios can lose work: after them the newest
valid checkpoint must load and verify, and ``--resume auto`` must continue from it to the
end of the job.

Modes at 4 ranks: allreduce flat and hierarchical (2 emulated nodes of 2 ranks); the
parameter server with 2 server ranks (0 and 1) and 2 workers (2 and 3) in bsp, asp and
ssp consistency. Rank 3 is a worker in every mode, rank 1 a server in ps modes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
from launch.datasets import raw_shard, sets

from mpisgd.data import write_shard

N = 4
WORKER, SERVER = 3, 1

# A small job: 2390 train rows, 24 steps per epoch, 96 steps, a checkpoint every 7 steps.
BASE = sets("data.synth.rows=3000", "data.synth.features=8", "data.synth.shards=3",
            "train.epochs=4", "train.batch_size=100", "optimizer.schedule='constant'",
            "checkpoint.every_steps=7")

SPARSE_DATA = sets("data.synth.kind='sparse'", "model.name='logistic'",
                   "data.synth.features=2048", "data.synth.nnz=8", "optimizer.lr=0.5")
MODES = {
    "ar-flat": sets("comm.allreduce='flat'"),
    "ar-hier": sets("comm.allreduce='hierarchical'", "topology.ranks_per_node=2"),
    "ps-bsp": sets("mode='ps'", "ps.servers=2"),
    "ps-asp": sets("mode='ps'", "ps.servers=2", "ps.consistency='asp'"),
    "ps-ssp": sets("mode='ps'", "ps.servers=2", "ps.consistency='ssp'"),
    # Sparse jobs (CSR rows, (key, value) exchanges, lazy optimizers): logistic regression
    # on generated click-style rows, 2048 hashed features, 8 non-zeros per row.
    "ar-sparse": SPARSE_DATA,
    "ps-sparse": SPARSE_DATA + sets("mode='ps'", "ps.servers=2"),
}
ALL = ("ar-flat", "ar-hier", "ps-bsp", "ps-asp", "ps-ssp")
# Sparse jobs run the scenarios whose code paths they change: the step (kernel, NaN), the
# exchange (a worker or a server killed mid-step), the checkpoints of a sparse optimizer's
# state (replicated: a full disk; sharded: a torn newest one); input checks, signals and
# stalls go through the dense code.
SPARSE = ("ar-sparse", "ps-sparse")
AR = ("ar-flat", "ar-hier")
PS = ("ps-bsp", "ps-asp", "ps-ssp")
# Which modes a scenario runs in: every mode where the mode can change what happens.
# Each rank's rows are checked right after reading them, and the world against the data,
# where only the roles matter (in ps modes the workers read, the servers do not): one
# allreduce and one parameter-server mode cover them.
CONFIG = ("ar-flat", "ps-bsp")
# A job file, an output folder, a checkpoint path and a dataset's metadata are read the
# same way before the mode is even looked at: one run shows it.
ONCE = ("ar-flat",)
# Reads during training go through one reader (mpisgd/data/source.py) in every mode; what
# differs is who reads and whether the readers are in step: all ranks in lockstep
# (allreduce), workers in lockstep (bsp), workers out of step (asp).
READS = ("ar-flat", "ps-asp")
# Paths that differ between allreduce (flat; hierarchical, whose state lives in node-shared
# windows) and the parameter server (bsp: servers in step; asp: not), but not between asp
# and ssp, which share the server loop, the checkpoint writer and the error paths.
PATHS = ("ar-flat", "ar-hier", "ps-bsp", "ps-asp")

# A slow worker keeps the job running long enough for a kill or a signal to land mid-run.
SLOW = sets(f"debug.slow_rank={WORKER}", "debug.slow_ms=40")


@dataclass
class Scenario:
    name: str
    modes: tuple[str, ...]
    args: list[str] = field(default_factory=list)  # "{tmp}", "{out}", file names: formatted
    files: Callable[[Path], dict] | None = None     # tmp -> {placeholder: path}
    env: dict[str, str] = field(default_factory=dict)
    code: int | None = 2             # the exit code; None: any nonzero
    says: tuple[str, ...] = ()       # fragments of stdout+stderr, all required
    rank: int | dict | None = None   # the rank the error message names (per mode: dict)
    action: str = ""                 # "kill:<rank>" (SIGKILL mid-run) or "term" (SIGTERM all)
    resume: bool = False             # then: newest checkpoint intact, --resume auto finishes
    no_dac: bool = False             # run without root's permission override
    before: Callable | None = None   # (launch, tmp, mode, out) -> None: set the stage
    after: Callable | None = None    # (out, result) -> None: extra checks
    limit: float = 30.0
    # What differs under Open MPI's launcher (fields of this class: code, says, ...).
    open_mpi: dict = field(default_factory=dict)

    def applies(self) -> list[tuple[str, str]]:
        return [(self.name, m) for m in self.modes]


# --------------------------------------------------------------------------------------
# Data files


def _xy(rows=100, features=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, features)), rng.normal(size=rows)


def good_file(tmp: Path) -> dict:
    X, y = _xy()
    write_shard(str(tmp / "good.h5"), X, y, "regression", 0)
    return {"good": str(tmp / "good.h5")}


def bad_files(tmp: Path) -> dict:
    X, y = _xy()
    files = good_file(tmp)
    nan_X = X.copy()
    nan_X[37, 2] = np.nan
    inf_y = y.copy()
    inf_y[61] = np.inf
    labels = np.where(y > 0, 1, 0).astype(np.int64)
    labels[5] = 7
    files.update(
        shape=raw_shard(tmp / "shape.h5", X, y[:99]),
        nan=raw_shard(tmp / "nan.h5", nan_X, y),
        inf=raw_shard(tmp / "inf.h5", X, inf_y),
        labels=raw_shard(tmp / "labels.h5", X, labels, task="binary", n_classes=2),
        empty=raw_shard(tmp / "empty.h5", np.empty((0, 4)), np.empty(0)),
        one=raw_shard(tmp / "one.h5", X[:1], y[:1]),
        names=raw_shard(tmp / "names.h5", X, y, x_name="features"),
        intX=raw_shard(tmp / "intX.h5", X.astype(np.int32), y),
        X1d=raw_shard(tmp / "X1d.h5", X[:, 0], y),
    )
    # Truncated: the first 2 KiB of a valid shard (a copy cut short).
    data = Path(files["good"]).read_bytes()
    (tmp / "truncated.h5").write_bytes(data[:2048])
    files["truncated"] = str(tmp / "truncated.h5")
    (tmp / "garbage.h5").write_bytes(b"this is not an HDF5 file\n" * 100)
    files["garbage"] = str(tmp / "garbage.h5")
    locked = tmp / "locked.h5"
    locked.write_bytes(data)
    locked.chmod(0)
    files["locked"] = str(locked)
    (tmp / "manifest.toml").write_text('shard = [{path = "good.h5"}, {path = "gone.h5"}]\n')
    files["manifest"] = str(tmp / "manifest.toml")
    # Job files.
    (tmp / "syntax.toml").write_text("[model\nname = 'linear'\n")
    (tmp / "afile").write_text("not a folder")
    ro = tmp / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    files["readonly"] = str(ro)
    return files


def _data(key: str, *more: str) -> list[str]:
    return sets(f"data.train='{{{key}}}'", "data.test_fraction=0.2", *more)


# --------------------------------------------------------------------------------------
# Stages and checks


def _finished_run(launch, tmp, mode, out) -> Path:
    """A whole run with checkpoints, then its newest checkpoint corrupted in place; returns
    that checkpoint's folder."""
    launch(N, BASE + MODES[mode] + ["--out", str(out)], timeout=120, check=True)
    newest = max((out / "checkpoints").glob("step-*"), key=lambda p: p.stat().st_mtime_ns)
    shard = sorted(newest.glob("shard-*.h5"))[0]
    with h5py.File(shard, "r+") as f:   # flip one stored parameter: a silent bit rot
        theta = f["theta"]
        theta[0] = theta[0] + 1.0
    return newest


def _corrupt_path(launch, tmp, mode, out):
    (tmp / "newest").write_text(str(_finished_run(launch, tmp, mode, out)))


def _rolled_back_once(out, result):
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["rollbacks"]) == 1, summary.get("rollbacks")
    assert summary["test"]["r2"] > 0.9, summary["test"]
    # The job stays as given; the lowered rate is recorded as the run's own change.
    lr = summary["effective"]["optimizer.lr"]
    assert lr["job"] == 1e6 and lr["value"] == summary["rollbacks"][0]["lr"], lr
    assert "lr = 1000000.0" in (out / "config.toml").read_text()
    assert f"lr = {lr['value']!r}" in (out / "effective.toml").read_text()


def _retried(out, result):
    io = json.loads((out / "summary.json").read_text())["data_io"]["total"]
    assert io["retries"] > 0 and io["skipped_rows"] == 0, io


def _skipped(out, result):
    io = json.loads((out / "summary.json").read_text())["data_io"]["total"]
    assert io["skipped_rows"] > 0, io
    assert "skipped" in result.stderr


STORAGE = sets("data.placement='storage'", "data.retry_delay=0.01")


SCENARIOS = [
    # -- failures inside training, on one rank ----------------------------------------------
    Scenario("kernel-exception-step-1", ("ar-flat", "ps-asp"),
             sets(f"debug.fail_rank={WORKER}", "debug.fail_step=1"),
             code=1, says=("injected failure in the gradient kernel at step 1",), rank=WORKER),
    Scenario("kernel-exception-step-50", ALL + ("ps-sparse",),
             sets(f"debug.fail_rank={WORKER}", "debug.fail_step=50"),
             code=1, says=("injected failure in the gradient kernel at step 50",), rank=WORKER),
    Scenario("sigkill-worker", ALL + ("ps-sparse",), SLOW, action=f"kill:{WORKER}", code=None,
             says=("died of signal 9 (SIGKILL)",), resume=True),
    Scenario("sigkill-server", PS, SLOW, action=f"kill:{SERVER}", code=None,
             says=("died of signal 9 (SIGKILL)",), resume=True),
    Scenario("sigkill-rank-0", ALL, SLOW, action="kill:0", code=None,
             says=("died of signal 9 (SIGKILL)",), resume=True),
    # Every mode: asp and ssp servers each decide to stop on their own (the race of a
    # worker told to stop by one server while another waits for its next push).
    # Open MPI's mpirun, sent SIGTERM itself, passes it on, kills the ranks half a second
    # later and exits 1 without forwarding their last lines (measured with 5.0.11; the
    # README's exit-code table): the checkpoint written by then, or the one before,
    # resumes. (SIGUSR1 to mpirun, what slurm/train.sbatch sends, exits 75.)
    Scenario("sigterm-whole-job", ALL, SLOW, action="term", code=75,
             says=("mpisgd: stopped: stopped by a signal", "--resume auto"), resume=True,
             open_mpi={"code": 1, "says": ()}),
    # That race made certain: one server alone gets the signal, the other learns of it
    # only from the workers (a worker stopped by one server says goodbye to the others).
    Scenario("sigterm-one-server", PS,
             sets(f"debug.signal_rank={SERVER}", "debug.signal_step=30"), code=75,
             says=("mpisgd: stopped: stopped by a signal", "--resume auto"), resume=True),
    Scenario("rank-slower-than-step-timeout", PATHS,
             sets(f"debug.slow_rank={WORKER}", "debug.slow_ms=600000", "train.step_timeout=2"),
             code=3, says=("longer than train.step_timeout = 2 s",), rank=WORKER),
    Scenario("worker-missing-at-ps-stall-abort", PS,
             sets(f"debug.slow_rank={WORKER}", "debug.slow_ms=600000", "train.step_timeout=0",
                  "ps.stall_timeout=0.5", "ps.stall_abort=2"),
             code=3, says=(f"for worker rank(s) [{WORKER}]", "giving up after ps.stall_abort")),
    # -- reads during training (workers read storage) ---------------------------------------
    Scenario("read-fault-retried", READS,
             STORAGE + sets("debug.read_fail_file='part-'", "debug.read_fail_times=2",
                            "data.read_retries=3"),
             code=0, after=_retried),
    Scenario("read-fault-persistent", READS,
             STORAGE + sets("debug.read_fail_file='part-00001'", "debug.read_fail_times=1000000",
                            "data.read_retries=2"),
             code=2, says=("cannot read rows", "after 3 tries", "injected read fault")),
    Scenario("read-fault-skipped", READS,
             STORAGE + sets("debug.read_fail_file='part-00001'", "debug.read_fail_times=1000000",
                            "data.read_retries=1", "data.on_read_error='skip'"),
             code=0, after=_skipped),
    # -- HDF5 inputs -------------------------------------------------------------------------
    Scenario("shard-missing-on-one-rank", CONFIG, _data("good"), files=good_file,
             env={"MPISGD_TEST_HIDE": "2:good.h5"}, says=("No such file or directory",
                                                          "good.h5"), rank=2),
    Scenario("shard-missing", ONCE, sets("data.train='{tmp}/nope.h5'"), files=bad_files,
             says=("nope.h5' does not exist",)),
    Scenario("manifest-lists-missing-shard", ONCE, _data("manifest"), files=bad_files,
             says=("gone.h5",)),
    Scenario("shard-unreadable-permissions", ONCE, _data("locked"), files=bad_files, no_dac=True,
             says=("locked.h5", "permission denied")),
    Scenario("shard-truncated", ONCE, _data("truncated"), files=bad_files,
             says=("truncated.h5", "truncated")),
    Scenario("shard-not-hdf5", ONCE, _data("garbage"), files=bad_files,
             says=("garbage.h5", "is not a readable HDF5 file")),
    Scenario("shard-wrong-dataset-names", ONCE, _data("names"), files=bad_files,
             says=("names.h5", "'X'")),
    Scenario("shard-wrong-dtype", ONCE, _data("intX"), files=bad_files, says=("int32",)),
    Scenario("shard-wrong-shape-rows", ONCE, _data("shape"), files=bad_files, says=("99",)),
    Scenario("shard-wrong-shape-1d", ONCE, _data("X1d"), files=bad_files, says=("X1d.h5",)),
    Scenario("shard-nan", CONFIG, _data("nan"), files=bad_files, says=("NaN", "row 37")),
    Scenario("shard-inf", CONFIG, _data("inf"), files=bad_files, says=("inf", "row 61")),
    Scenario("labels-out-of-range", CONFIG, _data("labels", "model.name='logistic'"),
             files=bad_files, says=("label", "7")),
    Scenario("shard-empty", ONCE, _data("empty"), files=bad_files, says=("empty",)),
    # -- job files ---------------------------------------------------------------------------
    Scenario("job-syntax-error", ONCE, ["{tmp}/syntax.toml"], files=bad_files,
             says=("not valid TOML",)),
    Scenario("job-file-missing", ONCE, ["{tmp}/nojob.toml"], files=bad_files,
             says=("nojob.toml",)),
    Scenario("job-unknown-key", ONCE, sets("optimizer.lrr=0.1"),
             says=("Did you mean 'optimizer.lr'",)),
    Scenario("job-value-out-of-range", ONCE, sets("optimizer.lr=-0.1"),
             says=("The 'optimizer.lr' parameter must be a float in (0, inf). Got -0.1",)),
    Scenario("job-wrong-type", ONCE, sets("train.epochs='many'"),
             says=("The 'train.epochs' parameter must be an int",)),
    Scenario("job-unknown-choice", ONCE, sets("model.name='svm'"), says=("Got 'svm' instead",)),
    Scenario("world-too-small-for-servers", PS, sets("ps.servers=4"), says=("ps.servers",)),
    Scenario("more-ranks-than-rows", CONFIG, _data("one"), files=bad_files,
             says=("has 1 rows but the job runs",)),
    Scenario("model-cannot-learn-task", ONCE, sets("model.name='logistic'"),
             says=("cannot learn a regression task",)),
    Scenario("local-mode-on-many-ranks", ONCE, sets("mode='local'"),
             says=("mode 'local' runs on one rank",)),
    Scenario("rollback-in-ps-mode", PS, sets("train.on_divergence='rollback'"),
             says=("train.on_divergence = 'rollback' needs mode = 'allreduce'",)),
    # -- output and checkpoints --------------------------------------------------------------
    Scenario("output-not-writable", ONCE, ["--out", "{readonly}/run"], files=bad_files,
             no_dac=True, says=("not writable",)),
    Scenario("output-path-is-a-file", ONCE, ["--out", "{tmp}/afile/run"], files=bad_files,
             says=("not writable",)),
    Scenario("disk-full-during-checkpoint", PATHS + SPARSE,
             env={"MPISGD_TEST_CKPT_FAULT": "enospc:2"},
             says=("No space left on device",), resume=True),
    Scenario("crash-before-checkpoint-rename", PATHS,
             env={"MPISGD_TEST_CKPT_FAULT": "before_rename:2"}, code=None,
             says=("exited with code 9 without reporting an error",), rank=0, resume=True),
    Scenario("torn-newest-checkpoint", PATHS + ("ps-sparse",),
             env={"MPISGD_TEST_CKPT_FAULT": "after_commit:2"},
             code=None, says=("exited with code 9 without reporting an error",), rank=0,
             resume=True),
    # Loading verifies every checkpoint alike; one replicated writer (allreduce) and one
    # sharded, asynchronous one (ps asp) cover what was written.
    Scenario("corrupt-newest-checkpoint-at-resume", ("ar-flat", "ps-asp"), ["--resume", "auto"],
             before=_finished_run, code=0, says=("skipping checkpoint", "checksum mismatch",
                                                 "resuming at step")),
    Scenario("resume-from-corrupt-checkpoint-path", ONCE, ["--resume", "{newest}"],
             before=_corrupt_path, says=("checksum mismatch",)),
    Scenario("resume-checkpoint-of-another-model", ONCE,
             ["--resume", "auto", *sets("data.synth.features=5")],
             before=lambda launch, tmp, mode, out: launch(
                 N, BASE + MODES[mode] + ["--out", str(out)], timeout=120, check=True),
             says=("holds model 'linear' with 8 features",)),
    # -- divergence --------------------------------------------------------------------------
    Scenario("divergence-lr-too-large", PATHS, sets("optimizer.lr=1e6"), code=4,
             says=("NaN/Inf", "lower optimizer.lr")),
    Scenario("divergence-rollback-recovers", AR,
             sets("optimizer.lr=1e6", "checkpoint.every_steps=50", "train.on_divergence='rollback'",
                  "train.rollback_lr_factor=1e-6"),
             code=0, says=("Rollback 1 of 3: back to the starting point",),
             after=_rolled_back_once),
    Scenario("divergence-rollback-exhausted", AR,
             sets("optimizer.lr=1e6", "train.on_divergence='rollback'", "train.max_rollbacks=2"),
             code=4, says=("Still diverging after 2 rollback(s)",)),
    Scenario("transient-nan-then-resume", PATHS + ("ps-sparse",),
             sets(f"debug.fail_rank={WORKER}", "debug.fail_step=50", "debug.fail_kind='nan'"),
             code=4, says=("NaN/Inf",), rank={m: 0 for m in PS + ("ps-sparse",)}, resume=True),
    Scenario("transient-nan-rolled-back", AR,
             sets(f"debug.fail_rank={WORKER}", "debug.fail_step=50", "debug.fail_kind='nan'",
                  "train.on_divergence='rollback'", "train.rollback_lr_factor=1.0"),
             code=0, says=("Rollback 1 of 3: back to step 49",)),
]

CASES = [case for s in SCENARIOS for case in s.applies()]
BY_NAME = {s.name: s for s in SCENARIOS}
