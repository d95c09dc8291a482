"""A PD pool's workers and gateway flags: prefill workers first (p0, p1, ...), then decode (d0, ...), each role with
its own profile and KV capacity and SGLang's PD parameters; the gateway in PD mode with each prefill's bootstrap
port, each leg with its policy. A co-located pool is as before."""

from __future__ import annotations

import pytest

from mock_gateway.config import parse_args
from sim.commands.common import check_gateway_flags
from sim.engine.types import WorkerConfig
from sim.profiles.catalog import load_profile
from sim.runner import COLOCATED, PD_COMPARE_POLICIES, PolicyConfig, colocated_setup, make_setup
from sim.transports.pool import bootstrap_ports, gateway_argv, stable_ports, worker_configs, worker_urls
from sim.workload.scenario import Scenario, load_scenario

GLM = "glm-4.7-flash-h200-tp1"
SMALL = "llama-3.1-8b-h100-tp1"


def pd_scenario(**changes) -> Scenario:
    base = dict(workers=5, prefill_workers=2, decode_workers=3, prefill_profile=GLM, prefill_kv_capacity_tokens=1000,
                decode_kv_capacity_tokens=None, decode_radix_cache=True, num_reserved_decode_tokens=256,
                transfer_bandwidth_gb_s=40.0, slowdown=(1.0, 2.0, 1.0, 1.0, 3.0))
    return Scenario(**{**base, **changes})


def test_a_pd_pool_is_its_prefill_workers_then_its_decode_workers():
    configs = worker_configs(pd_scenario())
    assert [c.name for c in configs] == ["p0", "p1", "d0", "d1", "d2"]
    assert [c.disaggregation_mode for c in configs] == ["prefill"] * 2 + ["decode"] * 3
    assert [c.kv_capacity_tokens for c in configs] == [1000, 1000, None, None, None]
    assert [c.slowdown for c in configs] == [1.0, 2.0, 1.0, 1.0, 3.0]  # slowdown entry i: pool index i
    assert {(c.engine, c.decode_radix_cache, c.num_reserved_decode_tokens, c.transfer_bandwidth) for c in configs} \
        == {("iteration", True, 256, 40e9)}


def test_each_role_runs_its_profile_and_its_kv_bytes_per_token():
    prefill, decode = worker_configs(pd_scenario())[1:3]
    glm = load_profile(GLM)
    assert prefill.latency == glm.latency_model() and prefill.request_overhead == glm.request_overhead
    assert prefill.kv_bytes_per_token == glm.kv_bytes_per_token == 54_144
    assert decode.latency == WorkerConfig().latency and decode.kv_bytes_per_token == WorkerConfig().kv_bytes_per_token
    explicit = worker_configs(pd_scenario(kv_bytes_per_token=1234))
    assert {c.kv_bytes_per_token for c in explicit} == {1234}


def test_the_pd_scenario_sends_54144_bytes_per_token_from_every_worker():
    assert {c.kv_bytes_per_token for c in worker_configs(load_scenario("pd"))} == {54_144}


def test_a_colocated_pool_is_unchanged():
    s = Scenario(workers=3, profile=SMALL, kv_capacity_tokens=777, slowdown=(1.0, 2.0))
    configs = worker_configs(s)
    p = load_profile(SMALL)
    assert configs == [WorkerConfig(name=f"w{i}", kv_capacity_tokens=777, latency=p.latency_model(),
                                    slowdown=(1.0, 2.0, 1.0)[i], engine="iteration", scheduler=p.scheduler_config(),
                                    request_overhead=p.request_overhead) for i in range(3)]
    assert worker_configs(load_scenario("pd").colocated()) == [
        WorkerConfig(name=f"w{i}", kv_capacity_tokens=c.kv_capacity_tokens, latency=c.latency, engine="iteration",
                     scheduler=c.scheduler, request_overhead=c.request_overhead)
        for i, c in enumerate(worker_configs(load_scenario("pd")))]


def test_the_gateway_runs_in_pd_mode_with_each_prefill_bootstrap_port():
    s = pd_scenario()
    urls = worker_urls(stable_ports("pd-test", s.workers, check=False))
    setup = make_setup(s, PolicyConfig("manual", "min_load", decode_policy="round_robin"), True, seed=4)
    ports = bootstrap_ports(s, urls)
    last = int(urls[-1].rsplit(":", 1)[1])
    assert ports == [last + 1, last + 2]  # after the workers' block, in prefill order
    cfg = parse_args(gateway_argv(setup, urls))
    assert cfg.pd_disaggregation and not cfg.worker_urls and cfg.seed == 4
    assert cfg.prefill_urls == list(zip(urls[:2], ports, strict=True)) and cfg.decode_urls == urls[2:]
    assert (cfg.leg_policy("prefill"), cfg.leg_policy("decode"), cfg.assignment_mode) == \
        ("manual", "round_robin", "min_load")


def test_a_colocated_gateway_keeps_its_flags():
    s = Scenario(workers=2)
    urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    setup = make_setup(s, PolicyConfig("manual", "min_load"), True, seed=1)
    assert gateway_argv(setup, urls) == ["--worker-urls", *urls, "--seed", "1", "--policy", "manual",
                                         "--assignment-mode", "min_load"]
    assert bootstrap_ports(s, urls) == [] and "pool" not in setup.extra


@pytest.mark.parametrize("policy", PD_COMPARE_POLICIES, ids=lambda p: p.name)
def test_every_pd_compare_configuration_passes_the_gateways_own_flag_check(policy):
    setup = make_setup(load_scenario("pd"), policy, True)
    assert check_gateway_flags([setup]) == []
    assert setup.extra["pool"] == "pd"
    assert (setup.extra["prefill_policy"], setup.extra["decode_policy"]) == \
        (policy.policy, policy.decode_policy or policy.policy)


def test_the_colocated_baseline_is_labelled_and_has_no_pd_flags():
    setup = colocated_setup(load_scenario("pd"), PolicyConfig("manual", "min_load"), False)
    assert not setup.scenario.pd and setup.scenario.workers == 8
    assert setup.label == "colocated manual/min_load key=off" and setup.extra["pool"] == COLOCATED
    assert "--pd-disaggregation" not in setup.gateway_args and check_gateway_flags([setup]) == []
