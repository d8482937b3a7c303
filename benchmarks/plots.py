"""PNG figures of the benchmark results, written beside their JSON.

    python benchmarks/plots.py [--quick]

One figure per result file present (kernels, shm_reduce at 2/4/8 ranks, end_to_end,
startup), each bar or point a median with an error bar from the fastest to the slowest
repeat. Needs matplotlib; without it, says so and writes nothing (the JSON and Markdown
results do not depend on it). The scaling model draws its own figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from benchmarks.common import errorbars, pyplot, read_json, result_path

SHM_METHODS = {"allreduce": "MPI Allreduce", "flat": "mpisgd flat",
               "hierarchical": "hierarchical, 1 node", "two_level": "two-level, 2 nodes"}


def kernels(plt, data: dict, path: Path) -> None:
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, 7), width_ratios=(2, 1))
    rows = data["rows"]
    labels = [f"{r['case']}  {r['n']:,}x{r['d']:,} {r['dtype']}" for r in rows]
    med, err = errorbars([r["gbps"] for r in rows])
    ax.barh(range(len(rows)), med, xerr=err)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    for key, label, style in (("floor", "read floor", "-"), ("copy", "copy floor", "--")):
        if key in data:
            ax.axvline(data[key]["gbps"]["median"], color="k", linestyle=style,
                       label=f"{label} {data[key]['gbps']['median']:.1f} GB/s")
    ax.set_xlabel("GB/s of X read")
    ax.legend()
    mlp = data.get("mlp", [])
    med, err = errorbars([r["gflops"] for r in mlp])
    ax2.barh(range(len(mlp)), med, xerr=err)
    ax2.set_yticks(range(len(mlp)), [f"{r['case']}\n{r['rows']:,}x{r['d']:,} {r['dtype']}"
                                     for r in mlp], fontsize=7)
    ax2.invert_yaxis()
    ax2.set_xlabel("GFLOP/s")
    fig.suptitle("Gradient kernels: bandwidth against the read floor; MLP against NumPy's "
                 "matrix product")
    save(plt, fig, path)


def shm_reduce(plt, results: dict, path: Path) -> None:
    fig, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 8), squeeze=False)
    for col, (p, data) in enumerate(sorted(results.items())):
        sizes = [r["bytes"] for r in data["sizes"]]
        for key, label in SHM_METHODS.items():
            rows = [r for r in data["sizes"] if f"{key}_s" in r]
            if not rows:
                continue
            x = [r["bytes"] for r in rows]
            med, err = errorbars([r[f"{key}_s"] for r in rows], 1e6)
            axes[0][col].errorbar(x, med, yerr=err, marker=".", label=label, capsize=2)
            bus = [r[f"busbw_{key}_Bps"] / 1e9 for r in rows]
            axes[1][col].plot(x, bus, marker=".", label=label)
        axes[0][col].set_title(f"{p} ranks, one node")
        axes[0][col].set_ylabel("us per call")
        axes[1][col].set_ylabel("bus bandwidth 2(p-1)/p bytes / time, GB/s")
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("bytes per rank")
            ax.set_xticks(sizes[::2])
    axes[0][0].legend()
    fig.suptitle("Reductions of float32 vectors: mpisgd's reducers against MPI's Allreduce")
    save(plt, fig, path)


def end_to_end(plt, data: dict, path: Path) -> None:
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    names = list(data["trainers"])
    med, err = errorbars([data["trainers"][n]["samples_per_s"] for n in names])
    ax.barh(range(len(names)), med, xerr=err)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("samples per second (median, min-max)")
    for name in names:
        run = data["runs"][name][0]
        t, acc = 0.0, []
        for e in run["epochs"]:
            t += e["time_s"]
            if e["accuracy"] is not None:
                acc.append((t, 100 * e["accuracy"]))
        if acc:
            ax2.plot(*zip(*acc), marker="o", label=name)
    ax2.axhline(100 * data["target_accuracy"], color="k", linestyle="--", label="target")
    ax2.set_xscale("log")
    ax2.set_xlabel("training seconds (first repeat)")
    ax2.set_ylabel("held-out accuracy %")
    ax2.legend(fontsize=7)
    s = data["settings"]
    fig.suptitle(f"Logistic regression {s['rows']:,} x {s['features']}, {s['ranks']} ranks, "
                 f"{s['batch_per_rank']} rows per rank per step")
    save(plt, fig, path)


def startup(plt, data: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    parts = {"before_run_s": "launch, imports, MPI_Init", "setup_s": "setup (kernel warm-up)",
             "data_s": "HDF5 reads"}
    left = [0.0, 0.0]
    for key, label in parts.items():
        widths = [data[c][key]["median"] for c in ("cold", "warm")]
        ax.barh([0, 1], widths, left=left, label=label)
        left = [a + b for a, b in zip(left, widths)]
    med, err = errorbars([data[c]["first_step_s"] for c in ("cold", "warm")])
    ax.errorbar(med, [0, 1], xerr=err, fmt="k|", markersize=20, label="first step done")
    ax.axvline(data["floor_s"]["median"], color="grey", linestyle="--",
               label="floor: launch + imports")
    ax.set_yticks([0, 1], ["cold numba cache", "warm numba cache"])
    ax.set_xlabel("seconds from mpiexec")
    ax.legend(fontsize=7)
    ax.set_title(f"Start-up of mpiexec -n {data['ranks']} python -m mpisgd (small job)")
    save(plt, fig, path)


def save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="plot the quick runs' results")
    args = ap.parse_args()
    plt = pyplot()
    if plt is None:
        print("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return 0
    q = args.quick
    for name, draw in (("kernels", kernels), ("end_to_end", end_to_end),
                       ("startup", startup)):
        data = read_json(name, q)
        if data is not None:
            draw(plt, data, result_path(name, q, "png"))
    shm = {p: read_json(f"shm_reduce_{p}", q) for p in (2, 4, 8)}
    shm = {p: d for p, d in shm.items() if d is not None}
    if shm:
        shm_reduce(plt, shm, result_path("shm_reduce", q, "png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
