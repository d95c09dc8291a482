"""bounded_load (testbed extension): consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam).

Specification: a worker takes a key only while its load without that key is under
``ceil((1 + eps) * average)`` (the average counts the item being placed); a key keeps its worker while that
worker stays under the bound; otherwise it walks SMG's ring clockwise from the key's position.
"""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mock_gateway.config import GatewayFlagError, parse_args
from mock_gateway.policies.base import RouteInput
from mock_gateway.policies.testbed.bounded_load import load_bound
from mock_gateway.testing import chat, make_core, sample, urls

KEYS = [f"session-{i}" for i in range(12)]


def route(core, key=None, now=None, text="hello", max_tokens=16):
    h = {"x-smg-routing-key": key} if key is not None else {}
    return core.select("chat", h, chat(text, max_tokens=max_tokens), now=now)


def branch(core, name):
    return sample(core, "smg_bounded_load_policy_branch_total", branch=name)


def test_load_bound_is_the_ceiling_of_one_plus_eps_times_the_average_with_the_item():
    assert load_bound([0, 0, 0, 0], 1, 0.25) == 1  # ceil(1.25 * 1 / 4)
    assert load_bound([4, 4, 4, 3], 1, 0.25) == 5  # ceil(1.25 * 16 / 4)
    assert load_bound([10, 0], 2, 0.0) == 6
    assert load_bound([1, 1, 1], 0, 0.0) == 1  # exact averages are not pushed up by float noise


def test_unloaded_keys_go_to_their_ring_owner_as_consistent_hashing_does():
    bl = make_core("--policy", "bounded_load", workers=5)
    ch = make_core("--policy", "consistent_hashing", workers=5)
    for k in KEYS:
        d = route(bl, k)
        assert d.url == route(ch, k).url and d.branch == "home"
        bl.finish(bl.begin(d))  # released at once: the next key sees no load
    assert branch(bl, "home") == len(KEYS)


def test_a_full_worker_is_walked_past_and_the_key_stays_where_it_landed():
    core = make_core("--policy", "bounded_load", "--bounded-load-epsilon", "0", workers=3)
    home = route(core, "k").url
    core.registry.begin(home, "other")  # loads (1, 0, 0), bound ceil((1 + 0) * 2 / 3) = 1: home is at the bound
    moved = route(core, "k")
    assert moved.url != home and moved.branch == "walked"
    core.begin(moved)
    core.registry.end(home, "other")
    stay = route(core, "k")  # its new worker is still under the bound: the key keeps it
    assert (stay.url, stay.branch) == (moved.url, "hit")


ops = st.lists(
    st.one_of(
        st.tuples(st.just("req"), st.sampled_from(KEYS[:5]), st.integers(1, 400)),
        st.tuples(st.just("fin"), st.integers(0, 50), st.just(0)),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=40, deadline=None)
@given(
    ops=ops,
    eps=st.sampled_from([0.0, 0.1, 0.25, 1.0]),
    n=st.integers(2, 5),
    measure=st.sampled_from(["requests", "kv"]),
)
def test_no_worker_takes_a_key_at_or_above_the_bound_and_keys_keep_workers_under_it(ops, eps, n, measure):
    core = make_core(
        "--policy", "bounded_load", "--bounded-load-epsilon", str(eps), "--bounded-load-measure", measure, workers=n
    )
    pol = core.policy
    open_tickets = []
    pins: dict[str, str] = {}
    for now, (op, a, b) in enumerate(ops):
        if op == "fin":
            if open_tickets:
                core.finish(open_tickets.pop(a % len(open_tickets)), now=now)
            continue
        key, words = a, b
        text = " ".join(["w"] * words)
        pol.kv.expire(now)
        workers = list(core.registry)
        if measure == "requests":
            loads = {w.url: w.load - w.key_load.get(key, 0) for w in workers}
            item = 1
        else:
            loads = {w.url: pol.kv.working_set(w.url) - pol.kv.own(key, w.url) for w in workers}
            item = words + 16
        bound = math.ceil((1 + eps) * (sum(loads.values()) + item) / n - 1e-9)
        d = route(core, key, now=now, text=text)
        assert d.url in loads and loads[d.url] < bound, (loads, bound, d)
        if key in pins and loads[pins[key]] < bound:
            assert d.url == pins[key] and d.branch == "hit"
        pins[key] = d.url
        open_tickets.append(core.begin(d, now=now))


def test_requests_without_a_key_go_to_the_least_loaded_worker():
    core = make_core("--policy", "bounded_load", workers=3)
    d1 = route(core)
    assert d1.branch == "no_routing_id"
    core.begin(d1)
    d2 = route(core)
    assert d2.url != d1.url


def test_kv_measure_counts_the_projected_context_of_live_keys():
    core = make_core(
        "--policy", "bounded_load", "--bounded-load-measure", "kv", "--session-kv-idle-secs", "10", workers=2
    )
    d = route(core, "a", now=0, text="one two three", max_tokens=7)
    assert core.policy.kv.working_set(d.url) == 3 + 7
    route(core, "a", now=5, text="one two three four five", max_tokens=5)  # the key's context is replaced
    assert core.policy.kv.working_set(d.url) == 10
    route(core, "b", now=20, text="x", max_tokens=1)  # "a" idle for 15 s > 10 s: no longer live
    assert core.policy.kv.own("a", d.url) == 0


def test_idle_pins_are_evicted():
    core = make_core("--policy", "bounded_load", "--max-idle-secs", "5", "--eviction-interval-secs", "1", workers=2)
    route(core, "k", now=0)
    assert "k" in core.policy.pins
    core.advance(1)
    core.advance(10)
    assert "k" not in core.policy.pins


def test_no_available_worker_means_no_choice():
    core = make_core("--policy", "bounded_load", workers=urls(0))
    req = RouteInput("chat", {}, chat(), None, "hello", None, "k")
    assert core.policy.select([], req).url is None
    assert branch(core, "no_healthy_workers") == 1


def test_flags_parse_and_an_unknown_measure_is_refused():
    cfg = parse_args(["--policy", "bounded_load", "--bounded-load-epsilon", "0.5", "--bounded-load-measure", "kv"])
    assert (cfg.policy, cfg.bounded_load_epsilon, cfg.bounded_load_measure) == ("bounded_load", 0.5, "kv")
    with pytest.raises(GatewayFlagError, match="--bounded-load-measure: invalid choice: 'tokens'"):
        parse_args(["--policy", "bounded_load", "--bounded-load-measure", "tokens"])
