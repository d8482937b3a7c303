"""Latency-bandwidth (alpha-beta) model of mpisgd's modes, fitted here, run to 1,024 nodes.

    python benchmarks/scaling_model.py [--quick] [--ranks-per-node R]

No MPI: reads results the other benchmarks wrote (shm_reduce_<P>, kernels, end_to_end;
the quick files with --quick when present, else the full ones) and

1. fits this machine's intra-node costs: a message of n bytes between two ranks costs
   alpha + n * beta (bare Allreduce at 2 ranks: one exchange and a sum), the shared-memory
   node reduction a + n * b (mpisgd's hierarchical reducer at R ranks), and the sum of one
   byte gamma = 1 / (one rank's copy bandwidth);
2. checks the fit against the measured runs at 4 and 8 ranks (flat and two-level);
3. predicts, for R ranks per node and N = 1 to 1,024 nodes on a 10 Gb/s and a 100 Gb/s
   network (NETWORKS), the communication time per step of every mode: flat MPI Allreduce
   (MPICH's choice, taken as the cheapest of recursive doubling, Rabenseifner and ring),
   two-level (node sum in shared memory, node leaders allreduce), a parameter server with
   k servers (one gradient push and one parameter pull per node: ps.node_aggregate), and
   the two-level reduction with compressed gradients (fp16: half the bytes; top-k 1%:
   allgather of index + value, 8 bytes per kept entry);
4. adds the measured compute per step for weak scaling (1024 rows per rank) and strong
   scaling (a fixed global minibatch of STRONG_BATCH rows), and says which mode wins.

Writes benchmarks/results/scaling_model.json, .md and .png (``_quick`` with --quick).
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from benchmarks.common import pyplot, read_json, result_path, write_json


@dataclass(frozen=True)
class Link:
    """Cost of one message of n bytes: alpha + n * beta (seconds)."""

    alpha: float
    beta: float

    def __call__(self, n: float) -> float:
        return self.alpha + n * self.beta


# Assumed networks between nodes (not measured here): MPI latency and 90% of line rate.
NETWORKS = {"10 Gb/s Ethernet (TCP)": Link(alpha=15e-6, beta=1 / (0.9 * 1.25e9)),
            "100 Gb/s InfiniBand": Link(alpha=2e-6, beta=1 / (0.9 * 12.5e9))}
NODES = [2 ** k for k in range(11)]
TABLE_NODES = (1, 8, 64, 1024)
BATCH_PER_RANK = 1024
STRONG_BATCH = 65_536
PS_SERVERS = (1, 16, "N")
TOPK = 0.01


@dataclass(frozen=True)
class Machine:
    """This machine's fitted intra-node costs."""

    intra: Link          # one exchange + sum between two ranks (bare Allreduce at 2 ranks)
    shm: Link            # mpisgd's shared-memory node reduction at R ranks
    gamma: float         # seconds to sum one byte (one rank)
    ranks: int           # R, ranks per node


def fit(sizes, seconds) -> tuple[Link, float]:
    """alpha + n * beta minimising the relative error (small sizes weigh as much as large
    ones); returns the link and the largest relative error."""
    n, t = np.asarray(sizes, float), np.asarray(seconds, float)
    (alpha, beta), *_ = np.linalg.lstsq(np.stack([1 / t, n / t], 1), np.ones_like(t),
                                        rcond=None)
    link = Link(max(alpha, 0.0), max(beta, 0.0))
    return link, float(np.max(np.abs([link(x) / y - 1 for x, y in zip(n, t)])))


def medians(result: dict, key: str) -> tuple[list, list]:
    rows = [r for r in result["sizes"] if key in r]
    return [r["bytes"] for r in rows], [r[key]["median"] for r in rows]


# --- collective costs: n bytes per rank, N nodes, R ranks per node ---------------------

def recursive_doubling(n, N, m: Machine, net: Link) -> float:
    """log2(R) rounds inside the node, then log2(N) across, where the R ranks of a node
    all send n bytes through its one network port."""
    inside = math.log2(m.ranks) * m.intra(n)
    return inside + math.log2(N) * (net.alpha + m.ranks * n * net.beta + n * m.gamma)


