"""PD mode's pair selection in the gateway core: each leg among its own type, with its own policy (SMG's
``select_pd_pair``), manual pinning ``prefill:<key>`` and ``decode:<key>``, consistent_hashing walking one ring of
both types, and the bootstrap fields."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mock_gateway.core import ROOM_MASK
from mock_gateway.pd import PdTimes
from mock_gateway.request_path import Attempt, PollLoads, SendPair, request_path, run
from mock_gateway.ring import HashRing
from mock_gateway.testing import chat, make_pd_core, sample

KEYS = st.text(alphabet="abcdefghij0123456789-", min_size=1, max_size=12)
POLICIES = ["manual", "consistent_hashing", "round_robin", "random", "cache_aware", "power_of_two", "least_load",
            "prefix_hash"]


def pick(core, key=None, text="hello"):
    headers = {"x-smg-routing-key": key} if key is not None else {}
    d = core.select("chat", headers, chat(text))
    assert d.url is not None and d.decode is not None, d
    return d.url, d.decode.url


def types(core):
    return {w.url: w.worker_type for w in core.registry}


@settings(max_examples=30, deadline=None)
@given(policy=st.sampled_from(POLICIES), decode_policy=st.sampled_from([None, *POLICIES]),
       keys=st.lists(st.one_of(st.none(), KEYS), min_size=1, max_size=12),
       shape=st.tuples(st.integers(1, 3), st.integers(1, 3)))
def test_each_leg_picks_a_worker_of_its_own_type(policy, decode_policy, keys, shape):
    extra = ["--decode-policy", decode_policy] if decode_policy else []
    core = make_pd_core("--policy", policy, *extra, prefill=shape[0], decode=shape[1])
    kind = types(core)
    for key in keys:
        p, d = pick(core, key, text=f"turn {key}")
        assert (kind[p], kind[d]) == ("prefill", "decode")


@settings(max_examples=40, deadline=None)
@given(keys=st.lists(KEYS, min_size=1, max_size=10), repeats=st.integers(1, 3))
def test_manual_pins_each_leg_under_its_namespaced_key_with_one_branch_event_per_leg(keys, repeats):
    core = make_pd_core("--policy", "manual", prefill=3, decode=3, seed=1)
    first = {}
    for _ in range(repeats):
        for key in keys:
            pair = pick(core, key)
            assert first.setdefault(key, pair) == pair
    distinct = len(set(keys))
    requests = repeats * len(keys)
    assert sample(core, "smg_manual_policy_branch_total", branch="vacant") == 2 * distinct
    assert sample(core, "smg_manual_policy_branch_total", branch="occupied_hit") == 2 * (requests - distinct)
    prefill, decode = core.leg_policies["prefill"], core.leg_policies["decode"]
    assert set(prefill.entries) == {f"prefill:{k}" for k in keys}
    assert set(decode.entries) == {f"decode:{k}" for k in keys}


def test_manual_legs_are_assigned_independently():
    """Under the random assignment the two legs' workers are drawn apart: not every key lands on the same index."""
    core = make_pd_core("--policy", "manual", prefill=4, decode=4, seed=3)
    pairs = [pick(core, f"k{i}") for i in range(40)]
    index = {u: i for i, u in enumerate(w.url for w in core.registry if w.worker_type == "prefill")}
    index |= {u: i for i, u in enumerate(w.url for w in core.registry if w.worker_type == "decode")}
    assert any(index[p] != index[d] for p, d in pairs)


@settings(max_examples=40, deadline=None)
@given(key=KEYS, shape=st.tuples(st.integers(1, 4), st.integers(1, 4)), down=st.sets(st.integers(0, 7), max_size=3))
def test_consistent_hashing_walks_one_ring_of_both_types_to_the_first_healthy_worker_of_the_leg(key, shape, down):
    core = make_pd_core("--policy", "consistent_hashing", prefill=shape[0], decode=shape[1])
    all_urls = [w.url for w in core.registry]
    unhealthy = {all_urls[i] for i in down if i < len(all_urls)}
    for url in unhealthy:
        core.registry.get(url).status = "not_ready"
        core._not_ready.add(url)
    kind = types(core)
    ring = HashRing(all_urls)
    expected = [ring.lookup(key, lambda u, leg=leg: kind[u] == leg and u not in unhealthy)
                for leg in ("prefill", "decode")]
    d = core.select("chat", {"x-smg-routing-key": key}, chat())
    if None in expected:
        assert d.url is None and d.status == 503 and d.error_code == "server_selection_failed"
    else:
        assert (d.url, d.decode.url) == tuple(expected)
        assert sample(core, "smg_consistent_hashing_policy_branch_total", branch="routing_key_hit") == 2


