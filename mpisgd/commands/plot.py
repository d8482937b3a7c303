"""``mpisgd plot`` and ``mpisgd compare``: figures and a table from run folders.

    python -m mpisgd plot RUN_DIR [--out DIR]          training.png, time_split.png
    python -m mpisgd compare RUN_DIR... [--out DIR]    compare.png, compare.md (also printed)

One process, no MPI: they only read ``metrics.jsonl`` and ``summary.json``. Every figure
is FIGSIZE inches at DPI dots per inch, i.e. 800 x 500 pixels, whatever the data, drawn
with Matplotlib's Agg backend (no display needed). Matplotlib is an optional extra
(``pip install 'mpisgd[plot]'``); without it both commands exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mpisgd.errors import DataError, MpisgdError, OutputError

FIGSIZE = (8.0, 5.0)   # inches ...
DPI = 100              # ... at 100 dpi: every figure is 800 x 500 pixels
MISSING_MATPLOTLIB = "mpisgd {command} needs matplotlib: pip install 'mpisgd[plot]'"
# The time categories of summary.json["cost"]["ranks"], in stacking order; absent ones
# are left out. Any other float entry of a rank (not "rank", nothing named *bytes*) is
# taken for a newer category of seconds and stacked before "other".
TIME_PARTS = ("setup", "data", "compute", "comm", "wait", "eval", "log", "checkpoint",
              "other")
# Held-out metric plotted and tabled: the first of these the test records hold.
MAIN_METRICS = ("accuracy", "mse")
TABLE_COLUMNS = ("run", "mode", "world size", "samples/s", "wall time (s)",
                 "final train objective", "main test metric")

PLOT_USAGE = "python -m mpisgd plot RUN_DIR [--out DIR]"
COMPARE_USAGE = "python -m mpisgd compare RUN_DIR... [--out DIR]"


# ---------------------------------------------------------------------------------
# Reading run folders (no matplotlib needed).

@dataclass
class Run:
    """What a run folder holds: its name as given, summary.json ({} if absent), the
    per-epoch records of metrics.jsonl, and how many lines could not be parsed."""

    name: str
    path: Path
    summary: dict = field(default_factory=dict)
    epochs: list[dict] = field(default_factory=list)
    bad_lines: int = 0


def load_run(path: str | Path) -> Run:
    """Read a run folder; raises DataError when it holds neither summary.json nor
    metrics.jsonl. Per-step records (no ``train_loss``) and unparsable lines (a line cut
    by a crash) are skipped."""
    p = Path(path)
    name = str(path).rstrip("/") or str(path)
    if not p.is_dir():
        raise DataError(f"run folder '{path}' does not exist or is not a folder; expected "
                        f"the --out folder of a training run.")
    summary_path, metrics_path = p / "summary.json", p / "metrics.jsonl"
    if not summary_path.is_file() and not metrics_path.is_file():
        raise DataError(f"'{path}' is not a run folder: it holds neither summary.json nor "
                        f"metrics.jsonl.")
    run = Run(name=name, path=p)
    if summary_path.is_file():
        try:
            run.summary = json.loads(summary_path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read '{summary_path}': {exc}.") from None
    if metrics_path.is_file():
        run.epochs, run.bad_lines = epoch_records(metrics_path.read_text().splitlines())
    return run


def epoch_records(lines: list[str]) -> tuple[list[dict], int]:
    """The epoch records among metrics.jsonl lines, and the count of unparsable lines."""
    out, bad = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(record, dict) and "train_loss" in record:
            out.append(record)
    return out, bad


def main_metric(test: dict | None) -> str | None:
    """'accuracy' or 'mse', whichever the test metrics hold; None for neither."""
    return next((m for m in MAIN_METRICS if isinstance(test, dict) and m in test), None)


def cumulative_time(epochs: list[dict]) -> list[float]:
    """Wall time at the end of each epoch: epoch_time_s summed (0 where missing)."""
    total, out = 0.0, []
    for r in epochs:
        total += float(r.get("epoch_time_s") or 0.0)
        out.append(total)
    return out


def mode_label(summary: dict) -> str:
    """'allreduce', or 'ps/ssp' with the parameter server's consistency."""
    mode = str(summary.get("mode", "?"))
    consistency = (summary.get("ps") or {}).get("consistency")
    return f"{mode}/{consistency}" if mode == "ps" and consistency else mode


def line_labels(runs: list[Run]) -> list[str]:
    """'job mode' per run; the run's folder is appended where labels would repeat."""
    labels = [f"{r.summary.get('job', r.path.name)} {mode_label(r.summary)}" for r in runs]
    return [f"{lab} [{r.name}]" if labels.count(lab) > 1 else lab
            for lab, r in zip(labels, runs)]