def rabenseifner(n, N, m: Machine, net: Link) -> float:
    """Reduce-scatter then allgather by halving: 2 log2(P) latencies; each node port
    carries 2 (N-1)/N n bytes (the ranks of a node hold disjoint pieces)."""
    R = m.ranks
    inside = 2 * math.log2(R) * m.intra.alpha + 2 * (R - 1) / R * n * m.intra.beta
    across = 2 * math.log2(N) * net.alpha + (N - 1) / N * n * (2 * net.beta + m.gamma)
    return inside + across


def ring(n, P, link: Link, gamma: float) -> float:
    """2(P-1) steps, each paced by its slowest hop (one crosses the network)."""
    return 2 * (P - 1) * link.alpha + (P - 1) / P * n * (2 * link.beta + gamma)


def flat(n, N, m: Machine, net: Link) -> float:
    """One MPI_Allreduce over all N*R ranks; MPICH picks the algorithm by size: the
    cheapest of the three stands for its choice."""
    if N == 1:
        return min(recursive_doubling(n, 1, m, net), rabenseifner(n, 1, m, net))
    return min(recursive_doubling(n, N, m, net), rabenseifner(n, N, m, net),
               ring(n, N * m.ranks, net, m.gamma))


def leaders(n, N, m: Machine, net: Link) -> float:
    """Allreduce among the N node leaders (one rank per node)."""
    if N == 1:
        return 0.0
    one = Machine(m.intra, m.shm, m.gamma, 1)
    return min(recursive_doubling(n, N, one, net), rabenseifner(n, N, one, net),
               ring(n, N, net, m.gamma))


def two_level(n, N, m: Machine, net: Link) -> float:
    return m.shm(n) + leaders(n, N, m, net)


def parameter_server(n, N, m: Machine, net: Link, k: int | str) -> float:
    """Node sum in shared memory, then N pushes of n/k bytes into each of k servers (one
    per node; k = "N": every node), each server sums them, and N pulls back. A server
    handles its N messages each way one after another: per-message overhead (this
    machine's alpha) plus bytes."""
    k = N if k == "N" else min(k, N)
    link = net if N > 1 else m.intra
    per_way = N * (m.intra.alpha + n / k * link.beta)
    return m.shm(n) + 2 * link.alpha + 2 * per_way + N * n / k * m.gamma


def fp16(n, N, m: Machine, net: Link) -> float:
    """Two-level on half the bytes, plus casting down and back up."""
    return two_level(n / 2, N, m, net) + 2 * n * m.gamma


def topk(n, N, m: Machine, net: Link) -> float:
    """Node sum, the leader keeps 1% of the entries (a pass to select them), allgathers
    index + value (2 x 4 bytes each: recursive doubling, every leader ends with all N
    sets) and adds the N sparse vectors into the dense gradient."""
    if N == 1:
        return m.shm(n)
    sent = 2 * TOPK * n   # (n / 4 entries) * 1% * 8 bytes
    gather = math.log2(N) * net.alpha + (N - 1) * sent * net.beta
    return m.shm(n) + 2 * n * m.gamma + gather + N * sent * m.gamma


# mode name -> cost function (n, N, machine, network); the exact ones first.
MODES = {"flat Allreduce": flat, "two-level": two_level,
         **{f"PS k={k}": functools.partial(parameter_server, k=k) for k in PS_SERVERS},
         "two-level fp16": fp16, "two-level top-k 1%": topk}
EXACT = ("flat Allreduce", "two-level", *(f"PS k={k}" for k in PS_SERVERS))


# --- workloads: gradient bytes and measured compute --------------------------------------

@dataclass(frozen=True)
class Workload:
    name: str
    params: int
    row_s: float         # compute seconds per row on one node (all its ranks)
    step_s: float        # fixed seconds per step (update, loop)


