"""A HiCache worker's answers and metrics: ``sim.cached_tokens_details`` {device, host, storage} sums to
``cached_tokens``, ``meta_info.cached_tokens_details`` as SGLang writes it, a PD decode answer relays the prefill's
split, ``/metrics`` has SGLang's HiCache names; with HiCache off none of it appears (answers as before)."""

from __future__ import annotations

import math

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from sim.engine.storage import L3Store
from sim.engine.transfer import DecodeReady, PrefillDone, notice_from_json, notice_to_json, transfer
from sim.engine.types import HiCacheConfig, IterationTiming, WorkerConfig
from sim.storage_service import store_app
from sim.worker.answers import cached_tokens_details, sim_object
from sim.worker.app import create_app
from sim.worker.core import WorkerCore
from sim.worker.remote_storage import RemoteStorage
from testbed_common.procs import ThreadServer

SIM_KEYS_WITHOUT_HICACHE = {"arrival", "start", "first_token", "finish", "worker", "cached_tokens", "evicted_tokens",
                            "retractions", "recomputed_tokens"}


def worker(hicache: HiCacheConfig | None, storage: L3Store | None = None, **kw) -> WorkerCore:
    cfg = WorkerConfig(name="w0", kv_capacity_tokens=kw.pop("kv", 4096), page_size=4, engine="iteration",
                       hicache=hicache, **kw)
    return WorkerCore(cfg, seed=3, storage=storage)


def served(core: WorkerCore, prompt: list[int], at: float, n: int = 4) -> dict:
    """The answer to ``prompt`` sent at ``at``, the engine run to its finish."""
    rid = core.infer("generate", {"input_ids": prompt, "sampling_params": {"max_new_tokens": n}, "sim_time": at})
    assert rid.status == 200, rid.body
    while (t := core.next_event_time()) < math.inf:
        for answer in core.advance(t):
            if answer.pending == rid.pending:
                return answer.body
    raise AssertionError("never answered")


def timing(device: int, host: int, storage: int, **kw) -> IterationTiming:
    return IterationTiming(arrival=0.0, start=0.0, first_token=1.0, finish=2.0, prompt_tokens=1000,
                           cached_tokens=device + host + storage, output_tokens=4, evicted_tokens=0, retractions=0,
                           recomputed_tokens=0, cached_device=device, cached_host=host, cached_storage=storage, **kw)


splits = st.tuples(st.integers(0, 300), st.integers(0, 300), st.integers(0, 300))


@given(splits, st.booleans())
def test_meta_info_details_are_sglang_s(split, storage):
    device, host, stored = split
    details = cached_tokens_details(timing(device, host, stored), storage)
    if not sum(split):
        assert details is None  # SGLang: no details without cached tokens
        return
    assert details["device"] == device and details["host"] == host
    assert ("storage" in details) == (storage or stored > 0)  # a decode without L3 relays the prefill's
    assert ("storage_backend" in details) == storage
    assert sum(v for k, v in details.items() if k != "storage_backend") == sum(split)


@given(splits, st.floats(0, 5), st.floats(0, 5))
def test_the_sim_object_carries_the_split_and_the_costs_only_with_hicache(split, load_back, prefetch):
    t = timing(*split, load_back_seconds=load_back, prefetch_seconds=prefetch)
    assert set(sim_object(t, "w0")) == SIM_KEYS_WITHOUT_HICACHE
    sim = sim_object(t, "w0", hicache=True)
    assert sim["cached_tokens_details"] == dict(zip(("device", "host", "storage"), split, strict=True))
    assert sum(sim["cached_tokens_details"].values()) == sim["cached_tokens"]
    assert (sim["load_back_seconds"], sim["prefetch_seconds"]) == (load_back, prefetch)


def test_without_hicache_an_answer_has_no_tier_fields():
    core = worker(None)
    first = served(core, list(range(64)), 1.0)
    again = served(core, [*range(64), 7, 7, 7, 7], 10.0)
    assert again["meta_info"]["cached_tokens"] > 0
    for body in (first, again):
        assert set(body["sim"]) == SIM_KEYS_WITHOUT_HICACHE
        assert "cached_tokens_details" not in body["meta_info"]


@pytest.mark.parametrize("storage", [False, True])
def test_with_hicache_the_split_sums_to_cached_tokens(storage):
    core = worker(HiCacheConfig(storage=storage), L3Store(4) if storage else None)
    first = served(core, list(range(64)), 1.0)
    again = served(core, [*range(64), 7, 7, 7, 7], 10.0)
    for body in (first, again):
        sim, meta = body["sim"], body["meta_info"]
        assert sum(sim["cached_tokens_details"].values()) == sim["cached_tokens"] == meta["cached_tokens"]
        assert sim["load_back_seconds"] >= 0 and sim["prefetch_seconds"] >= 0
    assert first["meta_info"]["cached_tokens_details"] is None
    details = again["meta_info"]["cached_tokens_details"]
    assert details["device"] == again["sim"]["cached_tokens_details"]["device"] > 0
    assert ("storage_backend" in details) == storage


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            extra = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("model_name", "worker")))
            out[s.name, extra] = s.value
    return out


