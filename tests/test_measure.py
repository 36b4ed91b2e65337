"""What a model costs: the side-by-side timing the export card reports and its batch rule."""

import time

import pytest

from automtl.exporting import LATENCY_MAX_BATCH, latency_batch
from automtl.measure import time_side_by_side


def test_timing_stops_once_its_time_budget_is_spent():
    timing = time_side_by_side({"slow": lambda: time.sleep(0.01), "fast": lambda: None},
                               budget_s=0.03, min_rounds=3, max_rounds=1000, warmup=1)
    # two runs: 0.06 s of timed calls ends it, which the sleeping run alone reaches after ~6 rounds
    assert 3 <= timing.rounds <= 8
    assert timing.median_ms["slow"] >= 10 > timing.median_ms["fast"]
    low, high = timing.quartiles_ms["slow"]
    assert low <= timing.median_ms["slow"] <= high


def test_timing_takes_at_least_its_minimum_and_at_most_its_maximum_of_rounds():
    assert time_side_by_side({"f": lambda: time.sleep(0.01)}, budget_s=0.0, min_rounds=4, warmup=0).rounds == 4
    assert time_side_by_side({"f": lambda: None}, budget_s=60.0, max_rounds=7).rounds == 7


@pytest.mark.parametrize("macs, batch", [(1, LATENCY_MAX_BATCH), (100_000, LATENCY_MAX_BATCH), (3_000_000, 512),
                                         (40_000_000, 32), (560_000_000, 2), (5_000_000_000, 1)])
def test_the_latency_batch_is_the_largest_power_of_two_within_the_work_of_one_timed_pass(macs, batch):
    assert latency_batch(macs) == batch
