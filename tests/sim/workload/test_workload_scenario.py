"""Scenarios: the built-ins load and are what their names promise; TOML files load or fail clearly; the
distributions respect their bounds and every scenario round-trips through its flat dict."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.workload.framing import MESSAGE_OVERHEAD
from sim.workload.plans import plan_sessions, planned_requests
from sim.workload.scenario import Dist, Scenario, ScenarioError, builtin_names, load_scenario


def test_builtin_scenarios_exist_and_load():
    names = builtin_names()
    assert {"default", "kv-pressure", "hot-worker", "large"} <= set(names)
    for n in names:
        s = load_scenario(n)
        assert s.name == n
        assert plan_sessions(s)


def test_default_matches_the_issue():
    s = load_scenario("default")
    assert (s.workers, s.kv_capacity_tokens, s.sessions, s.group_size, s.arrival) == (8, 400_000, 64, 8, "rollout")
    plans = plan_sessions(s)
    turns = [len(p.turns) for p in plans]
    assert 12 <= np.median(turns) <= 18
    assert all(p.start == 0.0 for p in plans)
    assert 1.5 <= np.median([t.tool_latency for p in plans for t in p.turns]) <= 2.5
    assert s.max_context_tokens == 30_000


def test_large_is_large():
    s = load_scenario("large")
    plans = plan_sessions(s)
    assert s.sessions >= 1000 and planned_requests(plans) >= 20_000


def test_kv_pressure_working_set_exceeds_capacity():
    s = load_scenario("kv-pressure")
    plans = plan_sessions(s)
    final_contexts = []
    for p in plans:
        ctx = s.first_prompt_tokens
        for t in p.turns:
            ctx += t.output_tokens + MESSAGE_OVERHEAD + t.tool_output_tokens + 2
        final_contexts.append(ctx)
    assert sum(final_contexts) > 2 * s.workers * s.kv_capacity_tokens


def test_hot_worker_has_one_slow_worker():
    s = load_scenario("hot-worker")
    slow = [i for i in range(s.workers) if s.worker_slowdown(i) > 1]
    assert len(slow) == 1


def test_toml_file_and_errors(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('seed = 3\n[workers]\ncount = 2\nkv_capacity_tokens = "inf"\n'
                 '[sessions]\ncount = 5\n[turns]\ncount = 4\nthink_time = { dist = "uniform", low = 1, high = 2 }\n')
    s = load_scenario(str(f))
    assert (s.name, s.seed, s.workers, s.kv_capacity_tokens, s.sessions) == ("mine", 3, 2, None, 5)
    assert all(len(p.turns) == 4 for p in plan_sessions(s))
    assert all(1 <= t.think_time <= 2 for p in plan_sessions(s) for t in p.turns)
    bad = tmp_path / "bad.toml"
    for text in ('[workers]\ncolor = 1\n', '[arrivals]\npattern = "bursty"\n', '[turns]\ncount = { dist = "zipf" }\n',
                 '[sessions]\ncount = 0\n', 'seed = "x"\n', 'not toml ['):
        bad.write_text(text)
        with pytest.raises(ScenarioError):
            load_scenario(str(bad))
    with pytest.raises(ScenarioError):
        load_scenario("no-such-scenario")


@given(st.sampled_from([
    {"dist": "lognormal", "median": 10, "sigma": 0.5, "min": 3, "max": 20},
    {"dist": "uniform", "low": 2, "high": 4},
    {"dist": "choice", "values": [1, 5], "weights": [1, 3]},
    {"dist": "exponential", "mean": 2, "max": 9},
]), st.integers(0, 1000))
def test_distributions_respect_bounds(spec, seed):
    d = Dist.parse(spec)
    x = d.sample(np.random.default_rng(seed), 200)
    lo = spec.get("min", spec.get("low", min(spec.get("values", [0]))))
    hi = spec.get("max", spec.get("high", max(spec.get("values", [np.inf]))))
    assert x.min() >= lo and x.max() <= hi
    assert Dist.parse(d.to_dict()) == d


@pytest.mark.parametrize("name", ["default", "kv-pressure", "kv-bound", "hot-worker", "large", "faults"])
def test_a_scenario_round_trips_through_its_flat_dict(name):
    s = load_scenario(name)
    assert Scenario.from_flat(s.to_dict()) == s