def test_metrics_have_sglang_s_hicache_names_and_count_the_answers_splits():
    core = worker(HiCacheConfig(storage=True), L3Store(4))
    bodies = [served(core, list(range(64)) + [i] * 8, 1.0 + 10 * i) for i in range(3)]
    m = _samples(core.metrics())
    for source in ("device", "host", "storage"):
        want = sum(b["sim"]["cached_tokens_details"][source] for b in bodies)
        assert m["sglang:cached_tokens_total", (("cache_source", source),)] == want
    assert ("sglang:cached_tokens_total", ()) not in m  # one family: by source
    st_ = core.engine.stats
    assert m["sglang:hicache_host_used_tokens", ()] == st_.host_used_tokens
    assert m["sglang:hicache_host_total_tokens", ()] == st_.host_total_tokens
    assert m["sglang:load_back_tokens_total", (("pool", "kv"),)] == st_.load_back_tokens
    assert m["sglang:hicache_backup_tokens_total", (("pool", "kv"),)] == st_.backup_tokens
    assert m["sglang:storage_prefetch_hit_tokens_total", ()] == st_.storage_prefetch_hit_tokens
    assert m["sglang:storage_prefetch_unfulfilled_tokens_total", (("reason", "deadline"),)] == \
        st_.storage_prefetch_unfulfilled_tokens
    assert m["sglang:load_back_duration_seconds_count", ()] == sum(
        1 for b in bodies if b["sim"]["cached_tokens_details"]["host"])


def test_metrics_without_hicache_are_as_before():
    core = worker(None)
    served(core, list(range(64)), 1.0)
    names = {name for name, _ in _samples(core.metrics())}
    assert "sglang:cached_tokens_total" in names
    assert not {n for n in names if "hicache" in n or "load_back" in n or "storage" in n}
    assert all(not extra for name, extra in _samples(core.metrics()) if name == "sglang:cached_tokens_total")


def test_a_pd_decode_answer_relays_the_prefill_s_split():
    offload = HiCacheConfig(storage=True, decode_offload=True)
    core = worker(offload, L3Store(4), disaggregation_mode="decode")
    rid = core.infer("generate", {"input_ids": list(range(40)), "sampling_params": {"max_new_tokens": 3},
                                  "sim_time": 1.0, "bootstrap_room": 11}).pending
    core.advance(1.0)
    [ready] = core.notices()
    assert isinstance(ready, DecodeReady)
    p = PrefillDone(room=11, worker="p0", arrival=1.0, start=1.0, end=1.2, prompt_tokens=40, cached_tokens=32,
                    last_chunk_tokens=8, kv_bytes_per_token=1024, bandwidth=1e9, cached_device=8, cached_host=8,
                    cached_storage=16, load_back_seconds=0.01, prefetch_seconds=0.02)
    assert notice_from_json(notice_to_json(p)) == p  # what the clock's owner carries over HTTP
    core.transfer_ready(transfer(p, ready))
    answers = []
    while not answers and (t := core.next_event_time()) < math.inf:
        answers = core.advance(t)
    [answer] = answers
    assert answer.pending == rid
    sim = answer.body["sim"]
    assert sim["cached_tokens"] == 32 and sim["cached_tokens_details"] == {"device": 8, "host": 8, "storage": 16}
    assert (sim["load_back_seconds"], sim["prefetch_seconds"]) == (0.01, 0.02)
    assert answer.body["meta_info"]["cached_tokens_details"] == {"device": 8, "host": 8, "storage": 16,
                                                                 "storage_backend": "L3Store"}


def test_a_live_worker_whose_l3_store_is_gone_answers_503_and_says_why():
    with ThreadServer(store_app(L3Store(4))) as store:
        remote = RemoteStorage(store.url)
    try:
        core = worker(HiCacheConfig(storage=True), remote)
        with ThreadServer(create_app(core, speedup=100)) as w, httpx.Client(timeout=30, trust_env=False) as client:
            r = client.post(f"{w.url}/generate", json={"input_ids": list(range(40)),
                                                       "sampling_params": {"max_new_tokens": 4}})
            assert r.status_code == 503 and "the L3 store at" in r.json()["message"]
            assert client.get(f"{w.url}/health").status_code == 200  # the worker itself goes on
    finally:
        remote.close()
