"""``HiCacheConfig``: SGLang's flags, validated; the host pool's size from the ratio or the size in GB."""

from __future__ import annotations

import pytest

from sim.engine import HiCacheConfig, IterationEngine, L3Store, WorkerConfig


def test_host_pool_is_ratio_times_the_gpu_pool_or_the_size_in_gb():
    assert HiCacheConfig().host_capacity_tokens(100_000, 131_072) == 200_000
    assert HiCacheConfig(ratio=1.5).host_capacity_tokens(None, 131_072) is None
    assert HiCacheConfig(size_gb=1.0).host_capacity_tokens(100_000, 100_000) == 10_000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"write_policy": "write_around"},
        {"prefetch_policy": "eager"},
        {"ratio": 0.0},
        {"size_gb": -1.0},
        {"prefetch_timeout_base": -0.1},
        {"pcie_bandwidth": 0.0},
        {"storage_read_bandwidth": float("nan")},
    ],
)
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        HiCacheConfig(**kwargs)


def test_hicache_needs_the_iteration_engine_and_a_storage_of_the_same_page_size():
    with pytest.raises(ValueError, match="iteration"):
        WorkerConfig(hicache=HiCacheConfig())
    cfg = WorkerConfig(engine="iteration", page_size=64, hicache=HiCacheConfig(storage=True))
    IterationEngine(cfg, storage=L3Store(page_size=64))
    with pytest.raises(ValueError, match="page size"):
        IterationEngine(cfg, storage=L3Store(page_size=1))
