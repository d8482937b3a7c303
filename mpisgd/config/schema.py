"""The job's keys: every key declared once, with its type, constraint, default and doc.

Sections are ordinary dataclasses while a job is built and frozen once it is validated
(:func:`mpisgd.config.freeze`): a run never changes its job; what a run decides for
itself (placement switched to streaming, a rolled-back learning rate) is recorded beside
the job, see :mod:`mpisgd.context`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpisgd.errors import ConfigError
from mpisgd.models import ACTIVATIONS, MAX_HIDDEN_LAYERS, NAMES

# ---------------------------------------------------------------------------------
# Constraints. Each returns the (possibly converted) value or raises ConfigError with
# the scikit-learn message shape: "The 'x' parameter must be ... Got ... instead."


@dataclass(frozen=True)
class Check:
    kind: str  # "int" | "float" | "bool" | "str" | "choice" | "path" | "int_list"
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = ()

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind in ("int", "float"):
            noun = "an int" if self.kind == "int" else "a float"
            if self.lo is None and self.hi is None:
                return noun
            left = "(" if self.lo_open or self.lo is None else "["
            right = ")" if self.hi_open or self.hi is None else "]"
            lo = "-inf" if self.lo is None else f"{self.lo:g}"
            hi = "inf" if self.hi is None else f"{self.hi:g}"
            return f"{noun} in {left}{lo}, {hi}{right}"
        return {"bool": "a boolean", "str": "a string", "path": "a path string",
                "int_list": "a list of ints"}[self.kind]

    def __call__(self, key: str, value: Any) -> Any:
        bad = ConfigError(
            f"The '{key}' parameter must be {self.describe()}. Got {value!r} instead.")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return value
        if self.kind in ("str", "path", "choice"):
            if not isinstance(value, str):
                raise bad
            if self.kind == "choice" and value not in self.choices:
                raise bad
            return value
        if self.kind == "int_list":
            if not isinstance(value, list) or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                raise bad
            return list(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if self.kind == "int":
            if not isinstance(value, int):
                raise bad
        else:
            value = float(value)
            if not math.isfinite(value):
                raise bad
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise bad
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            raise bad
        return value


class Section:
    """A config section: assignable while the job is built, read-only once frozen."""

    _frozen = False

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise dataclasses.FrozenInstanceError(
                f"the job configuration is frozen after validation; cannot set "
                f"'{name}' (mpisgd.config.replace makes a changed copy)")
        object.__setattr__(self, name, value)


def _f(default, check: Check, doc: str):
    """A config field: its default, its constraint and a one-line doc."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"check": check, "doc": doc})
    return field(default=default, metadata={"check": check, "doc": doc})


INT0 = Check("int", lo=0)
INT1 = Check("int", lo=1)
POS = Check("float", lo=0.0, lo_open=True)
NONNEG = Check("float", lo=0.0)
PATH = Check("path")

DEFAULT_JOB = Path(__file__).parent.parent / "default_job.toml"
MODES = ("allreduce", "local", "ps")
MODEL_NAMES = NAMES
SYNTH_KINDS = ("linear", "logistic", "multiclass", "sparse")
OPTIMIZERS = ("sgd", "adagrad", "adam", "adamw", "ftrl")
SCHEDULES = ("constant", "invscaling", "step", "cosine")


@dataclass
class ModelConfig(Section):
    name: str = _f("linear", Check("choice", choices=MODEL_NAMES), "model family")
    l2: float = _f(0.0, NONNEG, "L2 penalty 0.5*l2*sum(w**2) on weights, not biases")
    l1: float = _f(0.0, NONNEG, "L1 penalty l1*sum(abs(w)) on weights (a proximal step); "
                                "with l2: elastic net")
    hidden: list = _f([64], Check("int_list"),
                      f"mlp: hidden layer widths (1 to {MAX_HIDDEN_LAYERS} layers)")
    activation: str = _f("relu", Check("choice", choices=ACTIVATIONS), "mlp: activation")


