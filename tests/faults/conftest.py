"""Reports the slowest scenarios of the catalogue to a clean exit, after the run."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter):
    from .test_catalogue import TIMINGS

    if not TIMINGS:
        return
    slowest = sorted(TIMINGS.items(), key=lambda kv: -kv[1])[:5]
    terminalreporter.write_line(
        f"fault catalogue: {len(TIMINGS)} scenario runs; slowest from the fault to a clean "
        f"exit: " + ", ".join(f"{k} {v:.1f} s" for k, v in slowest))
