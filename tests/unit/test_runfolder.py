"""Run folders and stop requests, without MPI: --out on an earlier run is refused,
resumed or overwritten (only the run's own files); Ctrl-C is a stop request, a second
one ends at once; the kernel-bandwidth line only when it was measurable."""

from __future__ import annotations

import os
import signal
import time

import pytest

from mpisgd.errors import OutputError
from mpisgd.report import cost
from mpisgd.runtime import signals
from mpisgd.store import runfolder


def _earlier_run(path):
    (path / "checkpoints" / "step-000000007").mkdir(parents=True)
    (path / "checkpoints" / "step-000000007" / "shard-0.h5").write_bytes(b"old")
    for name in ("config.toml", "metrics.jsonl", "summary.json", "model.h5"):
        (path / name).write_text("old")
    (path / "notes.txt").write_text("the user's")


def test_a_new_or_foreign_folder_is_taken_as_it_is(tmp_path):
    runfolder.claim(str(tmp_path / "new"), resume=False, overwrite=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("1,2\n")
    runfolder.claim(str(tmp_path / "mine"), resume=False, overwrite=True)
    assert (tmp_path / "mine" / "data.csv").read_text() == "1,2\n"


def test_an_earlier_run_is_refused_naming_both_ways_out(tmp_path):
    _earlier_run(tmp_path)
    with pytest.raises(OutputError) as err:
        runfolder.claim(str(tmp_path), resume=False, overwrite=False)
    text = str(err.value)
    assert "--resume auto" in text and "--overwrite" in text and "checkpoints" in text
    runfolder.claim(str(tmp_path), resume=True, overwrite=False)   # continued: untouched
    assert runfolder.earlier_run(tmp_path) == ["checkpoints", "config.toml", "metrics.jsonl",
                                               "model.h5", "summary.json"]


def test_overwrite_deletes_the_run_and_only_the_run(tmp_path):
    _earlier_run(tmp_path)
    (tmp_path / ".overwritten-dead").mkdir()   # what a crashed --overwrite left
    (tmp_path / "fold-0").mkdir()              # a cv folder's fold
    runfolder.claim(str(tmp_path), resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_ctrl_c_is_a_stop_request_and_a_second_one_ends_at_once(monkeypatch):
    monkeypatch.setattr(signals, "SAME_PRESS_S", 0.2)
    before = signal.getsignal(signal.SIGINT)
    with signals.stop_requests():
        assert not signals.requested()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)   # the same press, seen twice: still one
        time.sleep(0.01)
        assert signals.requested() and signals.names() == ["SIGINT"]
        time.sleep(0.3)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_is_a_stop_request_and_a_new_job_forgets_it():
    with signals.stop_requests():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert signals.names() == ["SIGTERM"] and signals.name() == "SIGTERM"
    with signals.stop_requests():
        assert not signals.requested()


def _report(compute: float) -> dict:
    return {"mean_share": {"setup": 0.5, "compute": 0.5}, "kernel_read_GBps": 0.05,
            "machine_read_GBps": 8.6, "bytes_sent_total": 2e6, "kernel_compute_s": compute,
            "kernel_rate_measurable": compute >= cost.MEASURABLE_COMPUTE_S}


def test_the_kernel_bandwidth_is_said_only_when_measurable():
    short, long = cost.describe(_report(0.05)), cost.describe(_report(30.0))
    assert "GB/s" not in short and "time split" in short and "2.0 MB sent" in short
    assert "gradient kernel 0.05 GB/s of X read vs 8.6 GB/s" in long
