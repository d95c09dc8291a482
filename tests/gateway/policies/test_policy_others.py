"""round_robin, random, power_of_two, least_load, prefix_hash as the spec gives them."""

import struct

import xxhash
from hypothesis import given
from hypothesis import strategies as st

from mock_gateway.core import Decision
from mock_gateway.ring import HashRing
from mock_gateway.testing import chat, make_core, sample, urls

W = urls(3)
RING = HashRing(W)


def route(core, text="hi", headers=None, now=None):
    return core.select("chat", headers or {}, chat(text), now=now)


def load(core, url, n):
    for _ in range(n):
        core.begin(Decision(url, "chat", core.config.policy))


def test_round_robin_cycles_in_registration_order_over_healthy_workers():
    core = make_core("--policy", "round_robin", "--health-failure-threshold", "1", workers=[W[2], W[0], W[1]])
    assert [route(core).url for _ in range(4)] == [W[2], W[0], W[1], W[2]]
    core.health_result(W[0], False, 1)
    assert [route(core).url for _ in range(2)] == [W[2], W[1]]  # counter 4, 5 over [W[2], W[1]]


def test_random_is_uniform_enough_and_seeded():
    a = [route(make_core("--policy", "random", seed=7)).url for _ in range(1)]
    core1, core2 = make_core("--policy", "random", seed=7), make_core("--policy", "random", seed=7)
    seq1 = [route(core1).url for _ in range(60)]
    assert seq1 == [route(core2).url for _ in range(60)]
    assert set(seq1) == set(W) and a[0] in W


def test_power_of_two_picks_the_lower_in_flight_of_two_distinct():
    core = make_core("--policy", "power_of_two", workers=2)
    load(core, W[0], 3)
    assert all(route(core).url == W[1] for _ in range(10))


def test_power_of_two_requests_metric_compares_in_flight():
    core = make_core("--policy", "power_of_two", "--power-of-two-load-metric", "requests", workers=2)
    load(core, W[1], 1)
    assert route(core).url == W[0]


def test_least_load_avoids_a_worker_reporting_many_running_requests():
    core = make_core("--policy", "least_load")
    for u in core.due_polls(0.0):
        core.record_load(u, {"loads": [{"num_running_reqs": 50 if u == W[0] else 0}]}, 0.0)
    assert all(route(core, now=1.0).url != W[0] for _ in range(20))


def test_least_load_dark_fleet_is_join_shortest_queue():
    core = make_core("--policy", "least_load")
    load(core, W[0], 2)
    load(core, W[1], 1)
    assert route(core).url == W[2]


def test_least_load_partial_reports_score_silent_workers_from_the_best_peer():
    core = make_core("--policy", "least_load")
    core.record_load(W[0], {"loads": [{"num_running_reqs": 0}]}, 0.0)
    load(core, W[1], 1)
    load(core, W[2], 1)
    # W0 scores 0; silent W1/W2 score 0 + 1 * 1024 / 2000
    assert route(core, now=0.0).url == W[0]


def ph_branch(core, name):
    return sample(core, "smg_prefix_hash_policy_branch_total", branch=name)


@given(st.text(min_size=1, max_size=40))
def test_prefix_hash_key_goes_to_the_xxh3_ring_slot(key):
    core = make_core("--policy", "prefix_hash")
    d = route(core, headers={"x-smg-routing-key": key})
    assert (d.url, d.branch) == (RING.lookup(format(xxhash.xxh3_64_intdigest(key.encode()), "016x")), "ring_hit")


def test_prefix_hash_hashes_the_first_1024_chars_or_256_tokens():
    core = make_core("--policy", "prefix_hash")
    text = "z" * 2000
    d = route(core, text)
    assert d.url == RING.lookup(format(xxhash.xxh3_64_intdigest(("z" * 1024).encode()), "016x"))
    ids = list(range(300))
    d = core.select("generate", {}, {"input_ids": ids})
    assert d.url == RING.lookup(format(xxhash.xxh3_64_intdigest(struct.pack("<256I", *ids[:256])), "016x"))


def test_prefix_hash_load_balance_walk_and_no_routing_key():
    core = make_core("--policy", "prefix_hash")
    target = route(core, headers={"x-smg-routing-key": "k"}).url
    load(core, target, 20)  # avg = 21 / 3 = 7; limit = max(8.75, 17) < 20
    d = route(core, headers={"x-smg-routing-key": "k"})
    assert d.branch == "load_balance_walk" and d.url != target
    d = core.select("generate", {}, {"text": ""})
    assert d.branch == "no_routing_key" and d.url != target
    assert ph_branch(core, "ring_hit") == 1
