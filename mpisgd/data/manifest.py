"""Dataset manifests: a TOML or JSON file listing the shards of a dataset.

A manifest lets a dataset's shards live anywhere (for instance each on the local disk
of the node that reads it) instead of in one folder. ``open_dataset`` reads it in
place of a folder listing when the dataset path ends in one of ``MANIFEST_SUFFIXES``.
"""

from __future__ import annotations

import json
import os
import tomllib

from mpisgd.errors import DataError

MANIFEST_SUFFIXES = (".toml", ".json")


def read_manifest(path: str) -> list[dict]:
    """The shards a manifest lists: ``[{"path", "rows" (or None), "node" (or None)}]``.

    A manifest (TOML or JSON) holds ``shard = [{path = "...", rows = N, node = K}, ...]``;
    relative paths are relative to the manifest, ``rows`` (checked against the file) and
    ``node`` (the index of the node whose local disk holds the shard) are optional.
    """
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f) if path.endswith(".toml") else json.load(f)
    except OSError as e:
        raise DataError(f"cannot read manifest '{path}': {e.strerror or e}") from e
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise DataError(f"manifest '{path}' is not valid {path.rsplit('.', 1)[1].upper()}: "
                        f"{e}") from e
    entries = doc.get("shard") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"manifest '{path}' must list its shards as a non-empty 'shard' "
                        f"array of tables with a 'path' each")
    base = os.path.dirname(os.path.abspath(path))
    return [_entry(path, base, i, e) for i, e in enumerate(entries)]


def _entry(path: str, base: str, i: int, e) -> dict:
    """Shard ``i`` of manifest ``path``, checked; its path made absolute against ``base``."""
    extra = set(e) - {"path", "rows", "node"} if isinstance(e, dict) else set()
    if not isinstance(e, dict) or not isinstance(e.get("path"), str) or extra:
        raise DataError(f"manifest '{path}': shard {i} must be a table with a string "
                        f"'path' and optional integer 'rows' and 'node'"
                        + (f"; unknown keys {sorted(extra)}" if extra else ""))
    for key in ("rows", "node"):
        v = e.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise DataError(f"manifest '{path}': shard {i} has {key} = {v!r}; "
                            f"expected an integer >= 0")
    return {"path": os.path.join(base, e["path"]), "rows": e.get("rows"), "node": e.get("node")}
