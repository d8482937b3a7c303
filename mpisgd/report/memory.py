"""Per-node memory of parameters and buffers: what each rank allocated, summed by node.

Bytes are counted from the arrays and windows the modes allocate (a node-shared window
counts once, on the rank that allocated it), not from the process's resident size, which
also holds the data, numba's code and MPI's own buffers.
"""

from __future__ import annotations

from mpisgd.runtime.log import detail

KINDS = ("params", "optimizer_state", "buffers")


def node_memory(topo, held: dict[str, int]) -> dict | None:
    """Collective over the world: rank 0 gets the per-node and per-rank byte counts.

    ``held`` maps each of :data:`KINDS` to the bytes this rank allocated for it. Returns
    ``{"per_node": [{"node", "ranks", kind: bytes...}], "per_rank": [held...]}`` on rank 0
    and None elsewhere; with ``--verbose`` rank 0 also prints one line per distinct node
    layout (summary.json's ``memory`` holds the same counts either way).
    """
    mine = {k: int(held.get(k, 0)) for k in KINDS}
    everyone = topo.world.gather((topo.node_index, mine), root=0)
    if everyone is None:
        return None
    nodes: dict[int, dict] = {}
    for index, counts in everyone:
        node = nodes.setdefault(index, {"node": index, "ranks": 0, **{k: 0 for k in KINDS}})
        node["ranks"] += 1
        for k in KINDS:
            node[k] += counts[k]
    per_node = [nodes[i] for i in sorted(nodes)]
    seen = set()
    for node in per_node:
        key = tuple(node[k] for k in ("ranks", *KINDS))
        if key in seen:
            continue
        seen.add(key)
        alike = [n["node"] for n in per_node if tuple(n[k] for k in ("ranks", *KINDS)) == key]
        detail(f"mpisgd: memory per node ({_nodes(alike)}, {node['ranks']} rank(s)): parameters "
            f"{_mib(node['params'])}, optimizer state {_mib(node['optimizer_state'])}, "
            f"buffers {_mib(node['buffers'])}")
    return {"per_node": per_node, "per_rank": [counts for _, counts in everyone]}


def _nodes(indices: list[int]) -> str:
    return ("node " if len(indices) == 1 else "nodes ") + ",".join(map(str, indices))


def _mib(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{n} B"
