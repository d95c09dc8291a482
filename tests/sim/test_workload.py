"""The workload model: scenarios load, plans are deterministic and respect the scenario's bounds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.workload import (
    MESSAGE_OVERHEAD,
    Dist,
    Scenario,
    ScenarioError,
    ToolTexts,
    builtin_names,
    first_prompt_tokens,
    load_scenario,
    plan_sessions,
    planned_requests,
    stream_seed,
    stream_seeds,
    tool_output,
)
from testbed_common import tokenizer


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
        ctx = first_prompt_tokens(s)
        for t in p.turns:
            ctx += t.output_tokens + MESSAGE_OVERHEAD + t.tool_output_tokens + 2
        final_contexts.append(ctx)
    assert sum(final_contexts) > 2 * s.workers * s.kv_capacity_tokens


def test_hot_worker_has_one_slow_worker():
    s = load_scenario("hot-worker")
    slow = [i for i in range(s.workers) if s.worker_slowdown(i) > 1]
    assert len(slow) == 1


def test_same_seed_same_plans_other_seed_other_plans():
    s = load_scenario("default")
    assert plan_sessions(s) == plan_sessions(load_scenario("default"))
    assert plan_sessions(s) != plan_sessions(s.replace(seed=1))


def test_groups_share_a_task():
    s = Scenario(sessions=10, group_size=4)
    assert [p.group for p in plan_sessions(s)] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]


@given(seed=st.integers(0, 2**32), max_ctx=st.integers(3000, 40_000), retry=st.floats(0, 1))
def test_plans_never_exceed_the_context_limit(seed, max_ctx, retry):
    s = Scenario(seed=seed, sessions=6, max_context_tokens=max_ctx, retry_rate=retry)
    for p in plan_sessions(s):
        prompt = first_prompt_tokens(s)
        assert p.turns and p.turns[0].retry_output_tokens == 0  # no retry of a first turn (miles can't roll it back)
        for t in p.turns:
            assert prompt + t.output_tokens <= max_ctx
            if t.retry_output_tokens:
                assert prompt + t.retry_output_tokens <= max_ctx
            prompt += (t.retry_output_tokens or t.output_tokens) + MESSAGE_OVERHEAD + t.tool_output_tokens + 2


def test_arrival_patterns():
    poisson = plan_sessions(Scenario(arrival="poisson", rate=4.0, sessions=400))
    starts = [p.start for p in poisson]
    assert starts == sorted(starts) and starts[0] == 0.0
    assert 80 < starts[-1] < 120  # 400 sessions at 4/s
    assert all(p.start is None for p in plan_sessions(Scenario(arrival="concurrency", concurrency=3)))


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
    assert Scenario.from_dict(s.to_dict(), name=s.name) == s


@given(st.integers(0, 2**64 - 1), st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
                                           min_size=1, max_size=20))
def test_stream_seeds_are_stream_seed_for_many_keys_at_once(seed, keys):
    a = np.array([k[0] for k in keys])
    b = np.array([k[1] for k in keys])
    assert stream_seeds(seed, 3, a, b).tolist() == [stream_seed(seed, 3, x, y) for x, y in keys]
    assert stream_seeds(seed, a).tolist() == [stream_seed(seed, x) for x, _ in keys]
    with pytest.raises(ValueError):
        stream_seeds(seed, np.array([-1]))


@given(st.integers(0, 2**32), st.integers(1, 12), st.lists(st.integers(-2, 700), min_size=1, max_size=6))
def test_tool_texts_are_tool_output(seed, sessions, lengths):
    s = Scenario(seed=seed, sessions=sessions, group_size=3, turns={"dist": "uniform", "low": 1, "high": 6})
    plans = plan_sessions(s)
    tools = ToolTexts(s, plans)
    for p in plans[:3]:
        for k in range(len(p.turns) + 1):  # one turn past the plan: the definition answers it
            for n in lengths:
                text = tools.text(p.index, k, n)
                assert text == tool_output(s, p.index, k, n)
                made = tokenizer.made_text_ids(text)  # the ids it noted, if any, are the tokenizer's
                assert made is None or made.tolist() == tokenizer.encode(text)
    assert tools.text(sessions + 5, 0, 9) == tool_output(s, sessions + 5, 0, 9)
