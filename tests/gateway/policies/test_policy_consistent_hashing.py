"""consistent_hashing: ring agreement, implicit keys, random fallback, target index, spill and return."""

from hypothesis import given
from hypothesis import strategies as st

from mock_gateway.ring import HashRing
from mock_gateway.testing import chat, make_core, sample, urls

W = urls(3)
RING = HashRing(W)


def route(core, headers):
    return core.select("chat", headers, chat())


def branch(core, name):
    return sample(core, "smg_consistent_hashing_policy_branch_total", branch=name)


@given(st.text(min_size=1, max_size=64).filter(lambda s: len(s.encode()) <= 128))
def test_a_key_goes_to_its_ring_owner(key):
    core = make_core("--policy", "consistent_hashing")
    d = route(core, {"x-smg-routing-key": key})
    assert (d.url, d.branch) == (RING.lookup(key), "routing_key_hit")


def test_implicit_keys_forwarded_for_then_cookie():
    core = make_core("--policy", "consistent_hashing")
    d = route(core, {"x-forwarded-for": "10.0.0.7", "cookie": "sid=1"})
    assert (d.url, d.branch) == (RING.lookup("10.0.0.7"), "implicit_key_hit")
    d = route(core, {"cookie": "sid=1"})
    assert (d.url, d.branch) == (RING.lookup("sid=1"), "implicit_key_hit")
    assert d.key is None
    d = route(core, {"x-forwarded-for": "", "cookie": "sid=1"})  # [E] an empty XFF does not fall through
    assert d.branch == "random_fallback"


def test_authorization_is_not_a_key_in_1_13_and_overlong_keys_fall_back_to_random():
    core = make_core("--policy", "consistent_hashing", seed=1)
    got = {route(core, {"authorization": "Bearer abc"}).url for _ in range(30)}
    got |= {route(core, {"x-smg-routing-key": "k" * 129}).url for _ in range(30)}
    assert got == set(W)
    assert branch(core, "random_fallback") == 60


def test_target_worker_index_in_registration_order():
    core = make_core("--policy", "consistent_hashing", workers=[W[0], W[2], W[1]])
    d = route(core, {"x-smg-target-worker": "1"})
    assert (d.url, d.branch) == (W[2], "target_worker_hit")
    for bad in ("3", "x", "-1"):
        d = route(core, {"x-smg-target-worker": bad})
        assert d.url is None and d.status == 503 and d.branch == "target_worker_miss"


def test_unhealthy_owner_spills_clockwise_and_keys_return():
    core = make_core(
        "--policy", "consistent_hashing", "--health-failure-threshold", "1", "--health-success-threshold", "1"
    )
    keys = [f"k{i}" for i in range(40)]
    owner = {k: route(core, {"x-smg-routing-key": k}).url for k in keys}
    core.health_result(W[0], False, 1)
    moved = {k: route(core, {"x-smg-routing-key": k}).url for k in keys}
    for k in keys:
        if owner[k] == W[0]:
            assert moved[k] == HashRing(W[1:]).lookup(k)
        else:
            assert moved[k] == owner[k]
    core.health_result(W[0], True, 2)
    assert {k: route(core, {"x-smg-routing-key": k}).url for k in keys} == owner


def test_no_healthy_workers():
    core = make_core("--policy", "consistent_hashing", "--health-failure-threshold", "1")
    for u in W:
        core.health_result(u, False, 1)
    assert route(core, {"x-smg-routing-key": "k"}).status == 503
    assert branch(core, "no_healthy_workers") == 1
