"""The worst worker's hit rate over time, and the makespan against the best run (sim.worst_worker)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.worst_worker import (
    RequestHit,
    WorstWorker,
    common_bin_seconds,
    format_series,
    hit_series,
    makespan_versus_best,
    worst_worker,
    worst_worker_lines,
)

hits_strategy = st.lists(st.builds(RequestHit, st.sampled_from(["w0", "w1", "w2"]),
                                   st.floats(0, 500, allow_nan=False),
                                   st.integers(0, 10_000), st.integers(0, 10_000)).map(
    lambda h: h._replace(cached_tokens=min(h.cached_tokens, h.prompt_tokens))), max_size=60)


def test_a_bin_holds_the_cached_over_prompt_tokens_of_the_requests_arriving_in_it():
    hits = [RequestHit("w0", 0.0, 100, 90), RequestHit("w0", 9.9, 100, 70), RequestHit("w0", 10.0, 200, 10),
            RequestHit("w1", 25.0, 50, 50)]
    assert hit_series(hits, 10.0) == {"w0": [0.8, 0.05, None], "w1": [None, None, 1.0]}


def test_a_bin_without_prompt_tokens_has_no_hit_rate():
    assert hit_series([RequestHit("w0", 1.0, 0, 0)], 5.0) == {"w0": [None]}


def test_bins_must_have_a_width():
    with pytest.raises(ValueError, match="bin_seconds"):
        hit_series([], 0.0)


@given(hits_strategy, st.floats(0.5, 200))
def test_every_worker_gets_one_rate_per_bin_up_to_the_last_arrival_and_rates_are_shares(hits, width):
    series = hit_series(hits, width)
    assert set(series) == {h.worker for h in hits}
    bins = int(max(h.arrival for h in hits) // width) + 1 if hits else 0
    for rates in series.values():
        assert len(rates) == bins
        assert all(x is None or 0.0 <= x <= 1.0 for x in rates)


@given(hits_strategy, st.floats(0.5, 200))
def test_the_worst_worker_has_the_lowest_hit_rate_over_the_run(hits, width):
    ww = worst_worker(hits, width)
    prompt = {w: sum(h.prompt_tokens for h in hits if h.worker == w) for w in {h.worker for h in hits}}
    rates = {w: sum(h.cached_tokens for h in hits if h.worker == w) / p for w, p in prompt.items() if p}
    if not rates:
        assert ww is None
        return
    assert ww is not None and ww.hit_rate == min(rates.values()) == rates[ww.worker]
    assert list(ww.series) == hit_series(hits, width)[ww.worker]


def test_a_collapse_shows_as_first_bin_high_and_lowest_bin_low():
    ww = WorstWorker("w1", 0.4, (None, 0.98, 0.6, 0.05, None))
    assert (ww.first, ww.lowest) == (0.98, 0.05)
    assert format_series(ww.series) == "- 98 60 5 -"


@pytest.mark.parametrize("makespans,width", [([87.0, 412.0], 50.0), ([100.0], 10.0), ([101.0], 20.0),
                                             ([9.0, 3.0], 1.0), ([0.0], 1.0), ([], 1.0)])
def test_the_common_bin_is_a_round_width_giving_the_longest_run_at_most_ten_bins(makespans, width):
    assert common_bin_seconds(makespans) == width


@given(st.floats(1e-3, 1e6))
def test_the_common_bin_is_within_a_factor_two_and_a_half_of_a_tenth(longest):
    width = common_bin_seconds([longest])
    assert longest / 10 <= width * (1 + 1e-9) and width <= 2.5 * longest / 10 * (1 + 1e-9)


def test_makespans_are_compared_with_the_best_run_of_the_same_seed():
    rows = [{"label": "ch", "seed": 0, "makespan": 400.0}, {"label": "ca", "seed": 0, "makespan": 100.0},
            {"label": "ch", "seed": 1, "makespan": 90.0}, {"label": "ca", "seed": 1, "makespan": 120.0}]
    assert makespan_versus_best(rows) == [(4.0, "ca"), (1.0, "ca"), (1.0, "ch"), (pytest.approx(4 / 3), "ch")]


def test_a_zero_makespan_compares_as_not_a_number():
    [(ratio, best)] = makespan_versus_best([{"label": "x", "seed": 0, "makespan": 0.0}])
    assert math.isnan(ratio) and best == "x"


def test_one_line_per_run_names_its_worst_worker_series_and_makespan_against_the_best():
    rows = [{"label": "consistent_hashing key=on", "seed": 5, "makespan": 400.0},
            {"label": "cache_aware key=on", "seed": 5, "makespan": 100.0}]
    hits = [[RequestHit("w0", 10.0, 100, 98), RequestHit("w1", 10.0, 100, 99), RequestHit("w0", 150.0, 100, 5)],
            [RequestHit("w0", 10.0, 100, 97), RequestHit("w1", 60.0, 100, 96)]]
    assert worst_worker_lines(rows, hits, 50.0) == [
        "consistent_hashing key=on: worst w0 hit 52% [98 - - 5]; makespan 400.0s = 4.00x cache_aware key=on",
        "cache_aware key=on: worst w1 hit 96% [- 96]; makespan 100.0s = the best",
    ]


def test_lines_name_the_seed_when_rows_have_several():
    rows = [{"label": "a", "seed": 0, "makespan": 1.0}, {"label": "a", "seed": 1, "makespan": 1.0}]
    lines = worst_worker_lines(rows, [[], []], 1.0)
    assert lines == ["a seed 0: no requests; makespan 1.0s = the best",
                     "a seed 1: no requests; makespan 1.0s = the best"]
