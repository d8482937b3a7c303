"""HDF5 checkpoints: written atomically, verified on load, resumable at any world size.

A checkpoint is a folder ``checkpoints/step-<step>/`` holding one HDF5 shard per key
range (one in allreduce mode, one per server in parameter-server mode: each writes
its own) and ``manifest.json``, written last by one rank, with a SHA-256 of every
array. Everything is first written under ``.step-<step>.tmp-<id>/``, flushed and
fsync'ed, and the folder is renamed into place only when complete, so a crash at any
moment leaves the previous checkpoint as it was. Loading recomputes every checksum.

Contents: parameters and optimizer state (sliced by key range), the global step and
epoch (which fix the data position: every minibatch is a function of seed, epoch and
step, and the seed is in the saved config), the resolved config, the model's shape
and versions. Resuming reassembles full vectors from the shards, so the next run may
use another world size, another number of servers, or the other mode.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from mpisgd import __version__
from mpisgd.errors import CheckpointError
from mpisgd.store.atomic import fsync_path

FORMAT = "mpisgd-checkpoint"
FORMAT_VERSION = 1
_PREFIX = "step-"


def folder(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def staging_dir(run_dir: Path, step: int, token: str) -> Path:
    """The temporary folder every writer of this checkpoint uses (``token``: agreed id)."""
    return folder(run_dir) / f".{_PREFIX}{step:09d}.tmp-{token}"


def write_shard(staging: Path, index: int, lo: int, hi: int, theta: np.ndarray,
                state: dict[str, np.ndarray]) -> dict:
    """Write one key range [lo, hi) and its optimizer state; return its manifest entry.

    Any rank that holds a key range calls this for its own range.
    """
    _test_hook("before_write")
    staging.mkdir(parents=True, exist_ok=True)
    name = f"shard-{index}.h5"
    arrays = {"theta": theta, **{f"opt/{k}": v for k, v in state.items()}}
    try:
        with h5py.File(staging / name, "w") as f:
            for key, value in arrays.items():
                f.create_dataset(key, data=value)
            f.attrs.update(lo=lo, hi=hi)
            _test_hook("enospc")
        fsync_path(staging / name, strict=True)
    except OSError as exc:
        # A partial shard is of no use and, on a full disk, holds space another write needs.
        (staging / name).unlink(missing_ok=True)
        raise CheckpointError(f"cannot write checkpoint shard '{staging / name}': "
                              f"{exc.strerror or exc}.") from None
    return {"file": name, "lo": lo, "hi": hi,
            "sha256": {k: _digest(v) for k, v in arrays.items()}}


def commit(run_dir: Path, staging: Path, step: int, shards: list[dict], meta: dict,
           keep: int) -> Path:
    """One rank, after every shard is written: manifest, fsync, rename; prune old ones."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step,
                "created": time.time(), "mpisgd_version": __version__,
                "numpy_version": np.__version__, "h5py_version": h5py.__version__,
                **meta, "shards": sorted(shards, key=lambda s: s["lo"])}
    final = folder(run_dir) / f"{_PREFIX}{step:09d}"
    try:
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        fsync_path(staging / "manifest.json", strict=True)
        _test_hook("before_rename")
        if final.exists():  # the same step written again (a resumed run): replace it
            shutil.rmtree(final)
        os.replace(staging, final)
        fsync_path(final.parent, strict=True)
    except OSError as exc:
        raise CheckpointError(f"cannot commit checkpoint '{final}': "
                              f"{exc.strerror or exc}.") from None
    _test_hook("after_commit", final)
    _prune(run_dir, keep)
    return final


def _committed(run_dir: Path) -> list[Path]:
    """Committed checkpoints, oldest written first.

    Ordered by when they were written, not by step: after resuming from an older
    checkpoint, the new timeline's checkpoints are the ones to keep and resume from.
    """
    paths = list(folder(run_dir).glob(f"{_PREFIX}*[0-9]"))
    return sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.name))


