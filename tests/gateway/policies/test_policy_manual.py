"""manual: every branch, assignment modes, recovery to the first worker, idle eviction, key validity."""

from hypothesis import given
from hypothesis import strategies as st

from mock_gateway.testing import chat, make_core, sample, urls

W = urls(3)


def route(core, key=None, now=None, headers=None, **body):
    h = dict(headers or {})
    if key is not None:
        h["x-smg-routing-key"] = key
    return core.select("chat", h, chat(**body), now=now)


def branch(core, name):
    return sample(core, "smg_manual_policy_branch_total", branch=name)


def test_vacant_then_occupied_hit_pins_the_key():
    core = make_core("--policy", "manual")
    first = route(core, "k")
    assert first.branch == "vacant" and first.key == "k"
    for _ in range(5):
        d = route(core, "k")
        assert (d.url, d.branch) == (first.url, "occupied_hit")
    assert branch(core, "vacant") == 1 and branch(core, "occupied_hit") == 5
    assert sample(core, "smg_manual_policy_cache_entries") == 1


def test_no_routing_id_is_assigned_and_not_pinned():
    core = make_core("--policy", "manual")
    d = route(core)
    assert d.branch == "no_routing_id" and d.url in W and d.key is None
    assert core.policy.entries == {}


@given(st.text(min_size=129, max_size=140, alphabet="k"))
def test_overlong_key_counts_as_absent(key):
    core = make_core("--policy", "manual")
    assert route(core, key).branch == "no_routing_id"


@given(st.text(min_size=1, max_size=32).filter(lambda s: len(s.encode()) <= 128 and "\x00" not in s))
def test_any_nonempty_utf8_key_up_to_128_bytes_is_pinned(key):
    core = make_core("--policy", "manual")
    assert route(core, key).branch == "vacant"
    assert route(core, key).branch == "occupied_hit"


def test_empty_key_is_absent_and_128_bytes_is_valid():
    core = make_core("--policy", "manual")
    assert route(core, "").branch == "no_routing_id"
    assert route(core, "k" * 128).branch == "vacant"


def test_occupied_miss_then_return_to_the_first_worker_after_recovery():
    core = make_core("--policy", "manual", "--health-failure-threshold", "1", "--health-success-threshold", "1")
    first = route(core, "k").url
    core.health_result(first, False, now=1)
    miss = route(core, "k")
    assert miss.branch == "occupied_miss" and miss.url != first
    assert route(core, "k").url == miss.url  # the second candidate holds while the first is down
    assert core.policy.entries["k"].candidates == [first, miss.url]
    core.health_result(first, True, now=2)
    back = route(core, "k")
    assert (back.url, back.branch) == (first, "occupied_hit")


def test_candidate_list_keeps_at_most_two_newest():
    core = make_core("--policy", "manual", "--health-failure-threshold", "1", workers=4)
    a = route(core, "k").url
    core.health_result(a, False, 1)
    b = route(core, "k").url
    core.health_result(b, False, 1)
    c = route(core, "k")
    assert c.branch == "occupied_miss"
    assert core.policy.entries["k"].candidates == [b, c.url]


def test_no_healthy_workers():
    core = make_core("--policy", "manual", "--health-failure-threshold", "1")
    for u in W:
        core.health_result(u, False, 1)
    d = route(core, "k")
    assert d.url is None and d.status == 503 and d.error_code == "no_available_workers"
    assert branch(core, "no_healthy_workers") == 1


def test_min_load_uses_the_gateways_in_flight_count():
    core = make_core("--policy", "manual", "--assignment-mode", "min_load")
    tickets = [core.begin(route(core, f"k{i}")) for i in range(6)]
    assert sorted(core.registry.get(u).load for u in W) == [2, 2, 2]
    for t in tickets:
        core.finish(t)
    assert [core.registry.get(u).load for u in W] == [0, 0, 0]


def test_min_group_counts_distinct_keys_in_flight():
    core = make_core("--policy", "manual", "--assignment-mode", "min_group")
    a = route(core, "A")
    for _ in range(3):
        core.begin(route(core, "A"))
    b = route(core, "B")
    core.begin(b)
    c = route(core, "C")
    core.begin(c)
    assert len({a.url, b.url, c.url}) == 3  # B and C avoided A's worker although it has 3 requests
    assert sample(core, "smg_worker_routing_keys_active", worker=a.url) == 1


def test_plain_manual_has_no_in_flight_cap_and_no_lineage_stripping():
    core = make_core("--policy", "manual")
    first = route(core, "conv_t2")
    for _ in range(4):
        core.begin(route(core, "conv_t2"))
    assert route(core, "conv_t2").url == first.url
    assert route(core, "conv_t3").branch == "vacant"
    assert route(core, None, rid="conv_t2").branch == "no_routing_id"  # rid is ignored without the override


def test_configured_headers_share_one_key_space_in_order():
    core = make_core("--policy", "manual", "--routing-key-headers", "x-session-id", "x-smg-routing-key")
    d = route(core, headers={"x-session-id": "zzz"})
    assert d.branch == "vacant"
    assert route(core, "zzz").branch == "occupied_hit"
    both = route(core, headers={"x-session-id": "", "x-smg-routing-key": "zzz"})
    assert both.branch == "occupied_hit"


def test_idle_keys_are_evicted_on_the_clock_and_the_gauge_stays_stale():
    core = make_core("--policy", "manual", "--max-idle-secs", "2", "--eviction-interval-secs", "1")
    for k in "abcd":
        route(core, k, now=0.0)
    core.advance(0.9)
    assert len(core.policy.entries) == 4
    core.advance(3.0)
    assert core.policy.entries == {}
    assert sample(core, "smg_manual_policy_cache_entries") == 4
    assert route(core, "a", now=3.0).branch == "vacant"
    assert sample(core, "smg_manual_policy_cache_entries") == 1


def test_access_refreshes_idle_time():
    core = make_core("--policy", "manual", "--max-idle-secs", "2", "--eviction-interval-secs", "1")
    route(core, "a", now=0.0)
    for t in (1.0, 2.0, 3.0, 4.0):
        core.advance(t)
        assert route(core, "a", now=t).branch == "occupied_hit"


def test_zero_interval_disables_eviction():
    core = make_core("--policy", "manual", "--max-idle-secs", "1", "--eviction-interval-secs", "0")
    route(core, "a", now=0.0)
    core.advance(100.0)
    assert "a" in core.policy.entries


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.booleans()), max_size=30), st.integers(0, 1000))
def test_a_key_always_goes_to_its_first_healthy_candidate(ops, seed):
    """Property: with workers going up and down, a keyed request lands on the first healthy pinned worker."""
    core = make_core(
        "--policy", "manual", "--health-failure-threshold", "1", "--health-success-threshold", "1", seed=seed
    )
    for i, (key, flip) in enumerate(ops):
        if flip:
            u = W[i % 3]
            core.health_result(u, not core.registry.get(u).ready, i)
        healthy = [u for u in W if core.registry.get(u).ready]
        before = list(core.policy.entries.get(key).candidates) if key in core.policy.entries else None
        d = route(core, key)
        if not healthy:
            assert d.url is None
            continue
        assert d.url in healthy
        pinned = [u for u in (before or []) if u in healthy]
        if pinned:
            assert (d.url, d.branch) == (pinned[0], "occupied_hit")
        else:
            assert d.branch == ("occupied_miss" if before else "vacant")