def workloads(kernels: dict, e2e: dict | None, m: Machine, copy_Bps: float) -> list[Workload]:
    """The logistic job of end_to_end.py, a 10^6-parameter softmax (100,000 features,
    10 classes) and the MLP 100-256-256-10, with compute rates measured here."""
    by_case = {(r["case"], r["d"], r["dtype"]): r for r in kernels["rows"]}
    if e2e is not None:   # the in-job gradient of 1024 random rows, one thread per rank
        split = e2e["runs"]["mpisgd allreduce"][0]["step_us"]
        logistic_row = split["compute"] * 1e-6 / BATCH_PER_RANK / e2e["settings"]["ranks"]
        fixed = split["update"] * 1e-6
    else:                 # a full pass with every core: optimistic for minibatches
        full_pass = by_case[("loss_grad logistic", 100, "float32")]["gbps"]["median"]
        logistic_row = 400 / (full_pass * 1e9)
        fixed = 15e-6
    softmax_gbps = by_case[("loss_grad softmax (C=10)", 1000, "float32")]["gbps"]["median"]
    mlp = next(r for r in kernels["mlp"] if r["d"] == 100 and r["dtype"] == "float32"
               and r["case"].startswith("loss_grad"))
    update = lambda p: fixed + 3 * 4 * p / copy_Bps   # noqa: E731 - read grad, velocity, theta
    return [Workload("logistic, 101 params", 101, logistic_row, update(101)),
            Workload("softmax, 1,000,010 params", 1_000_010,
                     100_000 * 4 / (softmax_gbps * 1e9), update(1_000_010)),
            Workload(f"MLP {mlp['case'].removeprefix('loss_grad mlp ')}, "
                     f"{mlp['params']:,} params", mlp["params"],
                     mlp["flops_per_row"] / (mlp["gflops"]["median"] * 1e9),
                     update(mlp["params"]))]


def step_time(w: Workload, rows_per_node: float, comm: float) -> float:
    return rows_per_node * w.row_s + w.step_s + comm


def predict(m: Machine, ws: list[Workload]) -> dict:
    """network -> workload -> mode -> per-N comm seconds; plus weak/strong step times."""
    out = {}
    for net_name, net in NETWORKS.items():
        out[net_name] = {}
        for w in ws:
            n = 4 * w.params
            comm = {name: [cost(n, N, m, net) for N in NODES] for name, cost in MODES.items()}
            weak_rows = BATCH_PER_RANK * m.ranks
            out[net_name][w.name] = {
                "comm_s": comm,
                "weak_step_s": {k: [step_time(w, weak_rows, c) for c in v]
                                for k, v in comm.items()},
                "strong_step_s": {k: [step_time(w, STRONG_BATCH / N, c)
                                      for N, c in zip(NODES, v)] for k, v in comm.items()},
                "compute_weak_s": step_time(w, weak_rows, 0.0),
                "compute_strong_s": [step_time(w, STRONG_BATCH / N, 0.0) for N in NODES]}
    return out


# --- checks against the measured 2-8 rank runs ------------------------------------------

