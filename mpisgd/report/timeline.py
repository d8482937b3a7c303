"""Per-rank spans in the Chrome trace event format (Perfetto, chrome://tracing).

Each rank keeps (name, start, end) tuples in a list; at the end rank 0 gathers them and
writes one JSON file with one process row per rank. Clocks are aligned at a barrier so
spans of different ranks line up. Recording is bounded (MAX_EVENTS per rank) so a long
run cannot exhaust memory; the file says when the cap was hit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mpisgd.store.atomic import write_text

MAX_EVENTS = 200_000


class Timeline:
    """A no-op unless enabled; ``add`` is cheap enough for the per-step hot loop."""

    def __init__(self, enabled: bool):
        self.events: list | None = [] if enabled else None
        self.origin = time.perf_counter()
        self.dropped = 0

    def align(self, comm) -> None:
        """Collective: take the common time origin right after a barrier."""
        comm.Barrier()
        self.origin = time.perf_counter()

    def add(self, name: str, t0: float, t1: float) -> None:
        if self.events is None:
            return
        if len(self.events) < MAX_EVENTS:
            self.events.append((name, t0, t1))
        else:
            self.dropped += 1

    def write(self, comm, path: str | Path) -> Path | None:
        """Collective over ``comm``: gather every rank's spans; rank 0 writes the file."""
        mine = [(n, (a - self.origin) * 1e6, (b - a) * 1e6) for n, a, b in self.events or []]
        gathered = comm.gather((mine, self.dropped), root=0)
        if comm.Get_rank() != 0:
            return None
        events = []
        for rank, (spans, dropped) in enumerate(gathered):
            events.append({"name": "process_name", "ph": "M", "pid": rank, "tid": 0,
                           "args": {"name": f"rank {rank}"}})
            events.extend({"name": n, "cat": n, "ph": "X", "ts": round(ts, 3),
                           "dur": round(dur, 3), "pid": rank, "tid": 0}
                          for n, ts, dur in spans)
            if dropped:
                events.append({"name": f"{dropped} spans not recorded (cap {MAX_EVENTS})",
                               "ph": "i", "s": "p", "ts": 0, "pid": rank, "tid": 0})
        path = Path(path)
        write_text(path, json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
        return path
