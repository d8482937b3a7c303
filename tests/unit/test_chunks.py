"""Chunks and their assignment (pure functions), manifests, and the chunk reader's retries."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mpisgd.config import load_config
from mpisgd.data import open_dataset, write_shard
from mpisgd.data.chunks import assign, chunk_table, chunks_per_step, epoch_order, step_chunks
from mpisgd.data.source import ChunkReader
from mpisgd.errors import ConfigError, DataError


def test_chunks_tile_uneven_shards_without_crossing_them():
    offsets = (0, 1000, 3531, 3878)
    t = chunk_table(offsets, 256, nodes=(0, None, 2))
    assert t.lo[0] == 0 and t.hi[-1] == 3878
    np.testing.assert_array_equal(t.lo[1:], t.hi[:-1])          # contiguous, no gaps
    for s in range(3):                                           # never across a shard
        mine = t.shard == s
        assert t.lo[mine].min() == offsets[s] and t.hi[mine].max() == offsets[s + 1]
    assert (t.hi - t.lo).max() == 256
    assert set(t.node[t.shard == 0]) == {0} and set(t.node[t.shard == 1]) == {-1}


@pytest.mark.parametrize("policy", ["static", "random", "locality"])
@pytest.mark.parametrize("n_chunks, per_step, workers", [(39, 4, 4), (5, 5, 8), (100, 7, 3)])
def test_every_chunk_of_a_step_goes_to_exactly_one_worker(policy, n_chunks, per_step, workers):
    offsets = np.linspace(0, n_chunks * 10, 5).astype(int)
    table = chunk_table(tuple(offsets), 10, nodes=(0, 1, 1, 0))
    nodes = np.arange(workers) % 2
    order = epoch_order(table.n, seed=3, epoch=1, shuffle=True)
    spe = -(-table.n // per_step)
    seen = []
    for k in range(spe):
        chunks = step_chunks(order, per_step, k)
        parts = [assign(policy, chunks, table, nodes, w, 3, k) for w in range(workers)]
        joined = np.concatenate(parts)
        assert sorted(joined) == sorted(chunks)        # all of the step, nothing twice
        seen.extend(joined)
    assert sorted(seen) == list(range(table.n))        # the epoch: every chunk once


def test_locality_prefers_the_node_that_stores_a_chunk():
    table = chunk_table((0, 400, 800, 1200, 1600), 100, nodes=(0, 1, 2, 3))
    nodes = np.repeat(np.arange(4), 2)                 # 8 workers, 2 per node
    chunks = np.arange(table.n)
    for w in range(8):
        mine = assign("locality", chunks, table, nodes, w, 0, 0)
        assert (table.node[mine] == nodes[w]).all() and mine.size == 2
    static = [assign("static", np.random.default_rng(0).permutation(chunks), table, nodes,
                     w, 0, 0) for w in range(8)]
    local = sum(int((table.node[m] == nodes[w]).sum()) for w, m in enumerate(static))
    assert local < 0.9 * table.n


def test_chunks_per_step():
    assert chunks_per_step(40, 0, 100) == 40           # GD: every chunk
    assert chunks_per_step(40, 1000, 100) == 10
    assert chunks_per_step(40, 50, 100) == 1           # at least one chunk
    assert chunks_per_step(4, 10_000, 100) == 4


def _shards(folder, rows=(30, 50)):
    folder.mkdir()
    for i, n in enumerate(rows):
        X = np.arange(n * 2, dtype=np.float64).reshape(n, 2) + 1000 * i
        write_shard(str(folder / f"part-{i}.h5"), X, np.zeros(n), "regression", 0)
    return folder


def test_manifest_lists_shards_nodes_and_checks_rows(tmp_path):
    _shards(tmp_path / "d")
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"shard": [{"path": "d/part-1.h5", "node": 3},
                                       {"path": "d/part-0.h5", "rows": 30}]}))
    info = open_dataset(str(m))
    assert info.rows == (50, 30) and info.nodes == (3, None)
    m.write_text(json.dumps({"shard": [{"path": "d/part-0.h5", "rows": 31}]}))
    with pytest.raises(DataError, match="says .* has 31 rows"):
        open_dataset(str(m))
    t = tmp_path / "m.toml"
    t.write_text('[[shard]]\npath = "d/part-0.h5"\nnode = "x"\n')
    with pytest.raises(DataError, match="node = 'x'"):
        open_dataset(str(t))
    t.write_text('[[shard]]\npaths = "d/part-0.h5"\n')
    with pytest.raises(DataError, match="unknown keys"):
        open_dataset(str(t))


class _Cfg:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def _reader(info, retries=2, on_error="fail", fail="", times=0, prob=0.0, prefetch=True):
    data = _Cfg(read_retries=retries, retry_delay=0.0, on_read_error=on_error,
                check_values=True, prefetch=prefetch)
    debug = _Cfg(read_fail_file=fail, read_fail_times=times, read_fail_prob=prob)
    return ChunkReader(info, data, debug, rank=0)


@pytest.mark.parametrize("prefetch", [True, False])
def test_reader_retries_then_succeeds_with_the_right_rows(tmp_path, prefetch):
    info = open_dataset(str(_shards(tmp_path / "d")))
    r = _reader(info, retries=2, fail="part-1", times=2, prefetch=prefetch)
    r.request("a", 30, 40)
    X, _ = r.get("a", 30, 40)
    np.testing.assert_array_equal(X[0], [1000, 1001])
    assert r.stats["retries"] == 2 and r.stats["chunks"] == 1
    r.close()


def test_reader_fails_naming_file_and_rows_or_skips_and_counts(tmp_path):
    info = open_dataset(str(_shards(tmp_path / "d")))
    r = _reader(info, retries=1, fail="part-1", prob=1.0)
    with pytest.raises(DataError, match=r"rows \[5, 15\) of datasets X and y in '.*part-1.h5' "
                                        r"after 2 tries"):
        r.get("a", 35, 45)
    r.close()
    r = _reader(info, retries=1, on_error="skip", fail="part-1", prob=1.0)
    assert r.get("a", 35, 45) is None and r.get("b", 0, 10) is not None
    assert r.stats["skipped_rows"] == 10 and r.stats["skipped_chunks"] == 1
    assert "part-1.h5" in r.skipped[0]
    r.close()


def test_placement_configuration_rules():
    with pytest.raises(ConfigError, match="placement = 'storage'"):
        load_config(None, ["data.assign='balanced'"])
    with pytest.raises(ConfigError, match="folds"):
        load_config(None, ["data.placement='storage'", "data.folds=3"])
    cfg = load_config(None, ["data.placement='storage'", "data.assign='locality'"])
    assert cfg.data.chunk_rows == 1024 and cfg.data.on_read_error == "fail"