@dataclass
class SynthConfig(Section):
    kind: str = _f("linear", Check("choice", choices=SYNTH_KINDS), "generator")
    rows: int = _f(100_000, INT1, "rows to generate")
    features: int = _f(20, INT1, "feature count")
    classes: int = _f(3, Check("int", lo=2), "classes for kind='multiclass'")
    noise: float = _f(0.1, NONNEG, "std of the Gaussian noise on y (kind = 'linear' only)")
    nnz: int = _f(40, INT1, "kind = 'sparse': non-zeros per row (binary labels, CSR shards)")
    zipf: float = _f(1.1, NONNEG, "kind = 'sparse': Zipf exponent of the "
                     "feature frequencies (0: uniform)")
    seed: int = _f(0, INT0, "generator seed")
    shards: int = _f(4, INT1, "shard files")
    dtype: str = _f("float64", Check("choice", choices=("float32", "float64")), "X dtype")


@dataclass
class DataConfig(Section):
    train: str = _f("", PATH, "HDF5 shard file or folder; empty: generate [data.synth]")
    test: str = _f("", PATH, "held-out HDF5 data; empty: use test_fraction of train")
    test_fraction: float = _f(0.2, Check("float", lo=0.0, hi=1.0, hi_open=True),
                              "share of train rows held out when data.test is empty")
    check_values: bool = _f(True, Check("bool"), "scan for NaN/Inf and bad labels at load")
    standardize: bool = _f(False, Check("bool"),
                           "train on (x - mean) / std per feature, both from the training "
                           "rows (all ranks); applied to held-out rows, stored in model.h5")
    folds: int = _f(0, INT0, "k-fold: split rows into this many folds (0: use test_fraction)")
    fold: int = _f(0, INT0, "k-fold: the fold held out as the test set (0-based)")
    placement: str = _f("partition", Check("choice", choices=("partition", "storage",
                                                                "server")),
                        "partition: each worker loads its block once; storage: workers "
                        "read their assigned chunks from the HDF5 files every step; "
                        "server (ps): servers hold the data and send workers chunks")
    assign: str = _f("static", Check("choice", choices=("static", "random", "balanced",
                                                         "locality")),
                     "storage: who computes each chunk of a step (static ranges, seeded "
                     "random, first come first served, node-local first)")
    chunk_rows: int = _f(1024, INT1, "storage: rows per chunk (chunks never cross shards)")
    prefetch: bool = _f(True, Check("bool"), "storage: read the next chunk in the background")
    read_retries: int = _f(3, INT0, "retry a failed read this many times ...")
    retry_delay: float = _f(0.05, NONNEG, "... waiting this long, doubled after each try")
    on_read_error: str = _f("fail", Check("choice", choices=("fail", "skip")),
                            "after the last retry: stop the job, or skip the chunk and "
                            "report it")
    synth: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class OptimizerConfig(Section):
    name: str = _f("sgd", Check("choice", choices=OPTIMIZERS),
                   "update rule (ftrl: sparse models only, docs/sparse.md)")
    lr: float = _f(0.1, POS, "base learning rate")
    momentum: float = _f(0.0, Check("float", lo=0.0, hi=1.0, hi_open=True), "heavy-ball momentum")
    nesterov: bool = _f(False, Check("bool"), "Nesterov momentum")
    schedule: str = _f("constant", Check("choice", choices=SCHEDULES), "learning-rate schedule")
    decay: float = _f(0.0, NONNEG, "invscaling: lr / (1 + decay*step)**power")
    power: float = _f(1.0, POS, "invscaling exponent")
    step_epochs: int = _f(10, INT1, "step: epochs between decays")
    gamma: float = _f(0.1, Check("float", lo=0.0, hi=1.0, lo_open=True), "step: decay factor")
    warmup_steps: int = _f(0, INT0, "linear warm-up from 0 to lr over this many steps")
    beta1: float = _f(0.9, Check("float", lo=0.0, hi=1.0, hi_open=True), "adam/adamw: beta1")
    beta2: float = _f(0.999, Check("float", lo=0.0, hi=1.0, hi_open=True), "adam/adamw: beta2")
    eps: float = _f(1e-8, POS, "adagrad/adam/adamw: epsilon")
    weight_decay: float = _f(0.01, NONNEG, "adamw: decoupled weight decay")
    clip_norm: float = _f(0.0, NONNEG, "clip the gradient to this global L2 norm (0: off)")
    ftrl_beta: float = _f(1.0, NONNEG, "ftrl: per-key rate lr / (ftrl_beta + sqrt(sum of "
                                       "squared gradients)); lr is FTRL's alpha")
    ftrl_l1: float = _f(0.0, NONNEG, "ftrl: L1 strength; a key whose abs(z) <= ftrl_l1 has weight "
                                     "exactly 0 (docs/sparse.md)")
    ftrl_l2: float = _f(0.0, NONNEG, "ftrl: L2 strength")


