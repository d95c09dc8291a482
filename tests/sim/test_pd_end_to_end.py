"""PD runs end to end through the real cores: http == direct for a seed, the PD oracle reached by one pinned
session, transfer bytes with the decode radix cache off and on, and what the key buys per leg."""

from __future__ import annotations

import json

import pytest

from sim.runner import PD_COMPARE_POLICIES, PolicyConfig, make_setup, public, run_setup
from sim.transports.pool import port_salt, stable_ports, worker_urls
from sim.workload.scenario import Scenario, load_scenario

TINY_PD = Scenario(name="tiny-pd", seed=3, workers=5, prefill_workers=2, decode_workers=3,
                   prefill_kv_capacity_tokens=30_000, decode_kv_capacity_tokens=30_000, kv_bytes_per_token=1000,
                   transfer_bandwidth_gb_s=2.0, sessions=10, group_size=5, system_prompt_tokens=200,
                   task_prompt_tokens=40, max_context_tokens=4000, retry_rate=0.15,
                   turns={"dist": "uniform", "low": 3, "high": 8},
                   output_tokens={"dist": "lognormal", "median": 40, "sigma": 0.5, "min": 4},
                   tool_output_tokens={"dist": "lognormal", "median": 80, "sigma": 0.8, "min": 4},
                   tool_latency={"dist": "lognormal", "median": 1.0, "sigma": 0.8})
BOTH_MANUAL = PolicyConfig("manual", "min_load")


def without_transport(row: dict) -> dict:
    return {k: v for k, v in public(row).items() if k != "transport"}


@pytest.mark.parametrize("policy", PD_COMPARE_POLICIES, ids=lambda p: p.name)
def test_http_and_direct_agree_exactly_on_a_pd_pool(policy):
    setup = make_setup(TINY_PD, policy, True)
    urls = worker_urls(stable_ports(port_salt(setup), TINY_PD.workers))  # the block http takes (README "Limits")
    direct = run_setup(setup, "direct", worker_urls=urls)
    http = run_setup(setup, "http", worker_urls=urls)
    assert direct["errors"] == 0 and direct["requests"] > 40 and direct["transfer_bytes"] > 0
    assert json.dumps(without_transport(http)) == json.dumps(without_transport(direct))


@pytest.mark.parametrize("transport", ["direct", "http"])
def test_one_session_pinned_on_both_legs_with_an_unbounded_cache_reaches_the_pd_oracle_exactly(transport):
    """The prefill tree holds each prompt whole (its request is cut to the one token it samples), the PD oracle
    holds prompts: a pinned session's next prompt finds exactly its previous prompt in both."""
    s = TINY_PD.replace(sessions=1, group_size=1, prefill_kv_capacity_tokens=None, decode_kv_capacity_tokens=None,
                        retry_rate=0.0)
    seen: list = []
    row = run_setup(make_setup(s, BOTH_MANUAL, True), transport, on_request=seen.append)
    assert row["errors"] == 0 and len(seen) >= 3
    assert [r.cached_tokens for r in seen] == [r.oracle_cached for r in seen]
    assert row["kv_reuse"] == row["oracle_reuse"] > 0.3


def test_transfer_bytes_are_whole_prompts_with_the_decode_radix_cache_off_and_shrink_with_it_on():
    seen_off: list = []
    seen_on: list = []
    off = run_setup(make_setup(TINY_PD, BOTH_MANUAL, True), "direct", on_request=seen_off.append)
    on = run_setup(make_setup(TINY_PD.replace(decode_radix_cache=True), BOTH_MANUAL, True), "direct",
                   on_request=seen_on.append)
    assert off["errors"] == on["errors"] == 0
    assert all(r.transfer_bytes == r.prompt_tokens * 1000 and r.decode_prefix_tokens == 0 for r in seen_off)
    assert all(r.transfer_bytes == (r.prompt_tokens - r.decode_prefix_tokens) * 1000 for r in seen_on)
    assert off["decode_kv_reuse"] == 0.0 < on["decode_kv_reuse"]  # the decode pin pays only with its cache on
    assert on["transfer_bytes"] < off["transfer_bytes"] == sum(r.prompt_tokens for r in seen_off) * 1000


def test_the_key_pins_the_prefill_leg_and_without_it_reuse_falls():
    on = run_setup(make_setup(TINY_PD, BOTH_MANUAL, True), "direct")
    off = run_setup(make_setup(TINY_PD, PolicyConfig("manual", "random"), False), "direct")
    assert on["stickiness"] == on["decode_stickiness"] == 1.0
    assert on["kv_reuse"] > off["kv_reuse"]
    branches = on["gateway_branches"]["manual"]
    assert sum(branches.values()) == 2 * (on["requests"] + on["gateway_retries"])  # one event per leg


def test_decode_offload_to_a_shared_l3_lifts_the_ceiling_to_prompts_and_answers():
    """With decode offload, answers reach the pool's L3, where a later prefill can find them: the ceiling is then
    the co-located one (prompts and answers), not the prompt-only one."""
    assert load_scenario("pd").prompt_only_ceiling and not load_scenario("pd-hicache").prompt_only_ceiling
    offload = TINY_PD.replace(page_size=16, enable_hierarchical_cache=True, hicache_storage_backend="mooncake",
                              disaggregation_decode_enable_offload_kvcache=True)
    plain = run_setup(make_setup(TINY_PD, BOTH_MANUAL, True), "direct")
    lifted = run_setup(make_setup(offload, BOTH_MANUAL, True), "direct")
    assert plain["oracle_prompt_only"] is True and lifted["oracle_prompt_only"] is False
    assert lifted["errors"] == 0 and lifted["oracle_reuse"] > plain["oracle_reuse"]
