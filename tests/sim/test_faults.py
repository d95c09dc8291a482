"""Faults in the simulation (sim.faults): scenario options, identical effects in ``http`` and ``direct``,
re-pins off a dead worker and back, gateway and rollback retries, and no lost or duplicated records."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from sim.agents import AgentRunner, TurnLog, WorkloadResult, compare_records
from sim.faults import FaultPlan, FaultSpec, with_faults
from sim.measures import summarize
from sim.runner import PolicyConfig, make_setup, open_transport, public, run_setup
from sim.workload.scenario import Scenario, ScenarioError, load_scenario

FAST_HEALTH = ("--health-check-interval-secs", "1", "--health-failure-threshold", "2",
               "--health-success-threshold", "1", "--cb-timeout-duration-secs", "5")
MANUAL = PolicyConfig("manual", "min_load", FAST_HEALTH)


def tiny(*faults: dict[str, Any], workers: int = 3, sessions: int = 6, **kw: Any) -> Scenario:
    """A small scenario (about 20 virtual seconds) with the given ``[[faults]]`` entries."""
    return Scenario(name="tiny-faults", workers=workers, kv_capacity_tokens=100_000, sessions=sessions, group_size=3,
                    system_prompt_tokens=100, task_prompt_tokens=30, max_context_tokens=5000,
                    turns={"dist": "constant", "value": 8}, output_tokens={"dist": "uniform", "low": 10, "high": 40},
                    tool_output_tokens={"dist": "uniform", "low": 10, "high": 60}, tool_latency=2.0,
                    faults=tuple(faults), **kw)


def run_logged(scenario: Scenario, transport: str, policy: PolicyConfig = MANUAL) -> tuple[WorkloadResult, dict, str]:
    """Run with the agents' own turn logs; returns the result, the measures and the gateway metrics text."""
    setup = make_setup(scenario, policy, True)
    with open_transport(transport, setup) as tr:
        ftr = with_faults(tr, scenario.faults)
        result = AgentRunner(scenario, ftr, keep_log=True).run()
        metrics = tr.gateway_metrics()
        measures = summarize(result, list(tr.workers), tr.worker_stats(), metrics,
                             rollback_retries=tr.session_core.rollback_retries)
    return result, measures, metrics


def assert_records_match(result: WorkloadResult) -> None:
    for s in result.sessions:
        assert s.records is not None, f"session {s.index}: no records read ({s.error})"
        assert compare_records(s.log, s.records) == [], f"session {s.index}"


def counters(metrics: str, *names: str) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(metrics):
        for s in fam.samples:
            if s.name in names:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# --- scenario options ---------------------------------------------------------------------------


def test_the_faults_scenario_has_every_kind_and_round_trips_its_entries():
    sc = load_scenario("faults")
    assert {f.kind for f in sc.faults} == {"dead", "slow", "error_rate", "rollback_rate"}
    again = Scenario(**{**sc.to_dict(), "faults": sc.to_dict()["faults"]})
    assert again.faults == sc.faults


@pytest.mark.parametrize("entry, message", [
    ({"kind": "boom"}, "kind must be one of"),
    ({"kind": "dead", "start": 1, "end": 2}, "needs a worker"),
    ({"kind": "dead", "worker": 0, "start": 1}, "needs an end"),
    ({"kind": "dead", "worker": 9, "start": 1, "end": 2}, "does not exist"),
    ({"kind": "slow", "worker": 0}, "needs a factor"),
    ({"kind": "slow", "factor": 0}, "factor must be"),
    ({"kind": "error_rate", "rate": 1.5}, "within [0, 1]"),
    ({"kind": "rollback_rate"}, "needs a rate"),
    ({"kind": "error_rate", "rate": 0.1, "factor": 2}, "unknown keys"),
    ({"kind": "slow", "factor": 2, "start": 5, "end": 5}, "start < end"),
    ({"kind": "error_rate", "rate": "high"}, "must be a number"),
])
def test_bad_fault_entries_are_clear_scenario_errors(entry, message):
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Scenario.from_dict({"workers": {"count": 2}, "faults": [entry]})


@given(st.lists(st.tuples(st.sampled_from(["dead", "slow", "error_rate", "rollback_rate"]), st.integers(0, 2),
                          st.floats(0, 50), st.floats(0.1, 50), st.floats(0.1, 4), st.floats(0, 1)), max_size=5),
       st.integers(0, 2), st.floats(0, 120))
def test_fault_state_is_the_combination_of_the_entries_active_at_that_time(entries, worker, t):
    specs = tuple(FaultSpec(k, w, s, s + d, factor=f if k == "slow" else 1.0,
                            rate=r if k in ("error_rate", "rollback_rate") else 0.0)
                  for k, w, s, d, f, r in entries)
    st_ = FaultPlan(specs).state(worker, t)
    active = [f for f in specs if f.worker == worker and f.start <= t < f.end]
    assert st_.dead == any(f.kind == "dead" for f in active)
    assert math.isclose(st_.slowdown, math.prod(f.factor for f in active if f.kind == "slow"))
    assert st_.fail_rate == max((f.rate for f in active if f.kind == "error_rate"), default=0.0)
    assert st_.rollback_fail_rate == max((f.rate for f in active if f.kind == "rollback_rate"), default=0.0)


