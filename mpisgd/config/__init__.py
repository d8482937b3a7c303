"""The one strict, typed job configuration: TOML file < --set overrides < validation.

Every key is declared once (:mod:`.schema`) with its type and constraint. An unknown key
is an error naming the nearest valid key; every value is checked before any rank talks
to another, so all ranks (which read the same file) fail identically and early. A
loaded job is frozen; :func:`replace` makes a validated, frozen copy with some keys
changed.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import tomllib
from pathlib import Path
from typing import Any

from mpisgd.config.schema import (
    DEFAULT_JOB,
    MODEL_NAMES,
    MODES,
    OPTIMIZERS,
    SCHEDULES,
    SYNTH_KINDS,
    Check,
    CheckpointConfig,
    CommConfig,
    DataConfig,
    DebugConfig,
    JobConfig,
    ModelConfig,
    OptimizerConfig,
    OutputConfig,
    PSConfig,
    Section,
    SynthConfig,
    TopologyConfig,
    TrainConfig,
)
from mpisgd.errors import ConfigError
from mpisgd.models import MAX_HIDDEN_LAYERS

__all__ = ["DEFAULT_JOB", "MODEL_NAMES", "MODES", "OPTIMIZERS", "SCHEDULES", "SYNTH_KINDS",
           "Check", "CheckpointConfig", "CommConfig", "DataConfig", "DebugConfig", "JobConfig",
           "ModelConfig", "OptimizerConfig", "OutputConfig", "PSConfig", "Section",
           "SynthConfig", "TopologyConfig", "TrainConfig", "load_config", "validate", "freeze",
           "replace", "parse_override", "to_toml", "reference_markdown"]

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
        _apply(cfg, _nested(".".join(keys), value), "", Path.cwd())
    if out:
        cfg.output.dir = str(Path(out).expanduser().resolve())
    validate(cfg)
    return freeze(cfg)


def freeze(cfg: JobConfig) -> JobConfig:
    """Make ``cfg`` and its sections read-only (in place); returns it."""
    _set_frozen(cfg, True)
    return cfg


def replace(cfg: JobConfig, changes: dict[str, Any]) -> JobConfig:
    """A validated, frozen copy of ``cfg`` with dotted keys changed, e.g.
    ``replace(cfg, {"data.fold": 2})``; each value is checked like a job file's."""
    new = copy.deepcopy(cfg)
    _set_frozen(new, False)
    for key, value in changes.items():
        _apply(new, _nested(key, value), "", None)
    validate(new)
    return freeze(new)


def _set_frozen(obj: Section, frozen: bool) -> None:
    for f in dataclasses.fields(obj):
        if _is_section(f):
            _set_frozen(getattr(obj, f.name), frozen)
    object.__setattr__(obj, "_frozen", frozen)


def _nested(key: str, value: Any) -> dict:
    """``"a.b", v`` -> ``{"a": {"b": v}}``: a dotted key as a job file's tables."""
    for k in reversed(key.split(".")):
        value = {k: value}
    return value


def _validate_optimizer(opt: OptimizerConfig) -> None:
    if opt.nesterov and opt.momentum == 0.0:
        raise ConfigError("optimizer.nesterov = true needs optimizer.momentum > 0.")


def validate(cfg: JobConfig) -> None:
    """Cross-field rules that single-key checks cannot see."""
    _validate_optimizer(cfg.optimizer)
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
    if cfg.train.shuffle_block > 1 and cfg.data.placement != "partition":
        raise ConfigError(f"train.shuffle_block applies to data.placement = 'partition'; "
                          f"'{cfg.data.placement}' placement already steps through whole "
                          f"chunks of data.chunk_rows rows.")
    if cfg.data.placement != "partition" and cfg.data.folds:
        raise ConfigError(f"data.placement = '{cfg.data.placement}' does not support "
                          f"data.folds (use 'partition').")
    if cfg.train.on_divergence == "rollback" and cfg.mode == "ps":
        raise ConfigError("train.on_divergence = 'rollback' needs mode = 'allreduce': in ps "
                          "mode only the server of a key range sees a NaN, and the job "
                          "stops (exit code 4 is not reached: the server aborts the job).")
    if cfg.ps.on_worker_failure == "continue":
        _check_going_on(cfg)
    if cfg.ps.stall_abort <= cfg.ps.stall_timeout:
        raise ConfigError("ps.stall_abort must be longer than ps.stall_timeout.")
    if cfg.data.folds == 1 or (cfg.data.folds and cfg.data.fold >= cfg.data.folds):
        raise ConfigError(f"data.folds must be 0 or at least 2, and data.fold below it; got "
                          f"folds = {cfg.data.folds}, fold = {cfg.data.fold}.")
    if cfg.data.folds and cfg.data.test:
        raise ConfigError("data.folds holds out a fold of data.train; do not also set data.test.")
    if not 1 <= len(cfg.model.hidden) <= MAX_HIDDEN_LAYERS:
        raise ConfigError(f"The 'model.hidden' parameter must list 1 to {MAX_HIDDEN_LAYERS} "
                          f"layer widths. "
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
             "Generated from `mpisgd/config/schema.py` by `python -c \"import mpisgd.config as c; "
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


def _check_going_on(cfg: JobConfig) -> None:
    """``ps.on_worker_failure = "continue"``: what training through a death needs."""
    if cfg.mode != "ps":
        raise ConfigError(f"ps.on_worker_failure = 'continue' needs mode = 'ps': in "
                          f"{cfg.mode} mode every rank holds a part of every step; restart "
                          f"from the newest checkpoint instead (`mpisgd launch "
                          f"--max-restarts K`).")
    if cfg.ps.node_aggregate:
        raise ConfigError("ps.on_worker_failure = 'continue' cannot be used with "
                          "ps.node_aggregate (a node's workers share one window: one's death "
                          "stops its node).")
    if cfg.ps.dead_after >= cfg.ps.stall_abort:
        raise ConfigError("ps.dead_after must be shorter than ps.stall_abort (a worker "
                          "that stopped pushing is declared dead before the job is ended).")
