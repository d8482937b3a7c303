"""Gather the final metrics of several mpisgd run folders (a sweep) into one table.

    python slurm/gather.py runs/slurm-1234_*                  # Markdown on stdout
    python slurm/gather.py runs/slurm-1234_* -o sweep-1234.csv  # CSV (by the extension)
    python slurm/gather.py runs --format csv                  # every run folder under runs/

One row per run folder, in natural order (slurm-1234_2 before slurm-1234_10): the
config keys whose values differ between the runs (from each ``config.toml``), then the
final metrics from each ``summary.json`` (test metrics, training objective, distance to
the true weights when known, epochs, steps, wall time). A run without a summary (still
running, failed, or stopped) is listed with its status, so a sweep's gaps show. Needs
only the standard library: it does not import mpisgd.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
import tomllib
from pathlib import Path

# Summary keys shown by default, in this order, when present in any run.
DEFAULT_METRICS = ("test.*", "train_objective", "weight_rel_error", "epochs", "steps",
                   "world_size", "wall_time_s")
SKIP_TEST = ("n",)  # test.n is the same for every run of a sweep and not a metric
IGNORED_CONFIG = ("output.dir",)  # the run folder itself: differs by construction


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become their text."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def find_runs(paths: list[str]) -> list[Path]:
    """Run folders among ``paths``; a folder that is not a run contributes its runs."""
    runs = []
    for p in map(Path, paths):
        if not p.is_dir():
            continue
        if _is_run(p):
            runs.append(p)
        else:
            runs += [c for c in p.iterdir() if c.is_dir() and _is_run(c)]
    return sorted(set(runs), key=lambda r: natural_key(r.name))


def _is_run(p: Path) -> bool:
    return (p / "config.toml").is_file() or (p / "summary.json").is_file()


def read_run(run: Path) -> tuple[dict, dict, str]:
    """(flattened config, flattened summary, status) of one run folder."""
    config, summary = {}, {}
    try:
        config = flatten(tomllib.loads((run / "config.toml").read_text()))
    except (OSError, tomllib.TOMLDecodeError):
        pass
    try:
        summary = flatten(json.loads((run / "summary.json").read_text()))
        status = "done"
    except (OSError, json.JSONDecodeError):
        ckpts = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
        status = f"unfinished ({ckpts[-1]})" if ckpts else "unfinished"
    return config, summary, status


def varying_keys(configs: list[dict]) -> list[str]:
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if k not in IGNORED_CONFIG
            and len({repr(c.get(k)) for c in configs}) > 1]


def metric_keys(summaries: list[dict], wanted: tuple[str, ...]) -> list[str]:
    present = {k for s in summaries for k in s}
    keys = []
    for w in wanted:
        if w.endswith(".*"):
            keys += sorted(k for k in present if k.startswith(w[:-1])
                           and k[len(w) - 1:] not in SKIP_TEST)
        elif w in present:
            keys.append(w)
    return keys


def build_table(runs: list[Path], wanted: tuple[str, ...] = DEFAULT_METRICS):
    """(header, rows) with raw values: run, varying config keys, status, metrics."""
    data = [read_run(r) for r in runs]
    cfg_keys = varying_keys([c for c, _, _ in data])
    met_keys = metric_keys([s for _, s, _ in data], wanted)
    header = ["run", *cfg_keys, "status", *met_keys]
    rows = [[run.name, *(c.get(k, "") for k in cfg_keys), status,
             *(s.get(k, "") for k in met_keys)]
            for run, (c, s, status) in zip(runs, data)]
    return header, rows


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return json.dumps(value)
    return str(value)


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if _numeric_col(rows, i) else "---"
                            for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |"
              for row in rows]
    return "\n".join(lines) + "\n"


def _numeric_col(rows: list[list], i: int) -> bool:
    values = [r[i] for r in rows if r[i] != ""]
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                for v in values)


def csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([[repr(v) if isinstance(v, float) else _fmt(v) for v in row] for row in rows])
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gather.py", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (e.g. runs/slurm-1234_*) or folders "
                                           "holding run folders")
    p.add_argument("--format", choices=["md", "csv"],
                   help="table format (default: from -o's extension, else md)")
    p.add_argument("-o", "--output", help="write the table here (atomically) instead of stdout")
    p.add_argument("--metrics", help="comma-separated summary keys to show (dotted, 'test.*' "
                                     f"for all test metrics); default {','.join(DEFAULT_METRICS)}")
    args = p.parse_args(argv)
    runs = find_runs(args.runs)
    if not runs:
        print(f"gather.py: no run folders (with config.toml or summary.json) in "
              f"{' '.join(args.runs)}", file=sys.stderr)
        return 1
    wanted = tuple(args.metrics.split(",")) if args.metrics else DEFAULT_METRICS
    header, rows = build_table(runs, wanted)
    fmt = args.format or ("csv" if args.output and args.output.endswith(".csv") else "md")
    text = (csv_text if fmt == "csv" else markdown)(header, rows)
    if args.output:
        out = Path(args.output)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(out)
        print(f"gather.py: {len(rows)} run(s) -> {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
