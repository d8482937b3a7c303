"""What the suite measures about itself, printed after the run (tests/conftest.py)."""

from __future__ import annotations

import os

# Every launch: [test module, world size, pooled?, seconds (None: timed by the test)].
LAUNCHES: list[list] = []
# The fault catalogue: [scenario[mode], seconds from the fault to a clean exit].
FAULT_TIMINGS: list[list] = []


def record_launch(n: int, pooled: bool, seconds: float | None) -> None:
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[0]
    LAUNCHES.append([test, n, pooled, seconds])


def launch_table() -> list[str]:
    """Launches by test module: how many, how many in a pool world, and their time."""
    if not LAUNCHES:
        return []
    rows: dict[str, list] = {}
    for module, _n, pooled, seconds in LAUNCHES:
        row = rows.setdefault(module, [0, 0, 0.0])
        row[0] += 1
        row[1] += bool(pooled)
        row[2] += seconds or 0.0
    lines = ["launches by test module (pooled: run in a long-lived world; seconds: "
             "launch() calls only, start() is timed by its test):"]
    for module, (count, pooled, seconds) in sorted(rows.items(), key=lambda kv: -kv[1][2]):
        lines.append(f"  {module:<40} {count:4d} launches {pooled:4d} pooled {seconds:8.1f} s")
    lines.append(f"  {'total':<40} {len(LAUNCHES):4d} launches "
                 f"{sum(r[1] for r in rows.values()):4d} pooled "
                 f"{sum(r[2] for r in rows.values()):8.1f} s")
    return lines


def fault_line() -> list[str]:
    """The slowest scenarios of the catalogue from the fault to a clean exit."""
    if not FAULT_TIMINGS:
        return []
    slowest = sorted(FAULT_TIMINGS, key=lambda kv: -kv[1])[:5]
    return [f"fault catalogue: {len(FAULT_TIMINGS)} scenario runs; slowest from the fault to "
            f"a clean exit: " + ", ".join(f"{k} {v:.1f} s" for k, v in slowest)]
