"""Files that appear whole or not at all: write under a temporary name, fsync, rename.

A crash, a full disk or a kill at any moment leaves either the previous file or the
new one under the final name, never a partial one; the temporary file is removed on
error. Every writer of the project (run folder, model file, checkpoints, predictions,
shards, traces) goes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Iterator

from mpisgd.errors import OutputError


def fsync_path(path: str | os.PathLike, *, strict: bool = False) -> None:
    """fsync a file or folder. Best effort unless ``strict`` (some file systems refuse
    it on folders); ``strict`` raises the OSError (checkpoints: nothing may be lost)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` no other process or call picks: ``.NAME.tmp-ID``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary name to write ``path`` under; when the block ends without an
    error the file is fsynced (``durable``) and renamed over ``path``.

    Any OSError becomes an OutputError naming ``path``; the temporary file is removed.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        publish(tmp, path, durable=durable)
    except OSError as exc:
        raise OutputError(f"cannot write '{path}': {exc.strerror or exc}.") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def publish(tmp: Path, path: Path, *, durable: bool = True) -> None:
    """Rename the finished temporary file ``tmp`` over ``path`` (fsynced before and the
    folder after, when ``durable``). For files written by several steps or ranks, which
    name ``tmp`` with :func:`temporary_name` themselves; raises OSError."""
    if durable:
        fsync_path(tmp)
    os.replace(tmp, path)
    if durable:
        fsync_path(Path(path).parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` by ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, record: dict) -> None:
    """Atomically write ``record`` as JSON (the folder is created). Rank 0 only."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write '{path}': {exc.strerror or exc}.") from None
    write_text(path, json.dumps(record, indent=2) + "\n")