def _prune(run_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints; drop stale staging folders."""
    done = _committed(run_dir)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in folder(run_dir).glob(f".{_PREFIX}*.tmp-*"):
        if stale.stat().st_mtime < time.time() - 3600:
            shutil.rmtree(stale, ignore_errors=True)


@dataclass
class Checkpoint:
    path: Path
    manifest: dict
    theta: np.ndarray
    state: dict[str, np.ndarray]

    @property
    def step(self) -> int:
        return int(self.manifest["step"])


def load(path: Path) -> Checkpoint:
    """Read and verify a checkpoint folder; reassemble the full vectors. Any rank."""
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise CheckpointError(f"'{path}' is not a checkpoint: no manifest.json (an "
                              f"interrupted write?).")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint manifest '{mpath}' is unreadable: {exc}.") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"'{mpath}' is not an mpisgd checkpoint of format version "
                              f"{FORMAT_VERSION}.")
    n = int(manifest["n_params"])
    dtype = np.dtype(manifest["dtype"])
    theta = np.empty(n, dtype=dtype)
    state: dict[str, np.ndarray] = {}
    covered = 0
    for shard in manifest["shards"]:
        lo, hi = int(shard["lo"]), int(shard["hi"])
        fpath = path / shard["file"]
        try:
            with h5py.File(fpath, "r") as f:
                arrays = {k: f[k][...] for k in shard["sha256"]}
        except (OSError, KeyError) as exc:
            raise CheckpointError(f"checkpoint shard '{fpath}' is unreadable or incomplete: "
                                  f"{exc}.") from None
        for key, value in arrays.items():
            if _digest(value) != shard["sha256"][key]:
                raise CheckpointError(f"checksum mismatch in '{key}' of '{fpath}': the "
                                      f"checkpoint is corrupt.")
        theta[lo:hi] = arrays.pop("theta")
        for key, value in arrays.items():
            name = key.split("/", 1)[1]
            if value.shape == (hi - lo,):          # per-parameter state: place the slice
                state.setdefault(name, np.empty(n, dtype=value.dtype))[lo:hi] = value
            else:                                  # scalars (step counters): identical
                state.setdefault(name, value)
        covered += hi - lo
    if covered != n:
        raise CheckpointError(f"checkpoint '{path}' covers {covered} of {n} parameters.")
    return Checkpoint(path=path, manifest=manifest, theta=theta, state=state)


def find_latest(run_dir: Path, skip: int = 0) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint that verifies (passing over ``skip`` valid newer ones), and
    a warning for each newer one that did not verify."""
    warnings = [f"ignoring '{p.name}': a checkpoint write that never completed"
                for p in folder(run_dir).glob(f".{_PREFIX}*.tmp-*")]
    for candidate in reversed(_committed(run_dir)):
        try:
            ckpt = load(candidate)
        except CheckpointError as exc:
            warnings.append(f"skipping checkpoint '{candidate.name}': {exc}")
            continue
        if skip == 0:
            return ckpt, warnings
        skip -= 1
    return None, warnings


def check_compatible(ckpt: Checkpoint, *, model: str, n_features: int, n_classes: int,
                     n_params: int, hidden: list | None = None) -> None:
    """A checkpoint of another model or feature count is a clear error, not a crash."""
    m = ckpt.manifest
    found = (m.get("model"), m.get("n_features"), m.get("n_classes"), m.get("n_params"))
    want = (model, n_features, n_classes, n_params)
    if found != want:
        raise CheckpointError(
            f"checkpoint '{ckpt.path}' holds model {found[0]!r} with {found[1]} features, "
            f"{found[2]} classes and {found[3]} parameters, but this job trains {want[0]!r} "
            f"with {want[1]} features, {want[2]} classes and {want[3]} parameters.")


def _test_hook(point: str, path: Path | None = None) -> None:
    """Fault injection for the tests: ``MPISGD_TEST_CKPT_FAULT=<point>[:<n>]``.

    Dies (exit 9, no cleanup) at the n-th time (default: first) this process reaches
    ``point``; ``after_commit`` first truncates the newest shard, as a torn write would;
    ``enospc`` does not die but fails the shard's write as a full disk does.
    """
    spec = os.environ.get("MPISGD_TEST_CKPT_FAULT", "")
    if not spec.startswith(point):
        return
    nth = int(spec.split(":", 1)[1]) if ":" in spec else 1
    _HITS[point] = _HITS.get(point, 0) + 1
    if _HITS[point] != nth:
        return
    if point == "after_commit" and path is not None:
        shard = path / "shard-0.h5"
        size = shard.stat().st_size
        with open(shard, "r+b") as fh:
            fh.truncate(size // 2)
    if point == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os._exit(9)


_HITS: dict[str, int] = {}
