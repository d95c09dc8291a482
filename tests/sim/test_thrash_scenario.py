"""The ``thrash`` scenario reproduces prime-rl #3255 with the iteration engine (docs/thrash.md)."""

from __future__ import annotations

import pytest

from sim.runner import PolicyConfig, make_setup, run_setup
from sim.workload.scenario import load_scenario
from sim.worst_worker import worst_worker


@pytest.fixture(scope="module")
def runs():
    scenario = load_scenario("thrash")
    return {policy: run_setup(make_setup(scenario, PolicyConfig(policy), True))
            for policy in ("consistent_hashing", "cache_aware")}


def test_thrash_is_the_field_shape_four_workers_with_long_contexts_near_kv_capacity():
    s = load_scenario("thrash")
    assert (s.workers, s.engine, s.arrival, s.group_size) == (4, "iteration", "rollout", 1)
    share = s.sessions // s.workers
    assert share * s.max_context_tokens <= 1.3 * s.kv_capacity_tokens < 2 * share * s.max_context_tokens


def test_consistent_hashing_overloads_one_worker_and_it_is_the_worst(runs):
    row = runs["consistent_hashing"]
    requests = {w["name"]: w["requests"] for w in row["workers"]}
    ww = worst_worker(row["_meta"]["hits"], 50.0)
    assert ww is not None and requests[ww.worker] == max(requests.values()) >= 1.5 * sum(requests.values()) / 4


def test_the_worst_worker_hit_rate_collapses_under_consistent_hashing_and_not_under_cache_aware(runs):
    ch = worst_worker(runs["consistent_hashing"]["_meta"]["hits"], 50.0)
    ca = worst_worker(runs["cache_aware"]["_meta"]["hits"], 50.0)
    assert ch is not None and ca is not None
    assert ch.first >= 0.85 and ch.lowest <= 0.05
    assert sum(x is not None and x <= 0.05 for x in ch.series) >= 10  # a spiral, not a dip
    assert ca.hit_rate >= 0.85 > 0.5 > ch.hit_rate


def test_consistent_hashing_takes_about_four_times_as_long_as_cache_aware(runs):
    assert runs["consistent_hashing"]["makespan"] >= 4 * runs["cache_aware"]["makespan"]