def _number(value, spec: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return "-"
    return format(value, spec)


def table_row(run: Run) -> list[str]:
    """One row of the compare table (TABLE_COLUMNS); '-' for what the run lacks."""
    s = run.summary
    test = s.get("test") or {}
    metric = main_metric(test)
    shown = f"{metric} {_number(test[metric], '.4g')}" if metric else "-"
    return [run.name, mode_label(s) if s else "-", _number(s.get("world_size"), "d"),
            _number(s.get("samples_per_s"), ",.0f"), _number(s.get("wall_time_s"), ".2f"),
            _number(s.get("train_objective"), ".6g"), shown]


def markdown_table(runs: list[Run]) -> str:
    """The compare table in Markdown, one row per run."""
    rows = [[c.replace("|", "\\|") for c in table_row(r)] for r in runs]
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |",
             "|---|---|" + "---:|" * (len(TABLE_COLUMNS) - 3) + "---|"]  # numbers right
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------
# Figures.

def _matplotlib():
    """(Figure, FigureCanvasAgg, rc_context, MaxNLocator): the Agg backend used
    directly, without pyplot's global state. ImportError when matplotlib is missing."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    return Figure, FigureCanvasAgg, matplotlib.rc_context, MaxNLocator


class _Drawer:
    """Makes fixed-size Agg figures and saves them as PNG."""

    def __init__(self):
        self.Figure, self.Canvas, self.rc_context, self.MaxNLocator = _matplotlib()

    def figure(self):
        fig = self.Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
        self.Canvas(fig)
        return fig

    def save(self, fig, path: Path) -> Path:
        # "standard": never a tight bounding box (a user's matplotlibrc may ask for
        # one), so the PNG is exactly FIGSIZE * DPI pixels.
        try:
            with self.rc_context({"savefig.bbox": "standard"}):
                fig.savefig(path, dpi=DPI, format="png")
        except OSError as exc:
            raise OutputError(f"cannot write '{path}': {exc.strerror or exc}.") from None
        return path


def training_figure(drawer: _Drawer, run: Run, path: Path) -> str | None:
    """Loss (and the held-out metric, if recorded) against step and against wall time.
    Returns a note when something is missing."""
    epochs = run.epochs
    metric = next((main_metric(r.get("test")) for r in epochs if main_metric(r.get("test"))),
                  None)
    fig = drawer.figure()
    axes = fig.subplots(2 if metric else 1, 2, squeeze=False, sharex="col")
    steps = [r.get("step", r.get("epoch")) for r in epochs]
    wall = cumulative_time(epochs)
    for col, (x, xlabel) in enumerate(((steps, "step"),
                                       (wall, "wall time (s, epoch_time_s summed)"))):
        ax = axes[0][col]
        ax.plot(x, [r["train_loss"] for r in epochs], marker="o", markersize=3)
        ax.set_ylabel("training loss (epoch mean)")
        ax.grid(alpha=0.3)
        if metric:
            pts = [(xi, r["test"][metric]) for xi, r in zip(x, epochs)
                   if metric in (r.get("test") or {})]
            bottom = axes[1][col]
            bottom.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                        color="tab:orange")
            bottom.set_ylabel(f"test {metric}")
            bottom.grid(alpha=0.3)
        axes[-1][col].set_xlabel(xlabel)
    fig.suptitle(_title(run))
    drawer.save(fig, path)
    if not epochs:
        return "metrics.jsonl holds no epoch records: the training figure is empty"
    if not metric:
        return "no held-out metric in metrics.jsonl (no test data, or a parameter-server run)"
    return None


def _title(run: Run) -> str:
    s = run.summary
    world = f", {s['world_size']} ranks" if "world_size" in s else ""
    return f"{s.get('job', run.path.name)} ({mode_label(s)}{world})" if s else run.name


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"  # not reached


def time_parts(ranks: list[dict]) -> list[str]:
    """The time categories the ranks' cost entries hold, in stacking order."""
    known = [p for p in TIME_PARTS if any(p in r for r in ranks)]
    extra = [k for r in ranks for k, v in r.items()
             if k not in TIME_PARTS and k != "rank" and "bytes" not in k
             and isinstance(v, float)]
    extra = list(dict.fromkeys(extra))
    return ([p for p in known if p != "other"] + extra
            + (["other"] if "other" in known else []))