def test_compare_records_finds_a_lost_a_duplicated_and_a_changed_record():
    log = [TurnLog(k, False, float(k), [{"role": "user", "content": str(k)}], 8, {"id": k}) for k in range(3)]
    records = [{"request": {"messages": t.messages, "sim_time": t.sim_time, "max_tokens": 8}, "response": t.response}
               for t in log]
    assert compare_records(log, records) == []
    assert compare_records(log, records[:2])  # lost
    assert compare_records(log, [*records, records[-1]])  # duplicated
    assert compare_records(log, [records[0], records[2], records[1]])  # reordered
    changed = [*records[:2], {**records[2], "response": {"id": 99}}]
    assert compare_records(log, changed)


# --- http == direct -------------------------------------------------------------------------------


def test_http_and_direct_give_the_same_results_and_gateway_reactions_under_faults():
    sc = load_scenario("faults")
    setup = make_setup(sc, MANUAL, True)
    rows, texts = {}, {}
    for kind in ("direct", "http"):
        rows[kind] = public(run_setup(setup, kind))
    for kind in ("direct", "http"):  # gateway metrics of a logged run: health, breaker, retries, branches
        result, _, texts[kind] = run_logged(sc, kind)
        assert_records_match(result)
    a, b = rows["direct"], rows["http"]
    assert {k: (a[k], b[k]) for k in a if a[k] != b[k]} == {"transport": ("direct", "http")}
    assert a["re_pins"] > 0 and a["gateway_retries"] > 0 and a["rollback_retries"] > 0
    assert a["record_mismatches"] == 0  # the agents of a fault run check their records against their logs
    names = ("smg_worker_health_checks_total", "smg_worker_cb_transitions_total", "smg_worker_retries_total",
             "smg_manual_policy_branch_total", "smg_worker_cb_outcomes_total")
    direct, http = counters(texts["direct"], *names), counters(texts["http"], *names)
    assert direct == http
    assert any(k[0] == "smg_worker_health_checks_total" and ("result", "failure") in k[1] for k in direct)


# --- what each fault does --------------------------------------------------------------------------


def test_a_dead_interval_re_pins_keys_and_they_move_back_after_recovery():
    sc = tiny({"kind": "dead", "worker": 1, "start": 4.0, "end": 10.0})
    result, m, metrics = run_logged(sc, "direct")
    assert_records_match(result)
    ok = [r for r in result.requests if r.ok]
    assert not [r for r in ok if r.worker == "w1" and 4.0 <= r.sent < 10.0]  # nothing served while dead
    on_w1 = {r.session for r in ok if r.worker == "w1" and r.sent < 4.0}
    assert on_w1
    moved = {r.session for r in ok if r.session in on_w1 and 4.0 <= r.sent < 10.0 and r.worker != "w1"}
    back = {r.session for r in ok if r.session in on_w1 and r.sent >= 10.0 and r.worker == "w1"}
    assert moved and back
    first_back = min((r for r in ok if r.worker == "w1" and r.sent >= 10.0), key=lambda r: r.sent)
    assert first_back.cached_tokens == 0  # restarted with an empty cache
    assert m["re_pins"] >= 1 and m["failed_turns"] == 0
    assert m["gateway_retries"] >= len(moved)  # each key first tried its dead worker, then was retried
    health = counters(metrics, "smg_worker_health_checks_total")
    assert health[("smg_worker_health_checks_total", (("result", "failure"), ("worker_type", "regular")))] >= 2


def test_a_slow_worker_takes_longer_on_the_same_plans():
    base = tiny()
    slow = tiny({"kind": "slow", "worker": 0, "factor": 4.0})
    _, m0, _ = run_logged(base, "direct")
    r1, m1, _ = run_logged(slow, "direct")
    assert_records_match(r1)
    assert m1["failed_turns"] == 0
    w0 = [r.e2e for r in r1.requests if r.worker == "w0"]
    others = [r.e2e for r in r1.requests if r.worker != "w0"]
    assert sum(w0) / len(w0) > sum(others) / len(others)
    assert m1["makespan"] > m0["makespan"]


def test_an_error_rate_produces_gateway_retries_and_no_failed_turn_while_retries_last():
    # a request fails only if every attempt does (at most one per worker: a retry excludes failed workers)
    result, m, _ = run_logged(tiny({"kind": "error_rate", "rate": 0.15}, workers=4), "direct")
    assert_records_match(result)
    assert m["gateway_retries"] > 0 and m["failed_turns"] == 0