def test_worker_selection_counts_each_leg_by_worker_type_and_its_policy():
    core = make_pd_core("--policy", "manual", "--decode-policy", "round_robin")
    for i in range(3):
        pick(core, f"k{i}")
    def selected(worker_type, policy):
        return sample(core, "smg_worker_selection_total", worker_type=worker_type, connection_mode="http",
                      model="fake-model", policy=policy)
    assert selected("prefill", "manual") == selected("decode", "round_robin") == 3
    assert sample(core, "smg_router_requests_total", router_type="http", backend_type="pd", connection_mode="http",
                  model="fake-model", endpoint="chat", streaming="false") == 3


@pytest.mark.parametrize("missing", ["prefill", "decode"])
def test_a_leg_without_available_workers_refuses_with_smgs_503(missing):
    core = make_pd_core("--policy", "round_robin", prefill=1, decode=1)
    url = next(w.url for w in core.registry if w.worker_type == missing)
    core.remove_worker(url)
    d = core.select("chat", {}, chat())
    assert (d.url, d.status, d.error_code) == (None, 503, "server_selection_failed")
    assert missing in d.message


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), port=st.one_of(st.none(), st.integers(1, 65535)))
def test_bootstrap_fields_name_the_prefill_host_and_port_with_a_seeded_room(seed, port):
    rooms = []
    for _ in range(2):
        core = make_pd_core("--policy", "random", prefill=1, decode=1, seed=seed, ports=[port])
        d = core.select("chat", {}, chat())
        fields = core.bootstrap(d)
        assert fields["bootstrap_host"] == "127.0.0.1"
        assert fields["bootstrap_port"] == port
        assert 0 <= fields["bootstrap_room"] <= ROOM_MASK
        rooms.append(fields["bootstrap_room"])
    assert rooms[0] == rooms[1]


def test_both_legs_stay_in_flight_until_the_decode_finishes_and_get_the_same_bootstrap_fields():
    core = make_pd_core("--policy", "round_robin", "--disable-health-check", prefill=1, decode=1)
    sent = []

    def perform(effect):
        if isinstance(effect, PollLoads):
            return [None] * len(effect.urls)
        assert isinstance(effect, SendPair)
        sent.append(effect)
        assert {w.url: w.load for w in core.registry} == {effect.prefill.url: 1, effect.decode.url: 1}
        return Attempt(200, "decode answer", virtual_finish=5.0, pd_times=PdTimes(2.0, 4.0))

    outcome = run(request_path(core, "chat", {}, chat(sim_time=1.0), 1.0, True, random.Random(0)), perform)
    assert outcome.response == "decode answer" and len(sent) == 1
    core.advance(4.9)
    assert sum(w.load for w in core.registry) == 2
    core.advance(5.0)
    assert sum(w.load for w in core.registry) == 0
    labels = {"backend_type": "pd", "model": "fake-model", "runtime": "sglang"}
    assert sample(core, "smg_pd_prefill_duration_seconds_sum", **labels) == 2.0
    assert sample(core, "smg_pd_ttft_seconds_sum", **labels) == 4.0


def test_a_failed_pair_is_retried_with_both_legs_picked_again():
    core = make_pd_core("--policy", "round_robin", "--disable-health-check", "--retry-max-retries", "3",
                        prefill=2, decode=2)
    pairs = []

    def perform(effect):
        if isinstance(effect, PollLoads):
            return [None] * len(effect.urls)
        if isinstance(effect, SendPair):
            pairs.append((effect.prefill.url, effect.decode.url))
            return Attempt(502 if len(pairs) < 3 else 200, "answer")
        return None

    outcome = run(request_path(core, "chat", {}, chat(), 0.0, False, random.Random(0)), perform)
    assert outcome.status == 200 and len(pairs) == 3
    assert sample(core, "smg_worker_selection_total", worker_type="prefill", connection_mode="http",
                  model="fake-model", policy="round_robin") == 3
    for worker_type in ("prefill", "decode"):
        assert sample(core, "smg_worker_retries_total", worker_type=worker_type, endpoint="chat") == 2
