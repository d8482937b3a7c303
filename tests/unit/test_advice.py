"""The run's warnings as pure decisions, and numbers readable at any magnitude."""

from __future__ import annotations

import math

import pytest

from mpisgd.report.advice import (
    GROWTH,
    Advice,
    LossWatch,
    batch_message,
    divergence_message,
    majority_message,
)
from mpisgd.report.metrics import format_metrics
from mpisgd.runtime.numbers import num


@pytest.mark.parametrize("x, digits, sign, text", [
    (0.0123456789, 6, False, "0.0123457"),
    (123456.7, 6, False, "123457"),
    (999999.0, 6, False, "999999"),
    (1e6, 6, False, "1e+06"),
    (2.2e131, 6, False, "2.2e+131"),
    (-3.25e-9, 3, False, "-3.25e-09"),
    (0.5, 6, False, "0.5"),
    (38.40612, 4, True, "+38.41"),
    (3.689387476879e138, 4, True, "+3.689e+138"),
    (-0.0001, 4, True, "-0.0001"),
    (0.0, 6, False, "0"),
    (12.0, 3, False, "12"),
    (1234.6, 3, False, "1235"),   # plain digits below 1e6, whatever the precision
])
def test_num_is_plain_in_range_and_scientific_beyond(x, digits, sign, text):
    assert num(x, digits, sign=sign) == text


def test_num_round_trips_and_handles_non_finite():
    for x in (1.5e-300, 7.0e-5, 0.25, 4.2e5, 8.8e9, 1.7e308):
        assert float(num(x)) == pytest.approx(x, rel=1e-5)
    assert (num(math.nan), num(math.inf), num(-math.inf)) == ("nan", "inf", "-inf")


def test_format_metrics_uses_scientific_for_huge_values():
    line = format_metrics({"mse": 2.2e131, "r2": -1.9e130, "accuracy": 0.9736842})
    assert line == "mse 2.2e+131, r2 -1.9e+130, accuracy 0.973684"


def test_divergence_needs_orders_of_magnitude():
    assert divergence_message(5.0, 5.0 * GROWTH, 1, 0.1) is None   # not beyond
    assert divergence_message(5.0, 40.0, 3, 0.1) is None            # a bump, not divergence
    assert divergence_message(0.0, 1e9, 1, 0.1) is None             # no scale to compare
    assert divergence_message(None, 1e9, 1, 0.1) is None
    text = divergence_message(5.0, 2.2e131, 2, 5.0)
    assert "from 5 at the start to 2.2e+131 in epoch 2" in text
    assert "optimizer.lr (now 5; try 0.5)" in text and "data.standardize = true" in text
    assert divergence_message(5.0, math.inf, 1, 5.0) is not None


def test_loss_watch_starts_at_the_first_step_and_warns_once():
    advice = Advice()
    watch = LossWatch(advice, lr=3.0)
    watch.step(2.0)
    watch.step(1e12)          # later steps do not move the start
    watch.epoch(1, 150.0)     # 75x: not yet
    assert advice.records == []
    watch.epoch(2, 1e9)
    watch.epoch(3, 1e11)
    [record] = advice.records
    assert record["kind"] == "divergence" and record["epoch"] == 2
    assert record["start_loss"] == 2.0 and record["lr"] == 3.0


def test_batch_warns_only_beyond_the_training_rows():
    assert batch_message(512, 512) is None      # exactly the rows: one step, as asked
    assert batch_message(0, 457) is None        # 0 asks for full batches
    text = batch_message(512, 457)
    assert "train.batch_size = 512 exceeds the 457 training rows" in text
    assert "one step per epoch" in text and "e.g. 32" in text


def test_majority_compares_with_the_most_frequent_class():
    assert majority_message(0.7, [70, 30], "test") is None       # equal: not below
    assert majority_message(0.9, [70, 30], "test") is None
    assert majority_message(0.5, [0, 0], "test") is None          # no rows
    text = majority_message(0.3, [30, 70], "test")
    assert "test accuracy 0.3 is below the majority-class rate 0.7 of the same 100 rows" in text
    assert "class 1" in text and "test rows differ" in text
    assert "differ" not in majority_message(0.2, [10, 20, 70], "training")
