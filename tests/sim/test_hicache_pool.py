"""A HiCache scenario's workers (sim.transports.pool): every co-located or prefill worker runs HiCache with the
scenario's parameters, a decode worker only to offload its KV to L3; the L3's capacity in pages; a pool without
HiCache is built as before."""

from __future__ import annotations

from sim.engine.types import HiCacheConfig, WorkerConfig
from sim.transports.pool import storage_capacity_pages, worker_configs
from sim.workload.scenario import load_scenario


def test_every_worker_of_the_hicache_scenario_runs_its_hicache():
    s = load_scenario("hicache")
    configs = worker_configs(s)
    assert len(configs) == 8 and all(c.page_size == 64 and c.engine == "iteration" for c in configs)
    assert {c.hicache for c in configs} == {HiCacheConfig(ratio=2.0, write_policy="write_through", storage=True,
                                                          prefetch_policy="timeout", pcie_bandwidth=50e9,
                                                          storage_read_bandwidth=40e9, storage_write_bandwidth=40e9)}
    assert {c.kv_bytes_per_token for c in configs} == {WorkerConfig.kv_bytes_per_token}


def test_the_scenarios_parameters_reach_the_config():
    s = load_scenario("hicache").replace(hicache_ratio=3.5, hicache_size=12.0, hicache_write_policy="write_back",
                                         hicache_storage_prefetch_policy="best_effort", kv_bytes_per_token=1000,
                                         hicache_storage_read_bandwidth_gb_s=0.57,
                                         hicache_storage_write_bandwidth_gb_s=0.16, hicache_pcie_bandwidth_gb_s=45.0)
    [c, *_] = worker_configs(s)
    assert c.hicache == HiCacheConfig(ratio=3.5, size_gb=12.0, write_policy="write_back", storage=True,
                                      prefetch_policy="best_effort", pcie_bandwidth=45e9,
                                      storage_read_bandwidth=0.57e9, storage_write_bandwidth=0.16e9)
    assert c.kv_bytes_per_token == 1000


def test_without_storage_the_workers_keep_their_host_pools_only():
    [c, *_] = worker_configs(load_scenario("hicache").without_storage())
    assert c.hicache is not None and not c.hicache.storage


def test_pd_hicache_prefill_workers_cache_and_decode_workers_offload():
    s = load_scenario("pd-hicache")
    configs = worker_configs(s)
    prefill, decode = configs[:2], configs[2:]
    assert all(c.hicache is not None and c.hicache.storage and not c.hicache.decode_offload for c in prefill)
    assert all(c.hicache is not None and c.hicache.decode_offload for c in decode)
    assert {c.kv_bytes_per_token for c in configs} == {54_144} and {c.page_size for c in configs} == {64}
    without = worker_configs(s.replace(disaggregation_decode_enable_offload_kvcache=False))
    assert [c.hicache is None for c in without] == [False] * 2 + [True] * 6


def test_a_pool_without_hicache_is_unchanged():
    for name in ("default", "pd"):
        assert all(c.hicache is None and c.page_size == 1 for c in worker_configs(load_scenario(name)))


def test_the_l3_capacity_is_counted_in_whole_pages():
    s = load_scenario("hicache")
    assert storage_capacity_pages(s) is None
    assert storage_capacity_pages(s.replace(hicache_storage_capacity_tokens=1_000_000)) == 1_000_000 // 64
    assert storage_capacity_pages(s.replace(hicache_storage_capacity_tokens=10)) == 1
    assert storage_capacity_pages(load_scenario("default")) is None