@dataclass
class TrainConfig(Section):
    epochs: int = _f(5, INT1, "passes over the training rows")
    batch_size: int = _f(256, INT0, "GLOBAL minibatch (all ranks together); 0 = full batch (GD)")
    seed: int = _f(0, INT0, "seed for shuffling and initialisation")
    shuffle: bool = _f(True, Check("bool"), "reshuffle the rows every epoch")
    shuffle_block: int = _f(0, INT0, "0 or 1: shuffle single rows; B > 1: shuffle contiguous "
                                     "blocks of B training rows (a step reads whole runs of "
                                     "rows: faster; see docs/performance.md)")
    max_steps: int = _f(0, INT0, "stop after this many steps (0: no limit)")
    log_every: int = _f(0, INT0, "also log every N steps (0: once per epoch)")
    patience: int = _f(0, INT0, "early stopping: stop after this many epochs without a "
                                "better held-out loss (0: off; allreduce mode)")
    oracle: bool = _f(True, Check("bool"), "linear models: report the gap to the exact "
                                         "least-squares (ridge) optimum")
    sync_every: int = _f(1, INT1, "allreduce: local SGD, average the parameters (and optimizer "
                                  "state) every k steps; 1: synchronous SGD")
    measure_wait: bool = _f(False, Check("bool"),
                            "barrier before each reduction to split waiting from communication")
    step_timeout: float = _f(300.0, NONNEG,
                             "a rank whose step (reading + computing) runs longer than this "
                             "many seconds ends the job naming itself; a rank waiting for the "
                             "others longer than 2x this + 5 s does too (0: off)")
    on_divergence: str = _f("fail", Check("choice", choices=("fail", "rollback")),
                            "NaN/Inf loss or gradient: stop with exit code 4, or roll back to "
                            "the newest checkpoint (else the start) with a smaller rate "
                            "(allreduce mode)")
    max_rollbacks: int = _f(3, INT0, "rollbacks before divergence is final")
    rollback_lr_factor: float = _f(0.5, Check("float", lo=0.0, hi=1.0, lo_open=True),
                                   "optimizer.lr is multiplied by this at each rollback")


@dataclass
class PSConfig(Section):
    servers: int = _f(1, INT1, "server ranks (1: rank 0 serves)")
    placement: str = _f("first", Check("choice", choices=("first", "spread")),
                        "servers are ranks 0..N-1, or spread evenly (one per node)")
    consistency: str = _f("bsp", Check("choice", choices=("bsp", "asp", "ssp")),
                          "bsp: synchronous; asp: asynchronous; ssp: bounded staleness")
    staleness: int = _f(2, INT0, "ssp: a worker may run this many steps ahead of the slowest")
    backup_workers: int = _f(0, INT0, "bsp: apply a step without the last N workers' gradients")
    poll_max_us: float = _f(1000.0, NONNEG, "longest sleep between polls of a waiting server")
    stall_timeout: float = _f(60.0, POS, "a server waiting this long names the missing workers")
    stall_abort: float = _f(300.0, POS, "... and aborts the job after this long")
    node_aggregate: bool = _f(False, Check("bool"),
                              "workers of a node sum their gradients in shared memory and "
                              "one of them talks to the servers")
    on_worker_failure: str = _f("abort", Check("choice", choices=("abort", "continue")),
                                "a worker's death ends the job (abort), or the servers drop "
                                "it and training goes on with the others (continue; needs "
                                "a launcher that keeps the job alive, see docs/reliability.md)")
    dead_after: float = _f(10.0, POS, "continue: a worker that has pushed before but not "
                                      "for this long since its last answer, while others "
                                      "wait on it, is declared dead (when no supervisor "
                                      "reported its death sooner)")


