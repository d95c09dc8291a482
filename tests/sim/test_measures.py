"""Measures and the oracle, driven by real agents through the session server core and a tiny fake pool."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.agents import AgentRunner, RequestRecord, WorkloadResult, common_prefix, run_workload
from sim.engine.radix import RadixCache
from sim.measures import gateway_branches, summarize
from sim.oracle import Oracle
from sim.transports.fake import FakeTransport
from sim.workload.scenario import Scenario

SMALL = Scenario(sessions=8, group_size=4, workers=1, kv_capacity_tokens=None, system_prompt_tokens=300,
                 task_prompt_tokens=50, max_context_tokens=6000, retry_rate=0.2,
                 turns={"dist": "uniform", "low": 3, "high": 6})


def test_one_sticky_worker_reaches_the_oracle():
    res = run_workload(SMALL, FakeTransport(1))
    m = summarize(res, ["w0"])
    assert m["errors"] == 0 and m["requests"] == len(res.requests) > 8
    assert m["kv_reuse"] == pytest.approx(m["oracle_reuse"])
    assert m["stickiness"] == 1.0 and m["eligible_reuse"] == 1.0
    assert m["retries"] > 0


def test_no_affinity_loses_reuse_but_not_the_oracle():
    sticky = summarize(run_workload(SMALL.replace(workers=4), FakeTransport(4, sticky=True)),
                       [f"w{i}" for i in range(4)])
    spread = summarize(run_workload(SMALL.replace(workers=4), FakeTransport(4, sticky=False)),
                       [f"w{i}" for i in range(4)])
    assert spread["oracle_reuse"] == pytest.approx(sticky["oracle_reuse"])  # same conversations either way
    assert spread["kv_reuse"] < sticky["kv_reuse"] <= sticky["oracle_reuse"] + 1e-12
    assert spread["stickiness"] < 0.5 < sticky["stickiness"]
    assert spread["prefill_tokens"] > sticky["prefill_tokens"]
    assert sum(w["requests"] for w in spread["workers"]) == spread["requests"]


class _PlainOracle(Oracle):
    """Overrides ``observe``: the agents then feed it request by request, without conversation hints."""

    def observe(self, arrival, finish, prompt_ids, output_ids):  # type: ignore[override]
        return super().observe(arrival, finish, prompt_ids, output_ids)


def test_conversation_hints_do_not_change_the_oracle():
    hinted = AgentRunner(SMALL.replace(workers=2), FakeTransport(2, sticky=False))
    hinted.run()
    plain = AgentRunner(SMALL.replace(workers=2), FakeTransport(2, sticky=False))
    plain.result.oracle = _PlainOracle()
    plain.run()
    a, b = hinted.result.requests, plain.result.requests
    assert len(a) == len(b) > 8 and any(r.retry for r in a)
    assert [r.oracle_cached for r in a] == [r.oracle_cached for r in b]
    assert hinted.result.oracle.reuse == plain.result.oracle.reuse > 0


def test_sessions_read_their_records():
    res = run_workload(SMALL, FakeTransport(1))
    for s in res.sessions:
        assert s.error is None and s.records_seen == s.turns_done > 0


def test_runs_repeat_exactly():
    a = summarize(run_workload(SMALL, FakeTransport(2)), ["w0", "w1"])
    b = summarize(run_workload(SMALL, FakeTransport(2)), ["w0", "w1"])
    assert a == b


def test_oracle_counts_shared_prefixes_in_time_order():
    o = Oracle()
    assert o.observe(0.0, 5.0, [1, 2, 3], [4, 5]) == 0
    assert o.observe(1.0, 6.0, [1, 2, 3, 4, 5, 6], [7]) == 0  # nothing is in cache before a finish
    assert o.observe(5.0, 7.0, [1, 2, 3, 4, 5, 9], [7]) == 5
    assert o.observe(8.0, 9.0, [1, 2, 3], [7]) == 2  # one prompt token is always computed
    assert o.reuse == pytest.approx(7 / 18)


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5] * 1000 + [1], [5] * 1000 + [2]) == 1000


@given(st.lists(st.integers(0, 3), max_size=40), st.lists(st.integers(0, 3), max_size=40))
def test_common_prefix_of_arrays_is_that_of_lists(a, b):
    want = common_prefix(a, b)
    assert want == next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    arr_a, arr_b = np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)
    assert common_prefix(arr_a, arr_b) == common_prefix(arr_a, b) == common_prefix(a, arr_b) == want


class _RadixOracle:
    """The reference: the worker engine's RadixCache, unbounded, fed in the oracle's order."""

    def __init__(self, page_size: int) -> None:
        self.cache = RadixCache(capacity=None, page_size=page_size)
        self.pending: list[tuple[float, int, list[int]]] = []

    def observe(self, seq: int, arrival: float, finish: float, prompt: list[int], output: list[int]) -> int:
        while self.pending and self.pending[0][0] <= arrival:
            f, _, ids = heapq.heappop(self.pending)
            self.cache.insert(ids, f)
        cached = self.cache.peek(prompt[:max(len(prompt) - 1, 0)]) if prompt else 0
        heapq.heappush(self.pending, (max(finish, arrival), seq, prompt + output))
        return cached


_requests = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 12), st.lists(st.integers(0, 2), max_size=8),
                               st.lists(st.integers(0, 2), max_size=4), st.floats(0, 3), st.floats(0, 4)),
                     min_size=1, max_size=30)


@given(_requests, st.integers(1, 3))
def test_oracle_matches_an_unbounded_radix_cache_with_or_without_conversation_hints(reqs, page):
    ref, plain, hinted = _RadixOracle(page), Oracle(page_size=page), Oracle(page_size=page)
    fulls: list[list[int]] = []
    turns = []
    t = 0.0
    for seq, (parent, keep, extra, output, gap, dur) in enumerate(reqs):
        t += gap
        base = fulls[parent % len(fulls)] if fulls and parent else []
        prompt = base[:keep] + extra if keep < len(base) else base + extra
        want = ref.observe(seq, t, t + dur, prompt, output)
        assert plain.observe(t, t + dur, prompt, output) == want
        prev = turns[parent % len(turns)] if turns and parent else None
        shared = common_prefix(prev.full, prompt) if prev is not None else 0
        arr = np.array(prompt, dtype=np.int64)
        got, turn = hinted.observe_turn(t, t + dur, arr, np.array(prompt + output, dtype=np.int64), prev, shared)
        assert got == want
        fulls.append(prompt + output)
        turns.append(turn)
    for o in (plain, hinted):
        o.finish()
        assert o.cached_tokens == plain.cached_tokens and o.prompt_tokens == plain.prompt_tokens
    ref.observe(len(reqs), float("inf"), float("inf"), [], [])  # everything in
    for f in fulls:
        want = ref.cache.peek([*f, 9])
        assert plain.cache.match([*f, 9])[1] == hinted.cache.match([*f, 9])[1] == want


def test_errors_are_counted():
    res = WorkloadResult()
    res.requests = [RequestRecord(0, 0, False, 0.0, 200, "w0", 0, 0, 1, 2, 10, 0, 3),
                    RequestRecord(0, 1, False, 5.0, 503, error="503: down")]
    m = summarize(res, ["w0", "w1"])
    assert m["errors"] == 1 and m["requests"] == 1
    assert m["imbalance"] == 2.0  # all work on one of two workers
    assert m["makespan"] == 2.0


def test_gateway_branches_from_prometheus_text():
    text = ('# HELP smg_manual_policy_branch_total x\n# TYPE smg_manual_policy_branch_total counter\n'
            'smg_manual_policy_branch_total{branch="vacant"} 4.0\n'
            'smg_manual_policy_branch_total{branch="occupied_hit"} 12.0\n'
            '# HELP smg_worker_requests_total y\n# TYPE smg_worker_requests_total counter\n'
            'smg_worker_requests_total{worker="http://a"} 16.0\n')
    assert gateway_branches(text) == {"manual": {"occupied_hit": 12, "vacant": 4}}


def _branch_text(counts: dict[str, int]) -> str:
    head = '# HELP smg_manual_policy_branch_total x\n# TYPE smg_manual_policy_branch_total counter\n'
    return head + "".join(f'smg_manual_policy_branch_total{{branch="{b}"}} {n}.0\n' for b, n in counts.items())


def test_re_pins_count_every_re_pin_branch_by_cause():
    res = run_workload(SMALL, FakeTransport(1))
    m = summarize(res, ["w0"], metrics_text=_branch_text(
        {"vacant": 8, "occupied_hit": 30, "occupied_miss": 2, "repin_queue": 7, "repin_kv": 1, "repin_load": 0}))
    assert m["re_pins_by_cause"] == {"occupied_miss": 2, "repin_kv": 1, "repin_queue": 7}
    assert m["re_pins"] == 10
    none = summarize(res, ["w0"], metrics_text=_branch_text({"vacant": 8, "occupied_hit": 30}))
    assert none["re_pins"] == 0 and none["re_pins_by_cause"] == {}


def test_every_re_pin_branch_is_one_a_policy_counts():
    from pathlib import Path

    import mock_gateway.policies as pkg
    from mock_gateway.policies.base import REPIN_BRANCHES

    root = Path(pkg.__file__).parent
    source = "".join(p.read_text() for p in root.rglob("*.py") if p.name != "base.py")
    for policy, branches in REPIN_BRANCHES.items():
        assert f'"smg_{policy}_policy_branch"' in (root.parent / "metrics.py").read_text()
        for branch in branches:
            assert f'"{branch}"' in source, f"{policy}: no policy counts a branch {branch!r}"


def test_min_kv_re_pins_off_a_hot_worker_are_re_pins():
    """hot-worker: min_kv moves keys off the slow worker (``repin_queue``), with no worker ever unavailable."""
    from sim.runner import PolicyConfig, make_setup, run_setup
    from sim.workload.scenario import load_scenario

    row = run_setup(make_setup(load_scenario("hot-worker"), PolicyConfig("manual", "min_kv"), True), "direct")
    moved = row["gateway_branches"]["manual"].get("repin_queue", 0)
    assert moved > 0 and row["gateway_branches"]["manual"].get("occupied_miss", 0) == 0
    assert row["re_pins"] == moved and row["re_pins_by_cause"] == {"repin_queue": moved}