def time_split_figure(drawer: _Drawer, run: Run, path: Path) -> bool:
    """Each rank's wall time split into TIME_PARTS as stacked horizontal bars, from
    summary.json["cost"]. False (no file) when the run has no cost report."""
    cost = run.summary.get("cost") or {}
    ranks = sorted(cost.get("ranks") or [], key=lambda r: r.get("rank", 0))
    if not ranks:
        return False
    parts = time_parts(ranks)
    fig = drawer.figure()
    ax = fig.subplots()
    y = [r.get("rank", i) for i, r in enumerate(ranks)]
    left = [0.0] * len(ranks)
    for part in parts:
        width = [max(float(r.get(part) or 0.0), 0.0) for r in ranks]  # "other" may be < 0
        ax.barh(y, width, left=left, label=part, height=0.7)
        left = [a + b for a, b in zip(left, width)]
    if len(ranks) <= 16:  # the traffic of each rank beside its bar
        for yi, x, r in zip(y, left, ranks):
            if "bytes_sent" in r or "bytes_received" in r:
                ax.annotate(f" {_bytes(r.get('bytes_sent', 0))} sent, "
                            f"{_bytes(r.get('bytes_received', 0))} received", (x, yi),
                            va="center", fontsize=8)
        ax.set_xlim(0, max(left + [1e-9]) * 1.35)
    ax.yaxis.set_major_locator(drawer.MaxNLocator(integer=True))
    ax.invert_yaxis()  # rank 0 on top
    ax.set_xlabel("seconds")
    ax.set_ylabel("rank")
    wall = cost.get("wall_time_s")
    ax.set_title(f"{_title(run)}: time per rank"
                 + (f" (wall time {wall:.2f} s)" if isinstance(wall, (int, float)) else ""))
    fig.legend(loc="outside lower center", fontsize=8, ncols=len(parts))
    ax.grid(axis="x", alpha=0.3)
    drawer.save(fig, path)
    return True


def compare_figure(drawer: _Drawer, runs: list[Run], path: Path) -> list[str]:
    """Training loss against wall time, one line per run; notes for runs left out."""
    fig = drawer.figure()
    ax = fig.subplots()
    notes = []
    for run, label in zip(runs, line_labels(runs)):
        if not run.epochs:
            notes.append(f"{run.name}: no epoch records in metrics.jsonl, left out of the "
                         f"figure")
            continue
        ax.plot(cumulative_time(run.epochs), [r["train_loss"] for r in run.epochs],
                marker="o", markersize=3, label=label)
    ax.set_xlabel("wall time (s, epoch_time_s summed)")
    ax.set_ylabel("training loss (epoch mean)")
    ax.set_title("training loss against wall time")
    ax.grid(alpha=0.3)
    if len(notes) < len(runs):
        ax.legend(fontsize=8)
    drawer.save(fig, path)
    return notes


# ---------------------------------------------------------------------------------
# Commands.

def _out_dir(out: str) -> Path:
    p = Path(out)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder '{p}': {exc.strerror or exc}.") from None
    return p


def _plot(args, drawer: _Drawer) -> None:
    run = load_run(args.run)
    out = _out_dir(args.out or str(Path(args.run) / "plots"))
    notes = [f"{run.bad_lines} unparsable line(s) of metrics.jsonl skipped"] if run.bad_lines \
        else []
    note = training_figure(drawer, run, out / "training.png")
    print(f"mpisgd plot: wrote {out / 'training.png'}")
    notes += [note] if note else []
    if time_split_figure(drawer, run, out / "time_split.png"):
        print(f"mpisgd plot: wrote {out / 'time_split.png'}")
    else:
        notes.append("summary.json has no 'cost' report: time split per rank skipped")
    for n in notes:
        print(f"mpisgd plot: note: {n}")


def _compare(args, drawer: _Drawer) -> None:
    runs = [load_run(r) for r in args.runs]
    out = _out_dir(args.out or ".")
    notes = compare_figure(drawer, runs, out / "compare.png")
    table = markdown_table(runs)
    try:
        (out / "compare.md").write_text(table)
    except OSError as exc:
        raise OutputError(f"cannot write '{out / 'compare.md'}': "
                          f"{exc.strerror or exc}.") from None
    print(table, end="")
    print(f"mpisgd compare: wrote {out / 'compare.png'} and {out / 'compare.md'}")
    for n in notes:
        print(f"mpisgd compare: note: {n}")


def _parser(command: str) -> argparse.ArgumentParser:
    if command == "plot":
        p = argparse.ArgumentParser(prog="mpisgd plot", usage=PLOT_USAGE,
                                    description="Figures of one run folder: loss and held-"
                                    "out metric against step and wall time, and the time "
                                    "split per rank. One process, no MPI.")
        p.add_argument("run", help="run folder (metrics.jsonl, summary.json)")
        p.add_argument("--out", help="folder for the PNG files (default: RUN_DIR/plots)")
    else:
        p = argparse.ArgumentParser(prog="mpisgd compare", usage=COMPARE_USAGE,
                                    description="Several runs on one figure (loss against "
                                    "wall time) and one Markdown table. One process, no MPI.")
        p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
        p.add_argument("--out", help="folder for compare.png and compare.md (default: .)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    return p


def main(argv: list[str]) -> int:
    """``mpisgd plot`` / ``mpisgd compare`` (argv[0] names which); one process."""
    command, rest = argv[0], argv[1:]
    args = _parser(command).parse_args(rest)
    try:
        drawer = _Drawer()
    except ImportError:
        sys.stderr.write(MISSING_MATPLOTLIB.format(command=command) + "\n")
        return 2
    try:
        (_plot if command == "plot" else _compare)(args, drawer)
    except MpisgdError as exc:
        if args.debug:
            raise
        sys.stderr.write(f"mpisgd: error: {exc}\n")
        return exc.exit_code
    return 0
