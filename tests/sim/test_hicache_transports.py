"""HiCache on the transports: the pool's workers share one L3 (``direct``: one ``L3Store``; ``http``: the store
service), so a session moved to another worker finds its prefix there; http == direct for a seed, also on a PD pool with
decode offload; the workers' rows carry the HiCache counters; a pool without HiCache has neither."""

from __future__ import annotations

import json

import pytest

from sim.runner import PolicyConfig, make_setup, public, run_setup
from sim.transports.direct import HICACHE_STATS, DirectTransport
from sim.transports.http import HttpTransport
from sim.transports.pool import port_salt, stable_ports, worker_urls
from sim.worker.remote_storage import RemoteStorage, StoreUnavailable
from sim.workload.scenario import load_scenario

TINY_HICACHE = load_scenario("hicache").replace(
    workers=2, kv_capacity_tokens=20_000, sessions=4, group_size=2, max_context_tokens=4000, retry_rate=0.0,
    turns={"dist": "uniform", "low": 3, "high": 5},
    tool_output_tokens={"dist": "lognormal", "median": 200, "sigma": 0.5, "min": 64},
    tool_latency={"dist": "lognormal", "median": 1.0, "sigma": 0.5})
TINY_PD_HICACHE = load_scenario("pd-hicache").replace(
    workers=3, prefill_workers=2, decode_workers=1, prefill_kv_capacity_tokens=20_000,
    decode_kv_capacity_tokens=30_000, sessions=4, group_size=2, max_context_tokens=4000, retry_rate=0.0,
    turns={"dist": "uniform", "low": 3, "high": 5},
    tool_output_tokens={"dist": "lognormal", "median": 200, "sigma": 0.5, "min": 64},
    tool_latency={"dist": "lognormal", "median": 1.0, "sigma": 0.5})
ROUND_ROBIN = PolicyConfig("round_robin")  # each turn on the other worker


def test_the_workers_of_a_pool_share_one_l3_store():
    tr = DirectTransport(make_setup(TINY_HICACHE, ROUND_ROBIN, False))
    cores = list(tr.worker_cores.values())
    assert tr.storage is not None and tr.storage.page_size == 64 and tr.storage.capacity_pages is None
    assert all(c.storage is tr.storage and c.engine.storage is tr.storage for c in cores)
    without = DirectTransport(make_setup(TINY_HICACHE.without_storage(), ROUND_ROBIN, False))
    assert without.storage is None and all(c.storage is None for c in without.worker_cores.values())
    capped = DirectTransport(make_setup(TINY_HICACHE.replace(hicache_storage_capacity_tokens=6400), ROUND_ROBIN,
                                        False))
    assert capped.storage.capacity_pages == 100


def test_a_turn_on_the_other_worker_loads_its_prefix_from_the_pages_the_first_worker_wrote():
    seen: list = []
    row = run_setup(make_setup(TINY_HICACHE, ROUND_ROBIN, False), "direct", on_request=seen.append)
    assert row["errors"] == 0 and len(seen) >= 12
    moved = [r for r in seen if r.turn > 0 and not r.retry]
    assert any(r.cached_storage > 0 for r in moved)  # found in L3, written by the other worker
    assert all(r.cached_device + r.cached_host + r.cached_storage == r.cached_tokens for r in seen)
    assert row["storage_read_bytes"] > 0 and row["storage_write_bytes"] > 0


def test_the_worker_stats_carry_the_hicache_counters_only_with_hicache():
    on = DirectTransport(make_setup(TINY_HICACHE, ROUND_ROBIN, False)).worker_stats()
    off = DirectTransport(make_setup(load_scenario("default"), ROUND_ROBIN, False)).worker_stats()
    assert all({*HICACHE_STATS, "host_used_tokens", "host_total_tokens"} <= set(s) for s in on.values())
    assert not any(set(HICACHE_STATS) & set(s) for s in off.values())


@pytest.mark.parametrize("scenario", [TINY_HICACHE, TINY_PD_HICACHE], ids=["hicache", "pd-hicache"])
def test_http_and_direct_agree_exactly(scenario):
    setup = make_setup(scenario, ROUND_ROBIN, False)
    urls = worker_urls(stable_ports(port_salt(setup), scenario.workers))  # the block http takes
    direct = run_setup(setup, "direct", worker_urls=urls)
    http = run_setup(setup, "http", worker_urls=urls)
    assert direct["errors"] == 0 and direct["storage_read_bytes"] > 0
    strip = {"transport", "_meta"}
    assert json.dumps({k: v for k, v in public(http).items() if k not in strip}) == \
        json.dumps({k: v for k, v in public(direct).items() if k not in strip})


def test_http_serves_the_pool_s_l3_to_each_worker_and_stops_it():
    tr = HttpTransport(make_setup(TINY_HICACHE, ROUND_ROBIN, False))
    try:
        storages = [c.storage for c in tr.worker_cores]
        assert all(isinstance(s, RemoteStorage) and s.url == tr.store_url for s in storages)
        assert len({id(s) for s in storages}) == len(storages) and storages[0].page_size == 64
    finally:
        tr.close()
    with pytest.raises(StoreUnavailable):  # the store's server is gone with the transport
        RemoteStorage(tr.store_url)
