"""The workers' time series (sim.series): one point per interval per worker, bounded values, and sampling that
leaves the run exactly as it was."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thrash_scenario import THRASH

from sim.agents import AgentRunner, RequestRecord
from sim.engine import IterationEngine
from sim.engine.types import SchedulerConfig, WorkerConfig
from sim.measures import summarize
from sim.runner import PolicyConfig, make_setup, run_setup
from sim.series import WorkerSamples
from sim.transports.direct import DirectTransport
from sim.transports.pool import Setup


@pytest.fixture(scope="module")
def thrash_row():
    return run_setup(make_setup(THRASH, PolicyConfig("manual", "min_load"), True), "direct")


def test_one_point_per_interval_per_worker_until_the_run_ends(thrash_row):
    ts = thrash_row["timeseries"]
    end = thrash_row["makespan"]  # a rollout: every session starts at 0 and ends with its last answer
    assert ts["interval"] == 1.0
    assert ts["t"] == [float(i) for i in range(len(ts["t"]))]
    assert ts["t"][-2] < end <= ts["t"][-1]  # the last point is the first at or after the end
    assert set(ts["workers"]) == {w["name"] for w in thrash_row["workers"]}
    for w in ts["workers"].values():
        for key in ("hit_rate", "running", "waiting", "kv_used", "kv_usage", "retractions"):
            assert len(w[key]) == len(ts["t"]), key


def test_values_stay_within_their_bounds(thrash_row):
    for w in thrash_row["timeseries"]["workers"].values():
        assert w["kv_capacity"] == THRASH.kv_capacity_tokens
        assert all(h is None or 0.0 <= h <= 1.0 for h in w["hit_rate"])
        assert any(h is not None for h in w["hit_rate"])
        assert all(0 <= u <= w["kv_capacity"] for u in w["kv_used"])
        assert w["kv_usage"] == [u / w["kv_capacity"] for u in w["kv_used"]]
        assert min(w["running"]) >= 0 and min(w["waiting"]) >= 0 and max(w["running"]) > 0
        assert w["running"][-1] == w["waiting"][-1] == 0  # the run is over at the last point


def test_retractions_over_the_intervals_add_up_to_the_workers_totals(thrash_row):
    series = thrash_row["timeseries"]["workers"]
    assert thrash_row["retractions"] > 0
    for w in thrash_row["workers"]:
        assert sum(series[w["name"]]["retractions"]) == w["retractions"]


def _run(series_interval: float | None) -> tuple[dict[str, Any], dict[str, Any], AgentRunner]:
    tr = DirectTransport(Setup(THRASH, seed=THRASH.seed))
    runner = AgentRunner(THRASH, tr, series_interval=series_interval)
    result = runner.run()
    return summarize(result, list(tr.workers), tr.worker_stats(), tr.gateway_metrics()), tr.worker_stats(), runner


@pytest.mark.parametrize("interval", [1.0, 0.013])
def test_sampling_does_not_change_the_run(interval):
    """``load`` would apply the decode steps in flight and move later finishes by ulps; the sampler reads
    ``occupancy``, so every measure, every worker figure and every request is the same with and without it."""
    plain, plain_stats, plain_runner = _run(None)
    sampled, sampled_stats, sampled_runner = _run(interval)
    assert plain_runner.result.series is None and plain["retractions"] > 0
    assert len(sampled_runner.result.series.t) >= plain["makespan"] / interval
    assert sampled == plain and sampled_stats == plain_stats
    assert sampled_runner.result.requests == plain_runner.result.requests


def test_the_arrival_engine_has_no_series():
    row = run_setup(make_setup(THRASH.replace(engine="arrival"), PolicyConfig("manual", "min_load"), True), "direct")
    assert "timeseries" not in row


def _record(worker: str, start: float, prompt: int, cached: int) -> RequestRecord:
    return RequestRecord(0, 0, False, start, 200, worker=worker, arrival=start, start=start, first_token=start,
                         finish=start, prompt_tokens=prompt, cached_tokens=cached)


def test_hit_rate_counts_the_prefills_scheduled_in_each_interval():
    s = WorkerSamples(0.5, ["a", "b"], [100, None], t=[0.0, 0.5, 1.0],
                      running=[[0, 0]] * 3, waiting=[[0, 0]] * 3, kv_used=[[0, 0], [40, 7], [0, 0]],
                      retractions=[[0, 0], [2, 0], [3, 0]])
    records = [_record("a", 0.0, 10, 0), _record("a", 0.2, 10, 5), _record("a", 0.5, 20, 20),
               _record("b", 0.9, 30, 3), _record("nobody", 0.3, 99, 99)]
    table = s.table(records)
    a, b = table["workers"]["a"], table["workers"]["b"]
    assert table["t"] == [0.0, 0.5, 1.0] and table["interval"] == 0.5
    assert a["hit_rate"] == [0.0, 25 / 30, None]  # (-0.5, 0]: 0/10; (0, 0.5]: 5+20 of 10+20; (0.5, 1]: none
    assert b["hit_rate"] == [None, None, 0.1]
    assert a["retractions"] == [0, 2, 1] and b["retractions"] == [0, 0, 0]
    assert a["kv_usage"] == [0.0, 0.4, 0.0] and b["kv_usage"] == [0.0, 0.0, 0.0]  # unbounded: usage 0


@given(n=st.integers(1, 60), max_points=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_a_long_run_keeps_every_fth_point_back_from_the_end_and_sums_its_intervals(n, max_points, seed):
    rng = np.random.default_rng(seed)
    steps = rng.integers(0, 3, n)
    s = WorkerSamples(1.0, ["a"], [50], t=[float(i) for i in range(n)], running=[[1]] * n, waiting=[[0]] * n,
                      kv_used=[[int(v)] for v in rng.integers(0, 51, n)],
                      retractions=[[int(c)] for c in np.cumsum(steps)])
    records = [_record("a", float(x), 10, int(c)) for x, c in zip(rng.uniform(0, n - 1, 20),
                                                                  rng.integers(0, 11, 20), strict=True)]
    table = s.table(records, max_points=max_points)
    f = math.ceil(n / max_points)
    a = table["workers"]["a"]
    assert len(table["t"]) <= max_points and table["t"][-1] == n - 1
    assert table["interval"] == f and all(np.diff(table["t"]) == f)
    assert sum(a["retractions"]) == int(steps.sum())  # the first interval reaches back to the first sample
    assert a["kv_used"] == [s.kv_used[int(t)][0] for t in table["t"]]
    for t, h in zip(table["t"], a["hit_rate"], strict=True):
        inside = [r for r in records if t - f < math.ceil(r.start) <= t]
        assert h == (sum(r.cached_tokens for r in inside) / sum(r.prompt_tokens for r in inside) if inside else None)


@settings(max_examples=40, deadline=None)
@given(arrivals=st.lists(st.tuples(st.floats(0, 2), st.integers(50, 400), st.integers(1, 300)), min_size=1,
                         max_size=12),
       looks=st.lists(st.floats(0, 6), min_size=1, max_size=8))
def test_occupancy_reads_what_load_reports_and_changes_nothing(arrivals, looks):
    cfg = WorkerConfig(kv_capacity_tokens=2000, engine="iteration", scheduler=SchedulerConfig(chunked_prefill_size=256))
    watched, alone = IterationEngine(cfg), IterationEngine(cfg)
    rng = np.random.default_rng(0)
    events = sorted([(t, "submit", (p, o)) for t, p, o in arrivals] + [(t, "look", None) for t in looks],
                    key=lambda e: e[0])
    done_watched, done_alone = [], []
    for t, kind, size in events:
        if kind == "submit":
            prompt, out = rng.integers(0, 50, size[0]), rng.integers(0, 50, size[1])
            for eng in (watched, alone):
                eng.submit(t, prompt, out)
        else:
            done_watched += watched.advance(t)
            done_alone += alone.advance(t)
            ld = copy.deepcopy(watched).load(t)
            assert watched.occupancy(t) == (ld.num_running_reqs, ld.num_waiting_reqs, ld.num_used_tokens)
    done_watched += watched.advance(math.inf)
    done_alone += alone.advance(math.inf)
    assert done_watched == done_alone and watched.stats == alone.stats
