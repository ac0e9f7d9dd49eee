"""Training progress: one live line in Jupyter, one line per epoch elsewhere."""
from __future__ import annotations

import sys
import time


def _in_jupyter() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def _epoch_text(row: dict) -> str:
    return (f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
            f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}  {row['seconds']:.1f} s")


class Progress:
    """Shows training progress without flooding logs.

    In Jupyter, a single display line is updated in place (at most ~4 times a second), so an
    executed notebook keeps one final line per run. Elsewhere (CLI, papermill logs, pytest), one
    plain line per finished epoch.
    """

    def __init__(self, total_runs: int = 1, epochs: int = 1, live: bool | None = None, stream=None):
        self.total_runs, self.epochs = total_runs, epochs
        self.live = _in_jupyter() if live is None else live
        self.stream = stream or sys.stdout
        self.run_index, self.seed, self.handle, self._last = 0, None, None, 0.0
        self.history: list[str] = []

    def start_run(self, run_index: int, seed: int) -> None:
        self.run_index, self.seed, self.handle = run_index, seed, None
        self.history = []

    def _prefix(self) -> str:
        return f"run {self.run_index + 1}/{self.total_runs} (seed {self.seed})"

    def _show(self, text: str) -> None:
        from IPython.display import display, Pretty
        if self.handle is None:
            self.handle = display(Pretty(text), display_id=True)
        else:
            self.handle.update(Pretty(text))

    def batch(self, epoch: int, step: int, steps: int) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if now - self._last < 0.25 and step != steps:
            return
        self._last = now
        bar = "#" * int(20 * step / steps)
        self._show("\n".join(self.history + [f"{self._prefix()}  epoch {epoch}/{self.epochs}  [{bar:<20}] {step}/{steps}"]))

    def epoch_done(self, row: dict) -> None:
        line = f"{self._prefix()}  {_epoch_text(row)}"
        if self.live:
            self.history = (self.history + [line])[-3:]  # the last few epochs stay visible
            self._show("\n".join(self.history))
        else:
            print(line, file=self.stream, flush=True)
