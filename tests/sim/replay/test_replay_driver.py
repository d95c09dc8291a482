"""The Mooncake driver's fast direct path gives what the full paths give: ``GatewayCore.select`` checking the
token ids itself, ``DirectGateway`` with ``WorkerCore.infer``, and real servers over loopback HTTP."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from mock_gateway.config import parse_args
from mock_gateway.core import GatewayCore
from mock_gateway.policies.factory import POLICY_BUILDERS
from session_server.upstream import UpstreamRequest
from sim.replay.driver import (
    MooncakeDirect,
    MooncakeHttp,
    Served,
    body_of,
    plan_items,
    replay_mooncake,
)
from sim.replay.mooncake import BlockCache, derive_keys, load_mooncake
from sim.replay.samples import sample_path
from sim.runner import PolicyConfig, make_setup, open_transport
from sim.transports.direct import DirectGateway
from sim.transports.pool import gateway_argv, worker_configs
from sim.worker.core import WorkerCore
from sim.workload.scenario import Scenario
from testbed_common import vtime

REQS = load_mooncake(sample_path("conversation"))[:40]
ITEMS = plan_items(REQS, derive_keys(REQS))
URLS = [f"http://127.0.0.1:{31000 + i}" for i in range(4)]
SCENARIO = Scenario(name="slice", workers=4, kv_capacity_tokens=None, arrival="rollout", engine="arrival")


def setup_for(policy: str, key: bool = True):
    return make_setup(SCENARIO, PolicyConfig(policy), key)


class ReferenceSender:
    """The unshortened direct path: ``DirectGateway`` (``GatewayCore.select``) and ``WorkerCore.infer``."""

    def __init__(self, setup: Any, urls: list[str]) -> None:
        self.cores = {u: WorkerCore(c, seed=setup.seed) for u, c in zip(urls, worker_configs(setup.scenario),
                                                                          strict=True)}
        self.workers = [c.name for c in self.cores.values()]
        self.gateway = DirectGateway(gateway_argv(setup, urls), self.cores)

    def send(self, r, prompt, ids, key) -> Served:
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["x-smg-routing-key"] = key
        resp = self.gateway(UpstreamRequest("POST", "generate", headers, json=body_of(r, list(ids))))
        if resp.status != 200:
            return Served(resp.status, resp.headers.get(vtime.HEADER_WORKER), error=str(resp.data))
        sim = resp.data[vtime.SIM_RESPONSE_FIELD]
        return Served(200, sim["worker"], sim["arrival"], sim["start"], sim["first_token"], sim["finish"],
                      sim["cached_tokens"], list(resp.data["output_ids"]))

    def gateway_metrics(self) -> str:
        return self.gateway.metrics_text()

    def close(self) -> None:
        pass


def records(result) -> list[tuple]:
    return [(r.session, r.turn, r.worker, r.arrival, r.start, r.first_token, r.finish, r.prompt_tokens,
             r.cached_tokens, r.output_tokens, r.eligible_tokens, r.oracle_cached, r.status, r.ok)
            for r in result.requests]


@pytest.mark.parametrize("policy", sorted(POLICY_BUILDERS))
def test_select_with_checked_tokens_decides_as_select_checking_them(policy):
    setup = setup_for(policy)
    cores = []
    for _ in range(2):
        c = GatewayCore(parse_args(gateway_argv(setup, URLS)), now=0.0)
        for u in URLS:
            c.add_worker(u, "mock-model")
        cores.append(c)
    blocks = BlockCache()
    for it in ITEMS:
        _, ids = blocks.request(it.request)
        body = body_of(it.request, ids)
        headers = {"x-smg-routing-key": it.key}
        now = it.request.timestamp
        decisions = []
        for i, c in enumerate(cores):
            c.advance(now)
            if i == 0:
                d = c.select("generate", headers, body, now=c.clock)
            else:
                d = c.select("generate", headers, body, now=c.clock, tokens=ids)
            decisions.append(dataclasses.astuple(d))
            t = c.begin(d)
            c.finish(t, virtual_finish=now + 5.0)
        assert decisions[0] == decisions[1]
    assert metric_lines(cores[0]) == metric_lines(cores[1])


def metric_lines(core: GatewayCore) -> list[str]:
    """The exposition without ``_created`` samples (wall-clock creation times)."""
    return [ln for ln in core.metrics.render().decode().splitlines() if "_created" not in ln]


@pytest.mark.parametrize("policy", ["cache_aware", "consistent_hashing", "random", "manual", "least_load"])
@pytest.mark.parametrize("key", [True, False])
def test_fast_direct_path_equals_direct_gateway_with_worker_cores(policy, key):
    setup = setup_for(policy, key)
    fast = replay_mooncake(ITEMS, MooncakeDirect(setup, URLS), key)
    ref_sender = ReferenceSender(setup, URLS)
    ref = replay_mooncake(ITEMS, ref_sender, key)
    assert records(fast) == records(ref)
    assert not any(r.error for r in fast.requests)
    assert fast.oracle.reuse == ref.oracle.reuse


def test_http_stack_gives_the_direct_results():
    items = ITEMS[:25]
    for policy in ("cache_aware", "random"):
        setup = setup_for(policy)
        with open_transport("http", setup) as tr:
            sender = MooncakeHttp(tr)
            try:
                over_http = replay_mooncake(items, sender, True)
            finally:
                sender.close()
            urls = list(tr.worker_urls)
        direct = replay_mooncake(items, MooncakeDirect(setup, urls), True)
        assert records(over_http) == records(direct)
        assert not any(r.error for r in direct.requests)


def test_bounded_kv_and_refusals_match_the_worker_core():
    """With 10k tokens of KV per worker, longer requests are refused (400) and the rest evict."""
    setup = setup_for("cache_aware")
    small = dataclasses.replace(setup, scenario=SCENARIO.replace(kv_capacity_tokens=10_000))
    fast = replay_mooncake(ITEMS, MooncakeDirect(small, URLS), True)
    ref = replay_mooncake(ITEMS, ReferenceSender(small, URLS), True)
    assert records(fast) == records(ref)
    refused = [r for r in fast.requests if not r.ok]
    assert refused and all(r.status == 400 and "KV tokens" in (r.error or "") for r in refused)
    assert any(r.ok for r in fast.requests)
