"""Injected faults: deterministic for a seed and a worker, rollback failures only for input_ids, partial
all-or-nothing updates, and no trace of a failed request in the cache."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from worker_inputs import core

from sim.worker.faults import Faults


@given(st.integers(0, 1000), st.floats(0.05, 0.95))
def test_faults_are_deterministic_for_seed_and_worker(seed, rate):
    def statuses() -> list[int]:
        c = core(seed=seed, faults=Faults(fail_rate=rate, rollback_fail_rate=rate))
        return [
            c.infer("chat", {"input_ids": [1, 2, 3 + i], "max_tokens": 2, "sim_time": float(i)}).status
            for i in range(16)
        ]

    first = statuses()
    assert first == statuses()
    assert set(first) <= {200, 400, 500}


def test_rollback_fault_spares_requests_without_input_ids():
    c = core(faults=Faults(rollback_fail_rate=1.0))
    assert c.infer("chat", {"messages": [{"role": "user", "content": "x"}], "sim_time": 0.0}).status == 200
    r = c.infer("chat", {"input_ids": [1, 5, 7], "sim_time": 0.0})
    assert r.status == 400
    assert "rollback failed" in r.body["message"]


def test_fault_updates_are_partial_and_all_or_nothing():
    c = core()
    assert c.update_faults({"fail_rate": 0.25})[0] == 200
    assert c.update_faults({"slowdown": 2})[1] == {**Faults().as_dict(), "fail_rate": 0.25, "slowdown": 2.0}
    status, _ = c.update_faults({"unhealthy": True, "fail_rate": 7})
    assert status == 400
    assert c.faults.unhealthy is False and c.faults.fail_rate == 0.25


def test_failed_requests_leave_the_cache_untouched():
    c = core(faults=Faults(fail_rate=1.0))
    body = {"messages": [{"role": "user", "content": "a b c d"}], "max_tokens": 3, "sim_time": 0.0}
    assert c.infer("chat", body).status == 500
    c.faults = Faults()
    assert c.infer("chat", {**body, "sim_time": 1.0}).body["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert c.engine.stats.requests == 1
