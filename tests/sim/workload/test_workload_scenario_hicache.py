"""HiCache scenarios: SGLang's flag names as [workers] keys, the flat form's round trip (and its absence when off,
so every earlier scenario keeps its hash), the built-in hicache and pd-hicache pools, and the refusals that name
the key and the fix."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.workload.scenario import (
    HICACHE_FIELDS,
    HICACHE_PREFETCH_POLICIES,
    HICACHE_WRITE_POLICIES,
    Scenario,
    ScenarioError,
    builtin_names,
    load_scenario,
)

ON = "enable_hierarchical_cache = true\n"
L3 = ON + 'hicache_storage_backend = "mooncake"\n'
POOLS = "[workers.prefill]\ncount = 2\n[workers.decode]\ncount = 3\n"


def load_text(tmp_path, workers: str, pools: str = "") -> Scenario:
    f = tmp_path / "mine.toml"
    f.write_text(f"[workers]\n{workers}{pools}")
    return load_scenario(str(f))


def refusal(tmp_path, workers: str, pools: str = "") -> str:
    with pytest.raises(ScenarioError) as e:
        load_text(tmp_path, workers, pools)
    return str(e.value)


def test_the_hicache_scenario_is_the_default_workload_under_kv_pressure_with_l2_and_l3():
    s, default = load_scenario("hicache"), load_scenario("default")
    assert s.hicache and s.storage and not s.pd and s.page_size == 64
    assert s.hicache_storage_capacity_tokens is None  # an unbounded L3
    assert s.kv_capacity_tokens < default.kv_capacity_tokens / 4 and s.kv_capacity_tokens > s.max_context_tokens
    assert (s.workers, s.sessions, s.group_size, s.turns, s.output_tokens, s.tool_output_tokens) == \
        (default.workers, default.sessions, default.group_size, default.turns, default.output_tokens,
         default.tool_output_tokens)


def test_the_pd_hicache_scenario_is_the_pd_pool_with_l3_and_decode_offload():
    s, pd = load_scenario("pd-hicache"), load_scenario("pd")
    assert s.pd and s.storage and s.disaggregation_decode_enable_offload_kvcache and s.page_size == 64
    strip = dict.fromkeys(("name", "description", "page_size", *HICACHE_FIELDS))
    assert s.replace(**{k: getattr(pd, k) for k in strip}) == pd


@pytest.mark.parametrize("name", ["hicache", "pd-hicache"])
def test_a_hicache_scenario_round_trips_through_its_flat_form(name):
    s = load_scenario(name)
    flat = s.to_dict()
    assert set(HICACHE_FIELDS) | {"page_size", "kv_bytes_per_token"} <= set(flat)
    assert Scenario.from_flat(flat) == s


@pytest.mark.parametrize("name", [n for n in builtin_names() if "hicache" not in n])
def test_scenarios_without_hicache_keep_their_flat_form(name):
    flat = load_scenario(name).to_dict()
    assert not (set(HICACHE_FIELDS) | {"page_size"}) & set(flat)


@given(ratio=st.floats(0.1, 8), size=st.sampled_from([0.0, 0.5, 64.0]), write=st.sampled_from(HICACHE_WRITE_POLICIES),
       prefetch=st.sampled_from(HICACHE_PREFETCH_POLICIES), read=st.floats(0.01, 400), write_bw=st.floats(0.01, 400),
       capacity=st.one_of(st.none(), st.integers(1, 10**9)), page=st.sampled_from([1, 16, 64]),
       kv_bytes=st.one_of(st.none(), st.integers(1, 10**6)))
def test_any_hicache_pool_round_trips(ratio, size, write, prefetch, read, write_bw, capacity, page, kv_bytes):
    s = Scenario(enable_hierarchical_cache=True, hicache_ratio=ratio, hicache_size=size, hicache_write_policy=write,
                 hicache_storage_backend="3fs", hicache_storage_prefetch_policy=prefetch,
                 hicache_storage_read_bandwidth_gb_s=read, hicache_storage_write_bandwidth_gb_s=write_bw,
                 hicache_storage_capacity_tokens=capacity, page_size=page, kv_bytes_per_token=kv_bytes)
    assert Scenario.from_flat(s.to_dict()) == s


def test_the_toml_keys_are_sglangs_flag_names(tmp_path):
    s = load_text(tmp_path, L3 + "hicache_ratio = 3\nhicache_size = 12\nhicache_write_policy = \"write_back\"\n"
                  "hicache_storage_prefetch_policy = \"wait_complete\"\nhicache_storage_capacity_tokens = \"inf\"\n"
                  "hicache_storage_read_bandwidth_gb_s = 0.57\npage_size = 64\n")
    assert (s.hicache_ratio, s.hicache_size, s.hicache_write_policy, s.hicache_storage_prefetch_policy) == \
        (3.0, 12.0, "write_back", "wait_complete")
    assert (s.hicache_storage_capacity_tokens, s.hicache_storage_read_bandwidth_gb_s, s.page_size) == (None, 0.57, 64)


def test_without_storage_keeps_the_host_pools_and_drops_the_l3():
    s = load_scenario("pd-hicache")
    base = s.without_storage()
    assert base.hicache and not base.storage and not base.disaggregation_decode_enable_offload_kvcache
    assert (base.hicache_ratio, base.page_size, base.pd, base.workers) == (s.hicache_ratio, 64, True, s.workers)


def test_the_colocated_baseline_of_pd_hicache_keeps_hicache_without_the_decode_offload():
    s = load_scenario("pd-hicache").colocated()
    assert not s.pd and s.storage and not s.disaggregation_decode_enable_offload_kvcache
    assert s.kv_bytes_per_token == 54_144


def test_page_size_applies_without_hicache(tmp_path):
    s = load_text(tmp_path, "page_size = 16\n")
    assert s.page_size == 16 and not s.hicache and s.to_dict()["page_size"] == 16


@pytest.mark.parametrize(("workers", "pools", "expected"), [
    ("hicache_ratio = 3\n", "", "workers.hicache_ratio applies only with HiCache: add "
                                "workers.enable_hierarchical_cache = true"),
    ('hicache_storage_backend = "mooncake"\n', "", "workers.hicache_storage_backend applies only with HiCache"),
    ("kv_bytes_per_token = 1000\n", "", "workers.kv_bytes_per_token applies only to a PD pool"),
    (ON + "hicache_storage_read_bandwidth_gb_s = 1\n", "", "workers.hicache_storage_read_bandwidth_gb_s applies "
                                                          "only with an L3: set workers.hicache_storage_backend"),
    (ON + "hicache_storage_capacity_tokens = 1000\n", "", "applies only with an L3"),
    (ON + "disaggregation_decode_enable_offload_kvcache = true\n", POOLS, "applies only with an L3"),
    (L3 + "disaggregation_decode_enable_offload_kvcache = true\n", "", "applies only to a PD pool"),
    (ON + 'hicache_write_policy = "write_thru"\n', "", "did you mean 'write_through'?"),
    (L3 + 'hicache_storage_prefetch_policy = "timeout_s"\n', "", "did you mean 'timeout'?"),
    (ON + "hicache_ratio = 0\n", "", "workers.hicache_ratio must be > 0"),
    (ON + "hicache_size = -1\n", "", "workers.hicache_size must be >= 0"),
    (ON + "hicache_pcie_bandwidth_gb_s = 0\n", "", "workers.hicache_pcie_bandwidth_gb_s must be > 0"),
    (L3 + "hicache_storage_write_bandwidth_gb_s = -2\n", "", "must be > 0"),
    (L3 + "hicache_storage_capacity_tokens = -5\n", "", "must be positive"),
    ("enable_hierarchical_cache = 1\n", "", "workers.enable_hierarchical_cache must be true or false, got 1"),
    (ON + 'engine = "arrival"\n', "", "HiCache needs the iteration-level engine"),
    ("page_size = 0\n", "", "workers.page_size must be >= 1"),
    ("page_size = 1.5\n", "", "workers.page_size must be an integer"),
    (ON + "hicache_ratio = \"two\"\n", "", "workers.hicache_ratio must be a finite number"),
    (ON + "hicache_storage = true\n", "", "did you mean 'hicache_storage_backend'?"),
])
def test_hicache_refuses_what_it_cannot_use(tmp_path, workers, pools, expected):
    assert expected in refusal(tmp_path, workers, pools)
