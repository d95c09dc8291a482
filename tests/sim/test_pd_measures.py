"""The PD measures of a run (sim.measures, PD runs only): reuse per leg, transfer bytes and time, TTFT split into
prefill, transfer and first decode step, the previous answers' share of the prompt, per-worker rows by role."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.agents import RequestRecord, WorkloadResult
from sim.measures import answer_tokens_in_prompts, summarize

ROLES = {"p0": "prefill", "p1": "prefill", "d0": "decode", "d1": "decode", "d2": "decode"}
PD_KEYS = {"decode_kv_reuse", "decode_stickiness", "transfer_bytes", "transfer_seconds_mean", "ttft_prefill_mean",
           "ttft_transfer_mean", "ttft_first_decode_mean", "answer_share"}


def rec(session: int, turn: int, prefill: str, decode: str, *, arrival: float, prefill_end: float, ready: float,
        first: float, prompt: int, cached: int, output: int, prefix: int = 0, retry: bool = False) -> RequestRecord:
    return RequestRecord(session, turn, retry, arrival, 200, worker=decode, arrival=arrival, start=arrival,
                         first_token=first, finish=first + 1.0, prompt_tokens=prompt, cached_tokens=cached,
                         output_tokens=output, prefill_worker=prefill, prefill_end=prefill_end,
                         decode_prefix_tokens=prefix, transfer_bytes=(prompt - prefix) * 100, transfer_ready=ready)


RECORDS = [
    rec(0, 0, "p0", "d0", arrival=0.0, prefill_end=0.5, ready=0.6, first=0.7, prompt=1000, cached=0, output=50),
    rec(1, 0, "p1", "d1", arrival=0.0, prefill_end=0.4, ready=0.9, first=1.0, prompt=1000, cached=400, output=30),
    rec(0, 1, "p0", "d2", arrival=5.0, prefill_end=5.1, ready=5.3, first=5.4, prompt=1100, cached=1000, output=20,
        prefix=500),
    rec(0, 1, "p0", "d2", arrival=9.0, prefill_end=9.2, ready=9.3, first=9.5, prompt=1100, cached=1099, output=40,
        retry=True),
    rec(0, 2, "p1", "d2", arrival=12.0, prefill_end=12.5, ready=12.6, first=12.8, prompt=1200, cached=0, output=10),
]


def pd_summary(records=RECORDS, bandwidth: float | None = 1e6):
    return summarize(WorkloadResult(requests=list(records)), list(ROLES), roles=ROLES, transfer_bandwidth=bandwidth)


def test_reuse_per_leg_and_transfer():
    m = pd_summary()
    prompt = 1000 + 1000 + 1100 + 1100 + 1200
    assert m["kv_reuse"] == pytest.approx((0 + 400 + 1000 + 1099 + 0) / prompt)  # the prefill leg's hits
    assert m["decode_kv_reuse"] == pytest.approx(500 / prompt)
    assert m["transfer_bytes"] == (prompt - 500) * 100
    assert m["transfer_seconds_mean"] == pytest.approx((prompt - 500) * 100 / 1e6 / 5)
    assert pd_summary(bandwidth=None)["transfer_seconds_mean"] is None


def test_ttft_splits_into_prefill_transfer_and_first_decode_step():
    m = pd_summary()
    assert m["ttft_prefill_mean"] == pytest.approx((0.5 + 0.4 + 0.1 + 0.2 + 0.5) / 5)
    assert m["ttft_transfer_mean"] == pytest.approx((0.1 + 0.5 + 0.2 + 0.1 + 0.1) / 5)
    assert m["ttft_first_decode_mean"] == pytest.approx((0.1 + 0.1 + 0.1 + 0.2 + 0.2) / 5)
    mean_ttft = sum(r.ttft for r in RECORDS) / len(RECORDS)
    assert m["ttft_prefill_mean"] + m["ttft_transfer_mean"] + m["ttft_first_decode_mean"] == pytest.approx(mean_ttft)


def test_stickiness_is_the_prefill_legs_and_decode_stickiness_the_decode_legs():
    m = pd_summary()
    # session 0: p0 -> p0 -> p0 -> p1 (prefill), d0 -> d2 -> d2 -> d2 (decode)
    assert m["stickiness"] == pytest.approx(2 / 3) and m["decode_stickiness"] == pytest.approx(2 / 3)


def test_worker_rows_carry_their_role_and_their_own_legs_figures():
    rows = {w["name"]: w for w in pd_summary()["workers"]}
    assert [rows[n]["role"] for n in ROLES] == list(ROLES.values())
    assert (rows["p0"]["requests"], rows["p0"]["cached_tokens"], rows["p0"]["prefill_tokens"]) == \
        (3, 2099, 3200 - 2099)
    assert rows["p0"]["output_tokens"] == 0 and rows["d2"]["prefill_tokens"] == 0
    assert (rows["d2"]["requests"], rows["d2"]["cached_tokens"], rows["d2"]["output_tokens"]) == (3, 500, 70)
    assert rows["d2"]["kv_reuse"] == pytest.approx(500 / 3400)
    sent = sum(w["transfer_bytes"] for w in rows.values() if w["role"] == "prefill")
    assert sent == sum(w["transfer_bytes"] for w in rows.values() if w["role"] == "decode") == \
        pd_summary()["transfer_bytes"]


def test_imbalance_is_over_the_prefill_workers_and_requests_over_the_decode_workers():
    m = pd_summary()
    prefill = [3200 - 2099, 2200 - 400]
    assert m["imbalance"] == pytest.approx(max(prefill) / (sum(prefill) / 2))
    assert m["imbalance_requests"] == pytest.approx(3 / (5 / 3))


def test_the_answer_share_counts_each_prompts_previous_kept_answer():
    # turn 1 (and its retry) carry turn 0's answer (50); turn 2 carries the retry's answer (40), not the dropped 20
    assert answer_tokens_in_prompts(RECORDS) == 50 + 50 + 40
    assert pd_summary()["answer_share"] == pytest.approx(140 / 5400)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 500)), max_size=30))
def test_the_answer_share_is_what_each_session_answered_before(turns):
    """Sessions answering in turn order: each request's prompt holds its session's previous answer."""
    records, last, count = [], {}, {}
    for session, output in turns:
        k = count.get(session, 0)
        records.append(RequestRecord(session, k, False, 0.0, 200, output_tokens=output))
        count[session] = k + 1
    expected = 0
    for r in records:
        expected += last.get(r.session, 0)
        last[r.session] = r.output_tokens
    assert answer_tokens_in_prompts(records) == expected


def test_a_colocated_run_has_no_pd_measures():
    plain = [RequestRecord(0, 0, False, 0.0, 200, worker="w0", prompt_tokens=10, cached_tokens=2, output_tokens=3)]
    m = summarize(WorkloadResult(requests=plain), ["w0", "w1"])
    assert not PD_KEYS & set(m) and all("role" not in w for w in m["workers"])
    assert set(pd_summary()) >= PD_KEYS
