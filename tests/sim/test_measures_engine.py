"""The engines' own measures in a row: totals summed from the workers' counters, queue time from the requests."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from thrash_scenario import THRASH

from sim.agents import AgentRunner, RequestRecord
from sim.measures import ENGINE_TOTALS, engine_totals, summarize
from sim.transports.direct import DirectTransport
from sim.transports.pool import Setup
from sim.workload.scenario import Scenario


def _run(scenario: Scenario) -> tuple[dict[str, Any], DirectTransport, list[RequestRecord]]:
    tr = DirectTransport(Setup(scenario, seed=scenario.seed))
    result = AgentRunner(scenario, tr).run()
    return summarize(result, list(tr.workers), tr.worker_stats(), tr.gateway_metrics()), tr, result.requests


def test_totals_are_the_sums_of_the_workers_counters():
    row, tr, _ = _run(THRASH)
    stats = [c.engine.stats for c in tr.fault_cores()]
    assert row["retractions"] == sum(s.retractions for s in stats) > 0
    assert row["recomputed_tokens"] == sum(s.recomputed_tokens for s in stats) > 0
    assert row["decode_stall_seconds"] == sum(s.decode_stall_seconds for s in stats) > 0
    assert row["queue_seconds"] == sum(s.queue_time for s in stats) > 0
    for w, s in zip(row["workers"], stats, strict=True):  # and each worker's own, in its row
        assert (w["retractions"], w["recomputed_tokens"]) == (s.retractions, s.recomputed_tokens)


def test_queue_time_percentiles_are_of_start_minus_arrival():
    row, _, records = _run(THRASH)
    queued = np.array([r.start - r.arrival for r in records if r.ok])
    assert row["queue_time_p50"] == pytest.approx(np.percentile(queued, 50))
    assert row["queue_time_p99"] == pytest.approx(np.percentile(queued, 99))
    assert 0 <= row["queue_time_p50"] <= row["queue_time_p99"] <= queued.max()
    assert row["queue_time_p99"] > 0  # the small pool makes requests wait


def test_the_arrival_engine_reports_no_retraction():
    row, _, _ = _run(THRASH.replace(engine="arrival"))
    assert row["retractions"] == row["recomputed_tokens"] == 0
    assert row["decode_stall_seconds"] == row["queue_seconds"] == 0.0


def test_workers_that_report_nothing_give_no_total():
    assert engine_totals([{"name": "w0"}, {"name": "w1"}]) == dict.fromkeys(ENGINE_TOTALS)
    assert engine_totals([{"retractions": 2, "queue_seconds": 1.5}, {"retractions": 3}, {}]) == {
        "retractions": 5, "recomputed_tokens": None, "decode_stall_seconds": None, "queue_seconds": 1.5}
