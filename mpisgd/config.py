"""The one strict, typed job configuration: TOML file < --set overrides < validation.

Every key is declared once below with its type and constraint. An unknown key is an
error naming the nearest valid key; every value is checked before any rank talks to
another, so all ranks (which read the same file) fail identically and early.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpisgd.errors import ConfigError

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

DEFAULT_JOB = Path(__file__).with_name("default_job.toml")
MODES = ("allreduce", "local", "ps")
MODEL_NAMES = ("linear", "logistic", "softmax", "mlp")
SYNTH_KINDS = ("linear", "logistic", "multiclass")
OPTIMIZERS = ("sgd", "adagrad", "adam", "adamw")
SCHEDULES = ("constant", "invscaling", "step", "cosine")


@dataclass
class ModelConfig:
    name: str = _f("linear", Check("choice", choices=MODEL_NAMES), "model family")
    l2: float = _f(0.0, NONNEG, "L2 penalty 0.5*l2*sum(w**2) on weights, not biases")
    l1: float = _f(0.0, NONNEG, "L1 penalty l1*sum(abs(w)) on weights (a proximal step); "
                                "with l2: elastic net")
    hidden: list = _f([64], Check("int_list"), "mlp: hidden layer widths (1 to 3 layers)")
    activation: str = _f("relu", Check("choice", choices=("relu", "tanh")), "mlp: activation")


@dataclass
class SynthConfig:
    kind: str = _f("linear", Check("choice", choices=SYNTH_KINDS), "generator")
    rows: int = _f(100_000, INT1, "rows to generate")
    features: int = _f(20, INT1, "feature count")
    classes: int = _f(3, Check("int", lo=2), "classes for kind='multiclass'")
    noise: float = _f(0.1, NONNEG, "std of the Gaussian noise on y (kind = 'linear' only)")
    seed: int = _f(0, INT0, "generator seed")
    shards: int = _f(4, INT1, "shard files")
    dtype: str = _f("float64", Check("choice", choices=("float32", "float64")), "X dtype")


@dataclass
class DataConfig:
    train: str = _f("", PATH, "HDF5 shard file or folder; empty: generate [data.synth]")
    test: str = _f("", PATH, "held-out HDF5 data; empty: use test_fraction of train")
    test_fraction: float = _f(0.2, Check("float", lo=0.0, hi=1.0, hi_open=True),
                              "share of train rows held out when data.test is empty")
    check_values: bool = _f(True, Check("bool"), "scan for NaN/Inf and bad labels at load")
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
class OptimizerConfig:
    name: str = _f("sgd", Check("choice", choices=OPTIMIZERS), "update rule")
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


@dataclass
class TrainConfig:
    epochs: int = _f(5, INT1, "passes over the training rows")
    batch_size: int = _f(256, INT0, "GLOBAL minibatch (all ranks together); 0 = full batch (GD)")
    seed: int = _f(0, INT0, "seed for shuffling and initialisation")
    shuffle: bool = _f(True, Check("bool"), "reshuffle the rows every epoch")
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
class PSConfig:
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


@dataclass
class CommConfig:
    allreduce: str = _f("auto", Check("choice", choices=("auto", "flat", "hierarchical")),
                        "gradient reduction: flat MPI Allreduce, or node-local shared "
                        "memory + leaders; auto picks by topology and size")
    compression: str = _f("none", Check("choice", choices=("none", "fp16", "bf16", "topk",
                                                             "randomk", "sign")),
                          "gradient compression for transport (allreduce and ps pushes)")
    topk_ratio: float = _f(0.01, Check("float", lo=0.0, hi=1.0, lo_open=True),
                           "topk/randomk: the fraction of entries sent")
    error_feedback: bool = _f(True, Check("bool"), "add what compression dropped to the "
                                                   "next gradient (per rank)")


@dataclass
class TopologyConfig:
    ranks_per_node: int = _f(0, INT0, "split the ranks into emulated nodes of this many "
                                      "consecutive ranks (0: real nodes; the environment "
                                      "variable MPISGD_RANKS_PER_NODE when 0)")


@dataclass
class CheckpointConfig:
    every_steps: int = _f(0, INT0, "write a checkpoint every N global steps (0: off)")
    every_seconds: float = _f(0.0, NONNEG, "... and/or every N seconds of training (0: off)")
    keep: int = _f(3, INT1, "keep the newest K checkpoints")
    final: bool = _f(True, Check("bool"), "write one at the end when checkpointing is on")


@dataclass
class OutputConfig:
    dir: str = _f("", PATH, "run folder; empty: a new folder under runs/")
    progress: str = _f("auto", Check("choice", choices=("auto", "bar", "lines", "none")),
                       "rank-0 progress: bar on a terminal, lines otherwise")
    save_model: bool = _f(True, Check("bool"), "write model.h5")


@dataclass
class DebugConfig:
    trace_rows: bool = _f(False, Check("bool"), "write the global row ids each rank used")
    fail_rank: int = _f(-1, Check("int", lo=-1), "test hook: this rank raises ...")
    fail_step: int = _f(-1, Check("int", lo=-1), "... at this step")
    fail_kind: str = _f("exception", Check("choice", choices=("exception", "nan")),
                        "... an exception in the gradient kernel, or a NaN gradient (once "
                        "per process: a transient fault)")
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
class JobConfig:
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


# ---------------------------------------------------------------------------------
# Loading and merging


def _is_section(f: dataclasses.Field) -> bool:
    return "check" not in f.metadata


def _apply(obj: Any, data: dict, prefix: str, base_dir: Path | None) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        f = fields.get(key)
        if f is None:
            raise ConfigError(_unknown_key_message(dotted, prefix, list(fields)))
        if _is_section(f):
            if not isinstance(value, dict):
                raise ConfigError(f"'{dotted}' is a section ([{dotted}]); got {value!r}.")
            _apply(getattr(obj, key), value, dotted + ".", base_dir)
            continue
        value = f.metadata["check"](dotted, value)
        if f.metadata["check"].kind == "path" and value and base_dir is not None:
            p = Path(value).expanduser()
            value = str(p if p.is_absolute() else (base_dir / p))
        setattr(obj, key, value)


def _unknown_key_message(dotted: str, prefix: str, valid: list[str]) -> str:
    key = dotted[len(prefix):]
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{prefix}{near[0]}'?" if near else ""
    where = f"section [{prefix[:-1]}]" if prefix else "the top level"
    return (f"Unknown key '{dotted}' in {where}.{hint} "
            f"Valid keys: {', '.join(sorted(valid))}.")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=VALUE`` -> (["a", "b"], value); VALUE is read as TOML, else as a bare string."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}.")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key=value with a dotted key, got {text!r}.")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def load_config(path: str | None = None, overrides: list[str] = (), *,
                out: str | None = None) -> JobConfig:
    """Build the job: defaults < TOML file < ``--set`` overrides < ``--out``.

    Relative data paths in a file are taken relative to the file's folder, those in
    overrides relative to the working directory. Raises ConfigError.
    """
    cfg = JobConfig()
    p = Path(path) if path is not None else DEFAULT_JOB
    if not p.is_file():
        raise ConfigError(f"job file '{p}' does not exist.")
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"job file '{p}' is not valid TOML: {exc}.") from None
    except OSError as exc:
        raise ConfigError(f"job file '{p}' cannot be read: {exc.strerror}.") from None
    if "name" not in data:
        cfg.name = p.stem
    _apply(cfg, data, "", p.resolve().parent)
    for text in overrides:
        keys, value = parse_override(text)
        nested: dict = value
        for k in reversed(keys):
            nested = {k: nested}
        _apply(cfg, nested, "", Path.cwd())
    if out:
        cfg.output.dir = str(Path(out).expanduser().resolve())
    validate(cfg)
    return cfg


def validate(cfg: JobConfig) -> None:
    """Cross-field rules that single-key checks cannot see."""
    if cfg.optimizer.nesterov and cfg.optimizer.momentum == 0.0:
        raise ConfigError("optimizer.nesterov = true needs optimizer.momentum > 0.")
    if not cfg.data.train and cfg.data.test:
        raise ConfigError("data.test is set but data.train is empty; give both or neither.")
    if cfg.ps.backup_workers and cfg.ps.consistency != "bsp":
        raise ConfigError(f"ps.backup_workers applies to ps.consistency = 'bsp' only; "
                          f"got '{cfg.ps.consistency}'.")
    if (cfg.mode == "ps" and cfg.optimizer.clip_norm and cfg.ps.servers > 1
            and cfg.ps.consistency != "bsp"):
        raise ConfigError("optimizer.clip_norm with several servers needs ps.consistency = "
                          "'bsp': the global norm sums every server's part of one step.")
    if cfg.train.patience and cfg.mode == "ps":
        raise ConfigError("train.patience (early stopping) needs per-epoch held-out "
                          "metrics, which mode = 'ps' does not compute; use allreduce.")
    if cfg.comm.compression != "none" and cfg.comm.allreduce == "hierarchical":
        raise ConfigError("comm.compression exchanges compressed gradients between all "
                          "ranks; it does not combine with comm.allreduce = 'hierarchical' "
                          "(use 'auto' or 'flat').")
    if cfg.train.sync_every > 1 and cfg.mode == "ps":
        raise ConfigError("train.sync_every (local SGD) applies to mode = 'allreduce'; the "
                          "parameter server has ps.consistency = 'asp' or 'ssp' instead.")
    if cfg.train.sync_every > 1 and cfg.comm.compression != "none":
        raise ConfigError("train.sync_every > 1 averages parameters, not gradients; do not "
                          "combine it with comm.compression.")
    if cfg.data.placement == "partition" and cfg.data.assign != "static":
        raise ConfigError(f"data.assign = '{cfg.data.assign}' hands chunks to any worker, so "
                          f"workers must read storage: set data.placement = 'storage' "
                          f"(data.placement = 'partition' keeps each worker's own block).")
    if cfg.data.placement == "server" and cfg.mode != "ps":
        raise ConfigError("data.placement = 'server' has the parameter servers hold the data; "
                          "it needs mode = 'ps'.")
    if cfg.data.placement != "partition" and cfg.data.folds:
        raise ConfigError(f"data.placement = '{cfg.data.placement}' does not support "
                          f"data.folds (use 'partition').")
    if cfg.train.on_divergence == "rollback" and cfg.mode == "ps":
        raise ConfigError("train.on_divergence = 'rollback' needs mode = 'allreduce': in ps "
                          "mode only the server of a key range sees a NaN, and the job "
                          "stops (exit code 4 is not reached: the server aborts the job).")
    if cfg.ps.stall_abort <= cfg.ps.stall_timeout:
        raise ConfigError("ps.stall_abort must be longer than ps.stall_timeout.")
    if cfg.data.folds == 1 or (cfg.data.folds and cfg.data.fold >= cfg.data.folds):
        raise ConfigError(f"data.folds must be 0 or at least 2, and data.fold below it; got "
                          f"folds = {cfg.data.folds}, fold = {cfg.data.fold}.")
    if cfg.data.folds and cfg.data.test:
        raise ConfigError("data.folds holds out a fold of data.train; do not also set data.test.")
    if not 1 <= len(cfg.model.hidden) <= 3:
        raise ConfigError(f"The 'model.hidden' parameter must list 1 to 3 layer widths. "
                          f"Got {cfg.model.hidden} instead.")
    if (cfg.data.synth.kind == "multiclass" and not cfg.data.train
            and cfg.model.name not in ("softmax", "mlp")):
        raise ConfigError(f"synthetic multiclass data needs model.name = 'softmax', "
                          f"got '{cfg.model.name}'.")


# ---------------------------------------------------------------------------------
# Writing the resolved job back as TOML (for config.toml in the run folder).


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def to_toml(cfg: JobConfig) -> str:
    lines: list[str] = []

    def emit(d: dict, prefix: str) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in d.items() if isinstance(v, dict)}
        if prefix:
            lines.append(f"\n[{prefix}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
        for k, v in tables.items():
            emit(v, f"{prefix}.{k}" if prefix else k)

    emit(cfg.to_dict(), "")
    return "\n".join(lines).lstrip() + "\n"


def reference_markdown() -> str:
    """docs/jobs.md: every key with its default, constraint and meaning (tests keep it current)."""
    lines = ["# Job file reference", "",
             "Generated from `mpisgd/config.py` by `python -c \"import mpisgd.config as c; "
             "print(c.reference_markdown(), end='')\" > docs/jobs.md`; a test checks it is "
             "current. Unknown keys are errors. Override any key on the command line with "
             "`--set section.key=value` (the value is read as TOML: strings may be quoted).",
             ""]

    def walk(obj: Any, prefix: str) -> None:
        rows = []
        for f in dataclasses.fields(obj):
            if _is_section(f):
                continue
            default = getattr(obj, f.name)
            rows.append(f"| `{prefix}{f.name}` | `{_toml_value(default)}` | "
                        f"{f.metadata['check'].describe()} | {f.metadata['doc']} |")
        title = f"[{prefix[:-1]}]" if prefix else "top level"
        lines.extend([f"## {title}", "", "| key | default | allowed | meaning |",
                      "|---|---|---|---|", *rows, ""])
        for f in dataclasses.fields(obj):
            if _is_section(f):
                walk(getattr(obj, f.name), f"{prefix}{f.name}.")

    walk(JobConfig(), "")
    return "\n".join(lines)
