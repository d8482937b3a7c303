"""The compute-cost report and the timeline: every second accounted for, every rank traced."""

from __future__ import annotations

import json

import pytest

from .test_train import SMALL, summary_of

MODES = {"allreduce": [], "ps": ["--set", "mode='ps'", "--set", "ps.servers=2"]}


@pytest.mark.parametrize("mode", list(MODES))
def test_time_split_sums_to_wall_and_timeline_covers_every_rank(launch, tmp_path, mode):
    out, trace = tmp_path / "run", tmp_path / "trace.json"
    # A launch of its own: the report splits a whole run as a user's launch makes it,
    # start-up (kernel loading) included.
    r = launch(4, SMALL + MODES[mode] + ["--out", str(out), "--timeline", str(trace)],
               timeout=120, check=True, fresh=True)
    cost = summary_of(out)["cost"]
    wall = cost["wall_time_s"]
    assert len(cost["ranks"]) == 4
    for rank in cost["ranks"]:
        covered = sum(v for k, v in rank.items()
                      if k not in ("rank", "other", "bytes_sent", "bytes_received",
                                   "x_bytes_read"))
        assert abs(covered - wall) <= 0.05 * wall, rank   # named categories cover the run
        assert rank["bytes_sent"] > 0
    assert "time split (mean over ranks)" in r.stdout
    assert cost["machine_read_GBps"] > 0 and cost["kernel_read_GBps"] > 0
    events = json.loads(trace.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {0, 1, 2, 3}
    assert all(e["dur"] >= 0 and "ts" in e and "name" in e for e in spans)
    names = {e["name"] for e in spans}
    expected = {"allreduce", "compute"} if mode == "allreduce" else {"push+pull", "apply+reply"}
    assert expected <= names, names
