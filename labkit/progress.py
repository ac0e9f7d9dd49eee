"""Training progress: one live line in Jupyter, one line per epoch elsewhere."""
from __future__ import annotations

import contextlib
import io
import os
import sys
import time


def _in_jupyter() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def number_text(value, spec: str) -> str:
    """value formatted by spec; a diverged run's null as "nan"."""
    return "nan" if value is None else format(value, spec)


def _epoch_text(row: dict) -> str:
    n = lambda key, spec=".4f": number_text(row[key], spec)
    return (f"epoch {row['epoch']:>3}  train loss {n('train_loss')} acc {n('train_acc')}  "
            f"test loss {n('test_loss')} acc {n('test_acc')}  {n('seconds', '.1f')} s")


class Progress:
    """Shows training progress without flooding logs.

    In Jupyter, a single display line is updated in place (at most ~4 times a second), so an
    executed notebook keeps one final line per run. Elsewhere (CLI, papermill logs, pytest), one
    plain line per finished epoch; a stream that closes (`labkit train | head -n1`) ends the
    printing, never the training.
    """

    def __init__(self, total_runs: int = 1, epochs: int = 1, live: bool | None = None, stream=None):
        self.total_runs, self.epochs = total_runs, epochs
        self.live = _in_jupyter() if live is None else live
        self.stream = stream if stream is not None else sys.stdout  # None once it has closed
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
        elif self.stream is not None:
            try:
                print(line, file=self.stream, flush=True)
            except (OSError, ValueError):  # a closed pipe or file: nobody reads on, training goes on
                self.stream = None


class PipeSafe:
    """A text stream that outlives its reader: after a broken pipe (`labkit ... | head -n1`) writes
    are dropped and the descriptor points at /dev/null, so nothing later, the interpreter's final
    flush included, fails. `broken` says whether the reader has gone; everything else is the stream's."""

    def __init__(self, stream):
        self._stream = stream
        self.broken = False

    def _gone(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone()

    def __getattr__(self, name):
        return getattr(self._stream, name)