def test_exhausted_retries_are_failed_turns_and_end_the_session_without_a_stray_record():
    policy = PolicyConfig("manual", "min_load", ("--retry-max-retries", "2"))
    result, m, _ = run_logged(tiny({"kind": "error_rate", "rate": 0.5}), "direct", policy)
    assert_records_match(result)
    failed = [r for r in result.requests if not r.ok]
    assert m["failed_turns"] == len(failed) > 0 and m["gateway_retries"] > 0
    assert all(r.status == 500 for r in failed)
    assert all(s.error for s in result.sessions if any(r.session == s.index for r in failed))


def test_a_rollback_rate_is_retried_by_the_session_server_without_input_ids_and_with_the_key():
    sc = tiny({"kind": "rollback_rate", "rate": 0.3})
    setup = make_setup(sc, MANUAL, True)
    sent: list[tuple[dict, dict, int]] = []
    with open_transport("direct", setup) as tr:
        inner = tr.gateway

        class Recording:  # the session core's upstream, recorded
            core = inner.core

            def steps(self, req):  # the gateway's path, suspended while an engine holds the request
                resp = yield from inner.steps(req)
                sent.append(({k.lower(): v for k, v in req.headers.items()}, req.json, resp.status))
                return resp

        tr.gateway = Recording()
        result = AgentRunner(sc, with_faults(tr, sc.faults), keep_log=True).run()
        retries = tr.session_core.rollback_retries
    assert_records_match(result)
    assert retries > 0
    rolled = [i for i, (_, _, status) in enumerate(sent) if status == 400]
    assert len(rolled) == retries
    for i in rolled:  # answers are recorded as they come back: the retry is the session's next one
        h0, b0, _ = sent[i]
        key = h0.get("x-smg-routing-key")
        h1, b1, status = next(e for e in sent[i + 1:] if e[0].get("x-smg-routing-key") == key)
        assert "input_ids" in b0 and "input_ids" not in b1 and status == 200
        assert h1.get("x-smg-routing-key") == h0.get("x-smg-routing-key") is not None
    assert not any(r.error for r in result.requests)


@pytest.mark.parametrize("fault", [
    {"kind": "dead", "worker": 0, "start": 3.0, "end": 9.0},
    {"kind": "slow", "factor": 3.0, "start": 2.0, "end": 12.0},
    {"kind": "error_rate", "rate": 0.2},
    {"kind": "rollback_rate", "rate": 0.3},
], ids=lambda f: f["kind"])
def test_no_committed_record_is_lost_or_duplicated_over_http(fault):
    sc = tiny(fault, sessions=3, retry_rate=0.2)
    result, m, _ = run_logged(sc, "http")
    assert_records_match(result)
    assert sum(len(s.log) for s in result.sessions) > 0
    assert m["failed_turns"] == 0


def test_the_report_table_shows_fault_columns_only_when_faults_were_at_work():
    from sim.report import markdown_table

    row = {"policy": "manual", "assignment_mode": "min_load", "routing_key": True, "failed_turns": 0,
           "gateway_retries": 0, "rollback_retries": 0, "re_pins": 0}
    assert "re-pins" not in markdown_table([row])
    text = markdown_table([row, {**row, "failed_turns": 2, "gateway_retries": 7, "rollback_retries": 3, "re_pins": 4}])
    header, _, _, faulty = text.splitlines()[:4]
    assert header.endswith("| failed turns | gw retries | rollback retries | re-pins | record mismatches |")
    assert faulty.endswith("| 2 | 7 | 3 | 4 | - |")


def test_record_mismatches_counts_the_sessions_whose_records_differ_from_their_log():
    result, m, _ = run_logged(tiny({"kind": "error_rate", "rate": 0.1}), "direct")
    assert m["record_mismatches"] == 0
    a, b = result.sessions[0], result.sessions[1]
    assert a.records and b.records
    a.records = a.records[:-1]  # one lost
    b.records = [*b.records, b.records[-1]]  # one duplicated
    assert summarize(result, ["w0", "w1", "w2"])["record_mismatches"] == 2


@given(st.lists(st.floats(0, 30), min_size=1, max_size=30), st.floats(0.5, 10))
def test_virtual_health_rounds_fall_due_once_per_interval_of_the_requests_clock(times, interval):
    from mock_gateway.testing import make_core

    core = make_core("--health-check-interval-secs", str(interval), workers=2)
    rounds, last = [], None
    for t in sorted(times):
        urls = core.due_health(t)
        if urls:
            assert urls == core.registry.urls()
            assert t >= interval and (last is None or t >= last + interval)
            rounds.append(t)
            last = t
        else:
            assert t < interval if last is None else t < last + interval
    off = make_core("--health-check-interval-secs", str(interval), "--disable-health-check", workers=2)
    assert all(off.due_health(t) == [] for t in sorted(times))
