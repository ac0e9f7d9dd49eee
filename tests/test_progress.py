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
