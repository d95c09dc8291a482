"""What an ``external`` run reports of a gateway somebody else started and keeps running: this run's counters,
the policy the gateway says it used, and a warning when the workers are still warm from a previous run."""

from __future__ import annotations

import pytest

from sim.measures import counter_increase, gateway_branches, selection_policies
from sim.runner import PolicyConfig, make_setup, run_setup
from sim.transports.http import HttpTransport
from sim.workload.scenario import Scenario

TINY = Scenario(name="tiny", seed=3, workers=2, sessions=6, group_size=3, system_prompt_tokens=100,
                task_prompt_tokens=20, max_context_tokens=2000, turns={"dist": "uniform", "low": 2, "high": 4})


@pytest.fixture(scope="module")
def chain():
    """Workers, a manual/min_load gateway and a session server, kept up across runs as a user's would be."""
    # workers answering at arrival: an iteration-level engine waits for a clock owner, which external agents lack
    tr = HttpTransport(make_setup(TINY.replace(engine="arrival"), PolicyConfig("manual", "min_load"), True))
    yield tr
    tr.close()


def _external(chain: HttpTransport, policy: PolicyConfig) -> dict:
    return run_setup(make_setup(TINY, policy, True), "external", session_url=chain.session_url,
                     metrics_url=chain.metrics_url)


def test_runs_against_a_running_gateway_report_their_own_counters_policy_and_warm_workers(chain):
    with pytest.warns(RuntimeWarning) as seen:  # the command line names another policy than the gateway's
        first = _external(chain, PolicyConfig("cache_aware"))
    assert first["policy"] == "manual" and first["assignment_mode"] is None
    assert len(first["warnings"]) == 1 and "routed with policy 'manual', not 'cache_aware'" in first["warnings"][0]
    assert [str(w.message) for w in seen] == [f"{first['label']}: {first['warnings'][0]}"]
    branches = first["gateway_branches"]["manual"]
    assert branches["vacant"] == 6 and sum(branches.values()) == first["requests"]

    with pytest.warns(RuntimeWarning, match="first turns hit cached tokens this run never sent"):
        second = _external(chain, PolicyConfig("manual", "min_load"))
    assert second["policy"] == "manual" and second["assignment_mode"] == "min_load"
    # this run's selections only, not the gateway's running totals (6 new keys again)
    assert second["gateway_branches"]["manual"]["vacant"] == 6
    assert sum(second["gateway_branches"]["manual"].values()) == second["requests"]
    assert len(second["warnings"]) == 1 and "restart the workers" in second["warnings"][0]


def test_counter_increase_is_what_happened_between_two_readings():
    before = ('# TYPE smg_manual_policy_branch_total counter\n'
              'smg_manual_policy_branch_total{branch="occupied_hit"} 184.0\n'
              'smg_manual_policy_branch_total{branch="vacant"} 8.0\n'
              '# TYPE smg_worker_selection_total counter\n'
              'smg_worker_selection_total{model="m",policy="manual"} 192.0\n'
              '# TYPE smg_manual_policy_cache_entries gauge\nsmg_manual_policy_cache_entries 8.0\n')
    after = before.replace("184.0", "280.0").replace("192.0", "288.0").replace("entries 8.0", "entries 9.0")
    delta = counter_increase(before, after)
    assert gateway_branches(delta) == {"manual": {"occupied_hit": 96}}  # vacant did not move: no sample
    assert selection_policies(delta) == {"manual": 96}
    assert "smg_manual_policy_cache_entries 9.0" in delta  # a gauge is what it is now
    restarted = counter_increase(after, before.replace("184.0", "5.0"))
    assert gateway_branches(restarted)["manual"]["occupied_hit"] == 5
    assert counter_increase("", after) == counter_increase("", counter_increase("", after))
