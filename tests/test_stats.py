"""labkit.stats: the report's table (best, worst, mean, std over runs) against numpy and by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from labkit.config import REPORT_TABLE
from labkit.stats import TABLE_HEADER, accuracy_stats, format_table, summarize, table_rows


def fake_metrics(test_accs, train_accs=None, model="baseline"):
    train_accs = train_accs or [a - 0.01 for a in test_accs]
    return {"config": {"model": model},
            "runs": [{"seed": i + 1, "epochs": [{"train_acc": 0.5, "test_acc": 0.5, "seconds": 9.0},
                                                {"train_acc": tr, "test_acc": te, "seconds": 1.0 + i}]}
                     for i, (tr, te) in enumerate(zip(train_accs, test_accs))]}


def test_accuracy_stats_by_hand():
    s = accuracy_stats([0.90, 0.92, 0.94])
    assert (s["best"], s["worst"], s["n"]) == (0.94, 0.90, 3)
    assert s["mean"] == pytest.approx(0.92) and s["std"] == pytest.approx(0.02)  # sample std: sqrt(0.0008 / 2)
    assert math.isnan(accuracy_stats([0.9])["std"])


def test_summarize_uses_the_final_epoch_of_each_run():
    m = fake_metrics([0.97, 0.95, 0.96])
    s = summarize(m)
    assert (s["test"]["best"], s["test"]["worst"]) == (0.97, 0.95)
    assert s["test"]["std"] == pytest.approx(np.std([0.97, 0.95, 0.96], ddof=1))
    assert s["train"]["mean"] == pytest.approx(0.95)


def test_table_rows_with_and_without_the_report():
    m = fake_metrics([0.97, 0.95])
    rows = table_rows(m, "baseline", REPORT_TABLE)
    assert [r[0] for r in rows] == ["Training accuracy — baseline", "Training accuracy — the report",
                                    "Test accuracy — baseline", "Test accuracy — the report"]
    assert rows[3][1:] == [REPORT_TABLE["test"][k] for k in ("best", "worst", "mean", "std")]
    assert len(table_rows(m, "improved")) == 2 and len(TABLE_HEADER) == len(rows[0])


def test_format_table_prints_runs_and_statistics():
    text = format_table(fake_metrics([0.97, 0.95]), REPORT_TABLE)
    lines = text.splitlines()
    assert lines[1].split() == ["1", "0.9600", "0.9700", "5.00"]  # seed, train, test, median s/epoch of (9, 1)
    assert any(line.startswith("Test accuracy — baseline") and line.split()[-4:] == ["0.9700", "0.9500", "0.96000", "0.014142"]
               for line in lines)
