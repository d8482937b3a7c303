"""``mpisgd plot`` and ``mpisgd compare`` on synthetic run folders: PNG sizes, notes,
the Markdown table, and the message when matplotlib is missing. One process, no MPI."""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mpisgd.commands import plot

# The figures need the optional extra; the table, the reading and the missing-extra
# message do not.
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="matplotlib not installed (mpisgd[plot])")

ROOT = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT = 800, 500   # as documented: FIGSIZE (8, 5) inches at 100 dpi


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


def _assert_figure(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert _png_size(path) == (WIDTH, HEIGHT)
    assert (plot.FIGSIZE[0] * plot.DPI, plot.FIGSIZE[1] * plot.DPI) == (WIDTH, HEIGHT)


def _write_run(folder: Path, summary: dict | None, lines: list) -> Path:
    folder.mkdir(parents=True)
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    (folder / "metrics.jsonl").write_text(text)
    return folder


def _rank_cost(rank: int) -> dict:
    return {"rank": rank, "setup": 0.2, "compute": 2.0 + rank, "comm": 0.5, "wait": 0.1 * rank,
            "data": 0.3, "eval": 0.2, "checkpoint": 0.05, "other": -0.01,
            "bytes_sent": 123_456 * (rank + 1), "bytes_received": 654_321}


@pytest.fixture
def allreduce_run(tmp_path) -> Path:
    """Epoch records with test accuracy, per-step records in between, a cost report."""
    lines = []
    for e in range(1, 5):
        lines.append({"step": 10 * e - 5, "epoch": e - 1, "loss": 0.7 / e, "lr": 0.1})
        lines.append({"epoch": e, "step": 10 * e, "train_loss": 0.6 / e, "epoch_time_s": 0.5,
                      "test": {"n": 100, "accuracy": 0.8 + 0.03 * e, "log_loss": 0.5 / e}})
    summary = {"job": "logreg", "mode": "allreduce", "world_size": 3, "samples_per_s": 12345.6,
               "wall_time_s": 4.5, "train_objective": 0.1234567891,
               "test": {"n": 100, "accuracy": 0.92, "auc": 0.97},
               "cost": {"wall_time_s": 4.5, "ranks": [_rank_cost(r) for r in range(3)]}}
    return _write_run(tmp_path / "runs" / "ar", summary, lines)


@pytest.fixture
def ps_run(tmp_path) -> Path:
    """A parameter-server run: no test metrics per epoch, no cost, a line cut by a crash."""
    lines = [{"epoch": e, "step": 8 * e, "train_loss": 0.65 / e, "epoch_time_s": 0.4,
              "updates": 24 * e, "dropped": 0} for e in range(1, 4)]
    lines.append('{"epoch": 4, "step": 3')
    summary = {"job": "logreg", "mode": "ps", "world_size": 4, "samples_per_s": 9000.0,
               "wall_time_s": 1.9, "train_objective": 0.2,
               "ps": {"consistency": "ssp", "servers": [0]}}
    return _write_run(tmp_path / "runs" / "ps", summary, lines)


@pytest.fixture
def regression_run(tmp_path) -> Path:
    lines = [{"epoch": e, "step": 5 * e, "train_loss": 2.0 / e, "epoch_time_s": 0.2,
              "test": {"n": 50, "mse": 1.5 / e, "r2": 0.5}} for e in range(1, 3)]
    summary = {"job": "linreg", "mode": "local", "world_size": 1, "samples_per_s": 500.0,
               "wall_time_s": 0.6, "train_objective": 0.75, "test": {"mse": 0.75, "r2": 0.5}}
    return _write_run(tmp_path / "runs" / "lin", summary, lines)


@needs_matplotlib
def test_plot_writes_training_and_time_split_figures(allreduce_run, tmp_path, capsys):
    out = tmp_path / "figs"
    assert plot.main(["plot", str(allreduce_run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["time_split.png", "training.png"]
    for p in out.iterdir():
        _assert_figure(p)
    assert "note" not in capsys.readouterr().out


@needs_matplotlib
def test_plot_without_test_metrics_or_cost_notes_what_it_skipped(ps_run, capsys):
    assert plot.main(["plot", str(ps_run)]) == 0
    out = ps_run / "plots"   # the default --out
    assert sorted(p.name for p in out.iterdir()) == ["training.png"]
    _assert_figure(out / "training.png")
    said = capsys.readouterr().out
    assert "no 'cost' report" in said and "no held-out metric" in said
    assert "1 unparsable line(s)" in said


def test_metrics_reading_skips_step_records_and_cut_lines(allreduce_run, ps_run):
    run = plot.load_run(allreduce_run)
    assert [r["epoch"] for r in run.epochs] == [1, 2, 3, 4] and run.bad_lines == 0
    assert plot.cumulative_time(run.epochs) == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert plot.main_metric(run.epochs[0]["test"]) == "accuracy"
    assert plot.main_metric({"mse": 1.0, "r2": 0.0}) == "mse"
    assert plot.main_metric(None) is None
    ps = plot.load_run(ps_run)
    assert len(ps.epochs) == 3 and ps.bad_lines == 1
    assert plot.mode_label(ps.summary) == "ps/ssp"


@needs_matplotlib
def test_compare_writes_figure_and_table(allreduce_run, ps_run, regression_run, tmp_path,
                                         capsys):
    out = tmp_path / "cmp"
    runs = [str(allreduce_run), str(ps_run), str(regression_run)]
    assert plot.main(["compare", *runs, "--out", str(out)]) == 0
    _assert_figure(out / "compare.png")
    table = (out / "compare.md").read_text()
    assert table in capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0] == ("| run | mode | world size | samples/s | wall time (s) | "
                        "final train objective | main test metric |")
    assert len(lines) == 2 + 3
    assert lines[2] == (f"| {allreduce_run} | allreduce | 3 | 12,346 | 4.50 | 0.123457 | "
                        f"accuracy 0.92 |")
    assert lines[3] == f"| {ps_run} | ps/ssp | 4 | 9,000 | 1.90 | 0.2 | - |"
    assert lines[4].endswith("| local | 1 | 500 | 0.60 | 0.75 | mse 0.75 |")


def test_line_labels_name_job_mode_and_consistency(allreduce_run, ps_run, tmp_path):
    runs = [plot.load_run(allreduce_run), plot.load_run(ps_run)]
    assert plot.line_labels(runs) == ["logreg allreduce", "logreg ps/ssp"]
    twin = _write_run(tmp_path / "twin", json.loads((allreduce_run / "summary.json")
                                                    .read_text()), [])
    labels = plot.line_labels([runs[0], plot.load_run(twin)])
    assert labels == [f"logreg allreduce [{allreduce_run}]", f"logreg allreduce [{twin}]"]


def test_table_escapes_pipes_and_shows_missing_values(tmp_path):
    run = _write_run(tmp_path / "a|b", None, [{"epoch": 1, "step": 1, "train_loss": 1.0}])
    table = plot.markdown_table([plot.load_run(run)])
    assert table.splitlines()[2] == f"| {str(run).replace('|', chr(92) + '|')} | - | - | - | - " \
                                    f"| - | - |"


@pytest.mark.parametrize("command", ["plot", "compare"])
def test_missing_matplotlib_exits_2_with_one_message(monkeypatch, allreduce_run, tmp_path,
                                                      capsys, command):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # `import matplotlib` fails
    out = tmp_path / "figs"
    assert plot.main([command, str(allreduce_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"mpisgd {command} needs matplotlib: pip install 'mpisgd[plot]'\n"
    assert not out.exists()


@needs_matplotlib
@pytest.mark.parametrize("args, fragment", [
    (["plot", "{tmp}/nope"], "does not exist or is not a folder"),
    (["compare", "{run}", "{tmp}"], "is not a run folder"),
])
def test_bad_run_folder_is_a_clear_error(allreduce_run, tmp_path, capsys, args, fragment):
    argv = [a.format(tmp=tmp_path / "empty", run=allreduce_run) for a in args]
    (tmp_path / "empty").mkdir()
    assert plot.main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mpisgd: error: ") and fragment in err and err.count("\n") == 1


@needs_matplotlib
def test_cli_dispatches_plot_without_mpiexec(allreduce_run, tmp_path):
    out = tmp_path / "figs"
    r = subprocess.run([sys.executable, "-m", "mpisgd", "plot", str(allreduce_run), "--out",
                        str(out)], capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and _png_size(out / "time_split.png") == (WIDTH, HEIGHT)
