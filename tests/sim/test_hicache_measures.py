"""HiCache's records and measures: a record reads the tier split, load-back and prefetch times of the answer's
``sim`` (0 when absent); ``summarize(..., hicache=True)`` splits kv_reuse by tier (the parts sum to it), sums the
workers' storage bytes and splits TTFT into fetching KV from the lower tiers and the rest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.agents import AgentRunner, RequestRecord, WorkloadResult
from sim.measures import summarize
from sim.transports.base import Reply
from sim.workload.scenario import load_scenario
from testbed_common import vtime

HICACHE_KEYS = {"reuse_device", "reuse_host", "reuse_storage", "load_back_seconds_mean", "prefetch_seconds_mean",
                "storage_read_bytes", "storage_write_bytes", "ttft_load_back_mean", "ttft_compute_mean"}


def rec(session: int, turn: int, worker: str, *, arrival: float, first: float, prompt: int, tiers: tuple[int, int, int],
        load_back: float = 0.0, prefetch: float = 0.0) -> RequestRecord:
    device, host, storage = tiers
    return RequestRecord(session, turn, False, arrival, 200, worker=worker, arrival=arrival, start=arrival,
                         first_token=first, finish=first + 1.0, prompt_tokens=prompt,
                         cached_tokens=device + host + storage, output_tokens=10, cached_device=device,
                         cached_host=host, cached_storage=storage, load_back_seconds=load_back,
                         prefetch_seconds=prefetch)


RECORDS = [
    rec(0, 0, "w0", arrival=0.0, first=0.5, prompt=1000, tiers=(0, 0, 0)),
    rec(0, 1, "w0", arrival=3.0, first=3.2, prompt=1200, tiers=(600, 400, 0), load_back=0.05),
    rec(0, 2, "w1", arrival=6.0, first=6.9, prompt=1400, tiers=(0, 0, 1280), load_back=0.1, prefetch=0.3),
    rec(1, 0, "w1", arrival=0.0, first=0.4, prompt=1000, tiers=(512, 0, 0)),
]
STATS = {"w0": {"storage_read_bytes": 0, "storage_write_bytes": 5000},
         "w1": {"storage_read_bytes": 7000, "storage_write_bytes": 3000}}


def hicache_summary(records=RECORDS, stats=STATS):
    return summarize(WorkloadResult(requests=list(records)), ["w0", "w1"], stats, hicache=True)


def test_reuse_splits_by_tier_and_the_parts_sum_to_kv_reuse():
    m = hicache_summary()
    prompt = 1000 + 1200 + 1400 + 1000
    assert (m["reuse_device"], m["reuse_host"], m["reuse_storage"]) == \
        pytest.approx((1112 / prompt, 400 / prompt, 1280 / prompt))
    assert m["reuse_device"] + m["reuse_host"] + m["reuse_storage"] == pytest.approx(m["kv_reuse"])


def test_load_back_prefetch_and_the_ttft_split():
    m = hicache_summary()
    assert m["load_back_seconds_mean"] == pytest.approx(0.15 / 4)
    assert m["prefetch_seconds_mean"] == pytest.approx(0.3 / 4)
    assert m["ttft_load_back_mean"] == pytest.approx(0.45 / 4)
    mean_ttft = (0.5 + 0.2 + 0.9 + 0.4) / 4
    assert m["ttft_load_back_mean"] + m["ttft_compute_mean"] == pytest.approx(mean_ttft)


def test_storage_bytes_are_the_workers_sums_and_none_when_no_worker_reports_them():
    m = hicache_summary()
    assert (m["storage_read_bytes"], m["storage_write_bytes"]) == (7000, 8000)
    m = hicache_summary(stats={})
    assert m["storage_read_bytes"] is None and m["storage_write_bytes"] is None


def test_a_run_without_hicache_has_no_tier_measures():
    m = summarize(WorkloadResult(requests=list(RECORDS)), ["w0", "w1"], STATS)
    assert not HICACHE_KEYS & set(m)
    assert set(hicache_summary()) >= HICACHE_KEYS


def test_a_run_without_answers_has_zero_means():
    m = hicache_summary(records=[])
    assert m["reuse_device"] == m["ttft_compute_mean"] == m["load_back_seconds_mean"] == 0.0


@given(st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 5000), st.integers(0, 5000), st.integers(0, 5000)),
                min_size=1, max_size=20))
def test_the_tiers_always_sum_to_kv_reuse(rows):
    records = [rec(i, 0, "w0", arrival=0.0, first=1.0, prompt=p + d + h + s, tiers=(d, h, s))
               for i, (p, d, h, s) in enumerate(rows)]
    m = hicache_summary(records)
    assert m["reuse_device"] + m["reuse_host"] + m["reuse_storage"] == pytest.approx(m["kv_reuse"])


class NoTransport:
    """What AgentRunner needs of a transport to parse an answer: nothing."""


def answer(sim_extra: dict) -> Reply:
    sim = {"worker": "w3", "arrival": 1.0, "start": 1.0, "first_token": 1.5, "finish": 2.0, "cached_tokens": 96,
           **sim_extra}
    return Reply(200, {vtime.SIM_RESPONSE_FIELD: sim, "choices": [{
        "message": {"content": "ok"}, "prompt_token_ids": list(range(200)),
        "meta_info": {"output_token_logprobs": [[0.0, 7], [0.0, 8]]}}]})


def parse(reply: Reply) -> RequestRecord:
    runner = AgentRunner(load_scenario("hicache"), NoTransport(), plans=[])
    rec, _, _ = runner._parse(RequestRecord(0, 0, False, 1.0, 0), reply, [], None)
    return rec


def test_a_record_reads_the_tier_split_and_times_from_the_answer():
    r = parse(answer({"cached_tokens_details": {"device": 64, "host": 0, "storage": 32}, "load_back_seconds": 0.01,
                      "prefetch_seconds": 0.2}))
    assert r.ok and (r.cached_device, r.cached_host, r.cached_storage) == (64, 0, 32)
    assert (r.load_back_seconds, r.prefetch_seconds) == (0.01, 0.2)


def test_an_answer_without_hicache_leaves_the_tier_fields_zero():
    r = parse(answer({}))
    assert r.ok and (r.cached_device, r.cached_host, r.cached_storage, r.load_back_seconds) == (0, 0, 0, 0.0)


def test_a_malformed_tier_split_is_an_error_not_a_crash():
    r = parse(answer({"cached_tokens_details": {"device": 64}, "load_back_seconds": 0.0, "prefetch_seconds": 0.0}))
    assert not r.ok and "malformed answer" in (r.error or "")
