"""Session plans: deterministic per seed, grouped by task, within the context limit, arriving as the pattern says."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sim.workload.framing import MESSAGE_OVERHEAD
from sim.workload.plans import plan_sessions
from sim.workload.scenario import Scenario, load_scenario


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
        prompt = s.first_prompt_tokens
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