@dataclass
class CommConfig(Section):
    allreduce: str = _f("auto", Check("choice", choices=("auto", "flat", "hierarchical")),
                        "gradient reduction: flat MPI Allreduce, or node-local shared "
                        "memory + leaders; auto picks by topology and size")
    sparse: str = _f("auto", Check("choice", choices=("auto", "dense", "pairs")),
                     "sparse models: reduce the gradient as a dense vector (Allreduce), or "
                     "gather (key, value) pairs; auto picks by the step's unique keys")
    compression: str = _f("none", Check("choice", choices=("none", "fp16", "bf16", "topk",
                                                             "randomk", "sign")),
                          "gradient compression for transport (allreduce and ps pushes)")
    topk_ratio: float = _f(0.01, Check("float", lo=0.0, hi=1.0, lo_open=True),
                           "topk/randomk: the fraction of entries sent")
    error_feedback: bool = _f(True, Check("bool"), "add what compression dropped to the "
                                                   "next gradient (per rank)")


@dataclass
class TopologyConfig(Section):
    ranks_per_node: int = _f(0, INT0, "split the ranks into emulated nodes of this many "
                                      "consecutive ranks (0: real nodes; the environment "
                                      "variable MPISGD_RANKS_PER_NODE when 0)")


@dataclass
class CheckpointConfig(Section):
    every_steps: int = _f(0, INT0, "write a checkpoint every N global steps (0: off)")
    every_seconds: float = _f(0.0, NONNEG, "... and/or every N seconds of training (0: off)")
    keep: int = _f(3, INT1, "keep the newest K checkpoints")
    final: bool = _f(True, Check("bool"), "write one at the end when checkpointing is on")


@dataclass
class OutputConfig(Section):
    dir: str = _f("", PATH, "run folder; empty: a new folder under runs/")
    progress: str = _f("auto", Check("choice", choices=("auto", "bar", "lines", "none")),
                       "rank-0 progress: bar on a terminal, lines otherwise")
    save_model: bool = _f(True, Check("bool"), "write model.h5")


@dataclass
class DebugConfig(Section):
    trace_rows: bool = _f(False, Check("bool"), "write the global row ids each rank used")
    fail_rank: int = _f(-1, Check("int", lo=-1), "test hook: this rank raises ...")
    fail_step: int = _f(-1, Check("int", lo=-1), "... at this step")
    fail_kind: str = _f("exception", Check("choice", choices=("exception", "nan", "kill")),
                        "... an exception in the gradient kernel, a NaN gradient (once "
                        "per process: a transient fault), or SIGKILL to itself after "
                        "computing the step's gradient, before pushing it")
    slow_rank: int = _f(-1, Check("int", lo=-1), "test hook: this rank sleeps ...")
    slow_ms: float = _f(0.0, NONNEG, "... this many milliseconds before every step")
    slow_factor: float = _f(1.0, Check("float", lo=1.0),
                            "... and reads and computes this many times slower (sleeps in "
                            "proportion)")
    signal_rank: int = _f(-1, Check("int", lo=-1), "test hook: this rank alone receives "
                                                    "SIGTERM ...")
    signal_step: int = _f(-1, Check("int", lo=-1), "... at this step (a server: when its "
                                                   "version reaches it)")
    read_fail_file: str = _f("", Check("str"), "fault injection: reads of shard files whose "
                                               "path contains this fail ...")
    read_fail_times: int = _f(0, INT0, "... the first N times on each rank ...")
    read_fail_prob: float = _f(0.0, Check("float", lo=0.0, hi=1.0),
                               "... and then with this probability (seeded per rank)")


@dataclass
class JobConfig(Section):
    name: str = _f("job", Check("str"), "job name, used in run-folder names")
    mode: str = _f("allreduce", Check("choice", choices=MODES), "training mode")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    ps: PSConfig = field(default_factory=PSConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
