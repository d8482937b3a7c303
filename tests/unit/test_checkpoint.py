"""Checkpoint files: atomic commit, verification, reassembly across shard layouts."""

import json

import h5py
import numpy as np
import pytest

from mpisgd.errors import CheckpointError
from mpisgd.store import checkpoint

META = {"model": "linear", "n_features": 9, "n_classes": 0, "n_params": 10,
        "dtype": "float64", "mode": "ps", "world_size": 3, "servers": 2}


def _write(run, step, shards, token="t"):
    theta = np.arange(10, dtype=np.float64)
    vel = theta * 10
    staging = checkpoint.staging_dir(run, step, token)
    entries = [checkpoint.write_shard(staging, i, lo, hi, theta[lo:hi],
                                      {"velocity": vel[lo:hi], "step": np.array(step)})
               for i, (lo, hi) in enumerate(shards)]
    return checkpoint.commit(run, staging, step, entries, META, keep=2), theta, vel


@pytest.mark.parametrize("shards", [[(0, 10)], [(0, 4), (4, 10)], [(0, 3), (3, 5), (5, 10)]])
def test_round_trip_reassembles_any_shard_layout(tmp_path, shards):
    path, theta, vel = _write(tmp_path, 5, shards)
    ck = checkpoint.load(path)
    assert ck.step == 5 and ck.theta.tobytes() == theta.tobytes()
    assert ck.state["velocity"].tobytes() == vel.tobytes() and int(ck.state["step"]) == 5
    checkpoint.check_compatible(ck, model="linear", n_features=9, n_classes=0, n_params=10)


def test_keep_prunes_old_and_latest_wins(tmp_path):
    for step in (1, 2, 3):
        _write(tmp_path, step, [(0, 10)])
    names = sorted(p.name for p in checkpoint.folder(tmp_path).iterdir())
    assert names == ["step-000000002", "step-000000003"]
    ck, warnings = checkpoint.find_latest(tmp_path)
    assert ck.step == 3 and warnings == []


def test_flipped_byte_is_detected(tmp_path):
    path, _, _ = _write(tmp_path, 4, [(0, 10)])
    shard = path / "shard-0.h5"
    with h5py.File(shard, "r") as f:
        offset = f["theta"].id.get_offset()
    data = bytearray(shard.read_bytes())
    data[offset + 3] ^= 0x40
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch in 'theta'"):
        checkpoint.load(path)


def test_corrupt_newest_falls_back_with_warning(tmp_path):
    _write(tmp_path, 1, [(0, 10)])
    newest, _, _ = _write(tmp_path, 2, [(0, 5), (5, 10)])
    shard = newest / "shard-1.h5"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    (checkpoint.folder(tmp_path) / ".step-000000003.tmp-x").mkdir()  # an unfinished write
    ck, warnings = checkpoint.find_latest(tmp_path)
    assert ck.step == 1
    assert any("step-000000002" in w for w in warnings)
    assert any("never completed" in w for w in warnings)


def test_missing_manifest_and_other_model(tmp_path):
    with pytest.raises(CheckpointError, match="no manifest"):
        checkpoint.load(tmp_path)
    path, _, _ = _write(tmp_path, 1, [(0, 10)])
    ck = checkpoint.load(path)
    with pytest.raises(CheckpointError, match="this job trains 'logistic' with 9 features"):
        checkpoint.check_compatible(ck, model="logistic", n_features=9, n_classes=2,
                                    n_params=10)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["shards"][0]["sha256"]["theta"]


def test_resuming_from_an_older_checkpoint_starts_a_new_timeline(tmp_path):
    """Newest by write time, not by step: an older step written later is kept and wins."""
    for step in (10, 20, 30, 15):
        _write(tmp_path, step, [(0, 10)])
    names = sorted(p.name for p in checkpoint.folder(tmp_path).iterdir())
    assert names == ["step-000000015", "step-000000030"]
    assert checkpoint.find_latest(tmp_path)[0].step == 15
