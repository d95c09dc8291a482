"""--routing-key-override: header before rid, lineage stripping, the per-key in-flight cap, delegate."""

import pytest

from mock_gateway.routing_key import strip_lineage
from mock_gateway.testing import chat, make_core, sample, urls

W = urls(3)


def route(core, key=None, **body):
    h = {"x-smg-routing-key": key} if key is not None else {}
    return core.select("chat", h, chat(**body))


@pytest.mark.parametrize(
    ("raw", "stripped"),
    [
        ("conv_t2_r1", "conv"),
        ("conv_t2", "conv"),
        ("conv_r3", "conv"),
        ("conv", "conv"),
        ("_t1", "_t1"),
        ("a_t1_t2", "a_t1"),
        ("a_r1_r2", "a_r1"),
        ("conv_tx", "conv_tx"),
    ],
)
def test_strip_lineage(raw, stripped):
    assert strip_lineage(raw) == stripped


def test_header_beats_rid_and_sources_are_counted():
    core = make_core("--policy", "round_robin", "--routing-key-override")
    d = route(core, "other", rid="conv_t6")
    assert d.key == "other" and d.branch == "vacant"
    assert sample(core, "smg_routing_key_source_total", source="header") == 1
    d2 = route(core, None, rid="conv_t7_r2")
    assert d2.key == "conv" and d2.branch == "vacant"
    assert route(core, None, rid="conv_t8").branch == "occupied_hit"
    assert sample(core, "smg_routing_key_source_total", source="rid") == 2


def test_unkeyed_requests_bypass_the_sticky_layer():
    core = make_core("--policy", "round_robin", "--routing-key-override")
    got = [route(core).url for _ in range(4)]
    assert got == [W[0], W[1], W[2], W[0]]
    assert sample(core, "smg_manual_policy_branch_total", branch="no_routing_id") == 0


def test_cap_respill_after_two_in_flight_for_the_key():
    """The spec's live trace: vacant->W2, hit W2, cap_respill->W3 (re-pinned), hit W3, cap_respill->W1."""
    core = make_core("--policy", "round_robin", "--routing-key-override")
    core.policy.inner.counter = 1  # round robin's next pick is W2
    seq = []
    for _ in range(5):
        d = route(core, "s")
        core.begin(d)
        seq.append((d.url, d.branch))
    assert seq == [
        (W[1], "vacant"),
        (W[1], "occupied_hit"),
        (W[2], "cap_respill"),
        (W[2], "occupied_hit"),
        (W[0], "cap_respill"),
    ]
    assert core.policy.sticky.entries["s"].candidates[0] == W[0]


def test_cap_respill_does_not_move_the_pin_to_a_worker_at_the_cap():
    core = make_core("--policy", "random", "--routing-key-override", "--assignment-mode", "min_load", workers=1)
    for _ in range(2):
        core.begin(route(core, "s"))
    d = route(core, "s")
    assert d.branch == "cap_respill" and d.url == W[0]


def test_delegate_pins_the_wrapped_policys_choice():
    core = make_core("--policy", "cache_aware", "--routing-key-override")
    same = "the very same long prompt " * 4
    placed = {route(core, f"key{i}", text=same).url for i in range(10)}
    assert len(placed) == 1  # cache_aware sent every new key to the holder, and the keys were pinned there
    assert sample(core, "smg_manual_policy_branch_total", branch="vacant") == 10
    assert sample(core, "smg_cache_aware_policy_branch_total", branch="tree_match") == 9


def test_random_assignment_mode_overrides_delegate():
    core = make_core("--policy", "cache_aware", "--routing-key-override", "--assignment-mode", "random", seed=3)
    same = "the very same long prompt " * 4
    placed = {route(core, f"key{i}", text=same).url for i in range(30)}
    assert len(placed) == 3
    assert sample(core, "smg_cache_aware_policy_branch_total", branch="tree_match") == 0


def test_manual_and_consistent_hashing_are_not_wrapped():
    core = make_core("--policy", "consistent_hashing", "--routing-key-override")
    assert route(core, None, rid="conv_t1").branch == "random_fallback"
    assert sample(core, "smg_routing_key_source_total", source="rid") == 0


def test_manual_with_override_keys_by_stripped_rid_but_keeps_header_keys_raw_and_has_no_cap():
    """Observed on 1.13.0: rid conv_t1 then conv_t2 -> vacant, occupied_hit; headers zz_t2, zz_t3 -> two
    vacant; header beats rid; four concurrent requests of one key all go to its worker; no source counter."""
    core = make_core("--policy", "manual", "--routing-key-override")
    assert [route(core, None, rid=r).branch for r in ("conv_t1", "conv_t2")] == ["vacant", "occupied_hit"]
    assert [route(core, k).branch for k in ("zz_t2", "zz_t3")] == ["vacant", "vacant"]
    assert route(core, "other", rid="conv_t6").key == "other"
    first = route(core, None, rid="cc_t1")
    for _ in range(4):
        d = route(core, None, rid="cc_t1")
        core.begin(d)
        assert (d.url, d.branch) == (first.url, "occupied_hit")
    assert sample(core, "smg_routing_key_source_total", source="rid") == 0


def test_overlong_rid_is_ignored():
    core = make_core("--policy", "round_robin", "--routing-key-override")
    route(core, None, rid="r" * 129)
    assert sample(core, "smg_routing_key_source_total", source="rid") == 0


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ops = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=40)


@given(ops, st.sampled_from(["round_robin", "random", "least_load", "cache_aware"]), st.integers(0, 100))
def test_override_invariants(seq, policy, seed):
    """Property: a keyed request goes to the key's first healthy candidate unless the key has 2 in flight
    there (cap_respill); the pin only moves to a worker under the cap; finishing releases per-key counts."""
    core = make_core("--policy", policy, "--routing-key-override", seed=seed)
    open_tickets = []
    for key, finish_one in seq:
        if finish_one and open_tickets:
            core.finish(open_tickets.pop(0))
        entry = core.policy.sticky.entries.get(key)
        before = list(entry.candidates) if entry else None
        d = route(core, key)
        assert d.url in W and d.key == key
        if before is None:
            assert d.branch == "vacant"
        else:
            pinned = before[0]
            in_flight = core.registry.get(pinned).key_load.get(key, 0)
            if in_flight >= 2:
                assert d.branch == "cap_respill"
                new_front = core.policy.sticky.entries[key].candidates[0]
                if new_front != pinned:
                    assert new_front == d.url and core.registry.get(d.url).key_load.get(key, 0) < 2
            else:
                assert (d.url, d.branch) == (pinned, "occupied_hit")
        open_tickets.append(core.begin(d))
    for t in open_tickets:
        core.finish(t)
    assert all(core.registry.get(u).key_load == {} and core.registry.get(u).load == 0 for u in W)