def checks(shm: dict, m: Machine) -> list[dict]:
    """Measured / predicted for the bare Allreduce at 4 and 8 ranks on one node (ranks
    beyond the cores share them) and, where measured, the two-level reducer."""
    out = []
    for p, res in sorted(shm.items()):
        if p == 2:
            continue
        one_node = Machine(m.intra, m.shm, m.gamma, p)
        sizes, times = medians(res, "allreduce_s")
        ratios = [t / flat(n, 1, one_node, m.intra) for n, t in zip(sizes, times)]
        out.append({"what": f"MPI Allreduce, {p} ranks", "measured_over_predicted":
                    _spread(ratios)})
        half = shm.get(p // 2)
        if half is not None and any("two_level_s" in r for r in res["sizes"]):
            node = Machine(m.intra, fit(*medians(half, "hierarchical_s"))[0], m.gamma, p // 2)
            sizes, times = medians(res, "two_level_s")
            ratios = [t / two_level(n, 2, node, m.intra) for n, t in zip(sizes, times)]
            out.append({"what": f"two-level, 2 nodes x {p // 2} ranks",
                        "measured_over_predicted": _spread(ratios)})
    return out


def _spread(xs: list[float]) -> dict:
    return {"median": float(np.median(xs)), "min": min(xs), "max": max(xs)}


def e2e_check(e2e: dict | None, m: Machine, w: Workload) -> dict | None:
    """The logistic job at 1 node: measured seconds per step (epoch time / steps, so the
    epoch's permutation is included) against compute + fixed + flat Allreduce."""
    if e2e is None:
        return None
    run = e2e["runs"]["mpisgd allreduce"][0]
    measured = sum(e["time_s"] for e in run["epochs"]) / run["steps"]
    predicted = step_time(w, BATCH_PER_RANK * m.ranks, flat(4 * w.params, 1, m, m.intra))
    return {"measured_s": measured, "predicted_s": predicted,
            "epoch_start_s_per_step": run["step_us"]["epoch_start_extra"] * 1e-6
            * len(run["epochs"]) / run["steps"]}


# --- output --------------------------------------------------------------------------------

def fmt_s(s: float) -> str:
    return f"{s * 1e6:,.0f} us" if s < 1e-3 else (f"{s * 1e3:,.1f} ms" if s < 1 else f"{s:,.2f} s")


def winner(table: dict, names, i: int) -> str:
    return min(names, key=lambda k: table[k][i])


def markdown(result: dict) -> str:
    m, fits = result["machine"], result["fits"]
    lines = [f"## Scaling model (alpha-beta), {m['ranks']} ranks per node\n",
             f"Fitted here (inputs: {', '.join(result['inputs'])}):\n",
             "| term | alpha (us) | beta (ns/byte) | largest relative error of the fit |",
             "|---|---:|---:|---:|",
             f"| two ranks, one exchange + sum (bare Allreduce, 2 ranks) | "
             f"{m['intra']['alpha'] * 1e6:.2f} | {m['intra']['beta'] * 1e9:.3f} | "
             f"{fits['intra_error']:.0%} |",
             f"| node reduction in shared memory ({m['ranks']} ranks) | "
             f"{m['shm']['alpha'] * 1e6:.2f} | {m['shm']['beta'] * 1e9:.3f} | "
             f"{fits['shm_error']:.0%} |",
             f"| sum one byte (gamma = 1 / one rank's copy bandwidth) | - | "
             f"{m['gamma'] * 1e9:.3f} | - |", "",
             "Assumed networks: " + "; ".join(
                 f"{k}: alpha {v.alpha * 1e6:g} us, {1 / v.beta / 1e9:.2f} GB/s"
                 for k, v in NETWORKS.items()) + ".\n",
             "Checks against measured runs (measured / predicted over the sizes, median "
             "[min, max]):\n"]
    for c in result["checks"]:
        r = c["measured_over_predicted"]
        lines.append(f"- {c['what']}: {r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}]")
    e = result["e2e_check"]
    if e is not None:
        lines.append(f"- logistic job, one step at 1 node: measured {fmt_s(e['measured_s'])}, "
                     f"predicted {fmt_s(e['predicted_s'])} (of which the epoch's permutation "
                     f"and schedule, not modelled: {fmt_s(e['epoch_start_s_per_step'])})")
    for net_name, per_w in result["predictions"].items():
        for w_name, p in per_w.items():
            lines += comm_table(net_name, w_name, p)
    lines += scaling_table(result)
    return "\n".join(lines)


def comm_table(net_name: str, w_name: str, p: dict) -> list[str]:
    names = list(p["comm_s"])
    idx = [NODES.index(N) for N in TABLE_NODES]
    lines = [f"\n### {w_name}, {net_name}: communication per step\n",
             "| nodes | " + " | ".join(names) + " | fastest exact | compute (weak) |",
             "|---:|" + "---:|" * (len(names) + 2)]
    for N, i in zip(TABLE_NODES, idx):
        cells = " | ".join(fmt_s(p["comm_s"][k][i]) for k in names)
        lines.append(f"| {N:,} | {cells} | {winner(p['comm_s'], EXACT, i)} | "
                     f"{fmt_s(p['compute_weak_s'])} |")
    return lines


def scaling_table(result: dict) -> list[str]:
    lines = ["\n### Scaling to 1,024 nodes (fastest exact mode; with compression in brackets)\n",
             f"Weak: {BATCH_PER_RANK} rows per rank; efficiency = step time at 1 node / at N. "
             f"Strong: {STRONG_BATCH:,} rows per step in all; speedup over 1 node.\n",
             "| network | workload | weak efficiency at 64 / 1,024 | strong speedup at 64 / "
             "1,024 | fastest communication at 1,024 |", "|---|---|---:|---:|---|"]
    for net_name, per_w in result["predictions"].items():
        for w_name, p in per_w.items():
            lines.append(f"| {net_name} | {w_name} | {_weak(p, 64)} / {_weak(p, 1024)} | "
                         f"{_strong(p, 64)} / {_strong(p, 1024)} | "
                         f"{winner(p['comm_s'], EXACT, NODES.index(1024))} "
                         f"[{winner(p['comm_s'], list(p['comm_s']), NODES.index(1024))}] |")
    return lines


def _best(table: dict, names, i: int) -> float:
    return min(table[k][i] for k in names)


def _weak(p: dict, N: int) -> str:
    i, all_ = NODES.index(N), list(p["comm_s"])
    exact = _best(p["weak_step_s"], EXACT, 0) / _best(p["weak_step_s"], EXACT, i)
    comp = _best(p["weak_step_s"], all_, 0) / _best(p["weak_step_s"], all_, i)
    return f"{exact:.0%} [{comp:.0%}]"


def _strong(p: dict, N: int) -> str:
    i, all_ = NODES.index(N), list(p["comm_s"])
    exact = _best(p["strong_step_s"], EXACT, 0) / _best(p["strong_step_s"], EXACT, i)
    comp = _best(p["strong_step_s"], all_, 0) / _best(p["strong_step_s"], all_, i)
    return f"{exact:,.0f}x [{comp:,.0f}x]"


def plot(result: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    nets, ws = list(result["predictions"]), list(next(iter(result["predictions"].values())))
    fig, axes = plt.subplots(len(nets), len(ws), figsize=(5 * len(ws), 4 * len(nets)),
                             squeeze=False)
    for row, net_name in zip(axes, nets):
        for ax, w_name in zip(row, ws):
            p = result["predictions"][net_name][w_name]
            for name, ys in p["comm_s"].items():
                ax.loglog(NODES, ys, marker=".", label=name,
                          linestyle="-" if name in EXACT else "--")
            ax.axhline(p["compute_weak_s"], color="k", linestyle=":",
                       label=f"compute, weak ({BATCH_PER_RANK} rows per rank)")
            ax.loglog(NODES, p["compute_strong_s"], "k-.",
                      label=f"compute, strong ({STRONG_BATCH:,} rows per step)")
            ax.set_title(f"{w_name}\n{net_name}", fontsize=9)
            ax.set_xlabel("nodes")
            ax.set_ylabel("seconds per step")
            ax.set_xscale("log", base=2)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=5,
               fontsize=8)
    fig.suptitle("Predicted communication per step (lines) against compute per step (black)")
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def load_inputs(quick: bool) -> tuple[dict, dict, dict | None, list[str]]:
    shm = {p: read_json(f"shm_reduce_{p}", quick) for p in (2, 4, 8)}
    shm = {p: r for p, r in shm.items() if r is not None}
    kernels = read_json("kernels", quick)
    if 2 not in shm or kernels is None or "flops_per_row" not in kernels.get("mlp", [{}])[0]:
        sys.exit("scaling_model: needs results of benchmarks/shm_reduce.py at 2 ranks and of "
                 "benchmarks/kernels.py (with the MLP rows): run them first.")
    e2e = read_json("end_to_end", quick)
    used = [f"shm_reduce_{p}{'_quick' if r['quick'] else ''}" for p, r in shm.items()]
    used.append("kernels" + ("_quick" if kernels["quick"] else ""))
    if e2e is not None:
        used.append("end_to_end" + ("_quick" if e2e["quick"] else ""))
    return shm, kernels, e2e, used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="prefer the quick runs' results")
    ap.add_argument("--ranks-per-node", type=int, default=2, choices=(2, 4, 8),
                    help="R: a node like this one (default 2: one rank per core here)")
    args = ap.parse_args()
    shm, kernels, e2e, used = load_inputs(args.quick)
    intra, intra_err = fit(*medians(shm[2], "allreduce_s"))
    node = shm.get(args.ranks_per_node) or sys.exit(f"no shm_reduce_{args.ranks_per_node}")
    shm_link, shm_err = fit(*medians(node, "hierarchical_s"))
    copy_Bps = shm[2]["copy"]["one_rank_Bps"]["median"]
    m = Machine(intra, shm_link, 1 / copy_Bps, args.ranks_per_node)
    ws = workloads(kernels, e2e, m, copy_Bps)
    result = {"inputs": used, "quick": args.quick,
              "machine": {"intra": vars(intra), "shm": vars(shm_link), "gamma": m.gamma,
                          "ranks": m.ranks},
              "fits": {"intra_error": intra_err, "shm_error": shm_err},
              "networks": {k: vars(v) for k, v in NETWORKS.items()}, "nodes": NODES,
              "workloads": [vars(w) for w in ws], "checks": checks(shm, m),
              "e2e_check": e2e_check(e2e, m, ws[0]), "predictions": predict(m, ws)}
    table = markdown(result)
    print(table)
    result_path("scaling_model", args.quick, "md").write_text(table + "\n")
    png = result_path("scaling_model", args.quick, "png")
    if plot(result, png):
        print(f"\nwrote {png}")
    print(f"wrote {write_json('scaling_model', args.quick, result)}")


if __name__ == "__main__":
    main()
