"""Rank-0 progress: a tqdm bar on a terminal, one line per epoch otherwise."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    """Shows training progress on rank 0; a no-op on every other rank."""

    def __init__(self, mode: str, total_steps: int, active: bool):
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "lines"
        self.mode = mode if active else "none"
        self.bar = None
        if self.mode == "bar":
            self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True,
                            mininterval=0.5, leave=True)

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix_str(f"loss {loss:.4g}", refresh=False)
            self.bar.update(0)

    def epoch_line(self, record: dict, epochs: int) -> None:
        test = record.get("test", {})
        shown = [f"{k} {test[k]:.5g}" for k in ("mse", "r2", "accuracy", "f1") if k in test]
        line = (f"epoch {record['epoch']}/{epochs}  step {record['step']}  "
                f"train loss {record['train_loss']:.6g}  "
                + ("test " + ", ".join(shown) + "  " if shown else "")
                + f"({record['epoch_time_s']:.2f} s)")
        if self.mode == "lines":
            print(line, flush=True)
        elif self.bar is not None:
            self.bar.write(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
