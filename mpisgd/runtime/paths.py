"""Where generated data, the numba cache and run folders go by default."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def cache_dir() -> Path:
    """``$MPISGD_CACHE``, else ``$XDG_CACHE_HOME/mpisgd``, else ``~/.cache/mpisgd``."""
    env = os.environ.get("MPISGD_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mpisgd"


def set_numba_cache_dir() -> None:
    """Point numba's on-disk cache at a per-host folder unless the user chose one.

    Must run before numba is imported. A cache folder shared by several nodes over a
    network file system can collide; per host it cannot.
    """
    if "NUMBA_CACHE_DIR" not in os.environ:
        os.environ["NUMBA_CACHE_DIR"] = str(cache_dir() / "numba" / socket.gethostname())
