"""labkit.progress: one line per epoch outside Jupyter, nothing per step."""
from __future__ import annotations

import io

from labkit.progress import Progress


def test_one_line_per_epoch_and_none_per_batch():
    out = io.StringIO()
    p = Progress(total_runs=2, epochs=3, live=False, stream=out)
    p.start_run(1, seed=7)
    for step in range(1, 11):
        p.batch(1, step, 10)
    p.epoch_done({"epoch": 1, "train_loss": 0.5, "train_acc": 0.875, "test_loss": 0.25, "test_acc": 0.9375, "seconds": 1.5})
    lines = out.getvalue().splitlines()
    assert lines == ["run 2/2 (seed 7)  epoch   1  train loss 0.5000 acc 0.8750  test loss 0.2500 acc 0.9375  1.5 s"]


class ClosedPipe(io.StringIO):
    """A stream whose reader has gone: every write fails as a closed pipe does."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_stream_ends_the_printing_not_the_caller():
    p = Progress(total_runs=1, epochs=2, live=False, stream=ClosedPipe())
    p.start_run(0, seed=1)
    row = {"epoch": 1, "train_loss": 0.5, "train_acc": 0.5, "test_loss": 0.5, "test_acc": 0.5, "seconds": 1.0}
    p.epoch_done(row)  # raises nothing
    assert p.stream is None
    p.epoch_done({**row, "epoch": 2})


def test_a_diverged_epochs_nulls_print_as_nan():
    out = io.StringIO()
    p = Progress(total_runs=1, epochs=1, live=False, stream=out)
    p.start_run(0, seed=1)
    p.epoch_done({"epoch": 1, "train_loss": None, "train_acc": 0.125, "test_loss": None, "test_acc": 0.098, "seconds": 0.5})
    assert out.getvalue() == "run 1/1 (seed 1)  epoch   1  train loss nan acc 0.1250  test loss nan acc 0.0980  0.5 s\n"


def test_pipesafe_survives_a_real_pipe_closing():
    """Writes to a pipe whose read end is closed: dropped, and the descriptor now leads to /dev/null."""
    import os

    from labkit.progress import PipeSafe

    r, w = os.pipe()
    os.close(r)
    raw = os.fdopen(w, "w")
    safe = PipeSafe(raw)
    safe.write("line\n")
    safe.flush()
    assert safe.broken and safe.write("more\n") == 5
    safe.flush()
    assert os.path.samestat(os.fstat(raw.fileno()), os.stat(os.devnull))
    raw.close()
