"""manual --assignment-mode min_kv (testbed extension): KV-aware placement, re-pins with hysteresis.

Specification: a new key goes to the worker with the smallest projected KV working set (the sum of its live
keys' contexts); a key is re-pinned when its worker's working set would exceed capacity (to a worker with
headroom) or its worker is hot (to one that is not); a re-pinned key is not moved again within the cooldown.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from mock_gateway.policies.manual import ManualPolicy
from mock_gateway.policies.testbed.min_kv import MinKvAssignment, kv_capacity
from mock_gateway.policies.testbed.session_kv import SessionKV, context_tokens
from mock_gateway.testing import chat, make_core, sample
from mock_gateway.workers import Worker

KEYS = [f"s{i}" for i in range(6)]


def route(core, key=None, now=None, words=1, max_tokens=0, input_ids=None):
    h = {"x-smg-routing-key": key} if key is not None else {}
    body = chat(" ".join(["w"] * words), max_tokens=max_tokens)
    if input_ids is not None:
        body["input_ids"] = input_ids
    return core.select("chat", h, body, now=now)


def loads(cap):
    return {
        "loads": [
            {
                "dp_rank": 0,
                "num_running_reqs": 0,
                "num_waiting_reqs": 0,
                "token_usage": 0.0,
                "max_total_num_tokens": cap,
            }
        ]
    }


def test_min_kv_is_manual_with_the_kv_aware_assignment_and_other_modes_are_not():
    policy = make_core("--policy", "manual", "--assignment-mode", "min_kv").policy
    assert type(policy) is ManualPolicy and type(policy.assignment) is MinKvAssignment
    for mode in ("random", "min_load", "min_group", "delegate"):
        policy = make_core("--policy", "manual", "--assignment-mode", mode).policy
        assert type(policy) is ManualPolicy and not isinstance(policy.assignment, MinKvAssignment)


def test_context_is_input_ids_or_routing_text_tokens_plus_max_tokens():
    assert context_tokens({"input_ids": [1, 2, 3], "max_tokens": 5}, "ignored text") == 8
    assert context_tokens({"max_tokens": 2}, "three words here") == 5
    assert context_tokens({}, "") == 1  # never zero: a key always weighs something
    assert context_tokens({"max_tokens": True}, "a b") == 2  # a non-integer budget counts as none


def test_capacity_from_the_flag_else_the_polled_max_total_num_tokens_summed_over_ranks():
    w = Worker("u")
    assert kv_capacity(w, None) is None
    core = make_core("--policy", "manual", "--assignment-mode", "min_kv", workers=1)
    url = core.registry.urls()[0]
    two_ranks = {"loads": [loads(100)["loads"][0], {**loads(150)["loads"][0], "dp_rank": 1}]}
    core.record_load(url, two_ranks, now=0)
    assert kv_capacity(core.registry.get(url), None) == 250
    assert kv_capacity(core.registry.get(url), 64) == 64


def test_session_kv_counts_live_keys_only_and_replaces_a_keys_context():
    kv = SessionKV(live_secs=10)
    kv.touch("a", "w1", 100, now=0)
    kv.touch("b", "w1", 50, now=5)
    kv.touch("a", "w1", 120, now=6)
    assert (kv.working_set("w1"), kv.count("w1")) == (170, 2)
    kv.expire(15.5)  # b idle 10.5 s
    assert (kv.working_set("w1"), kv.count("w1"), kv.own("a", "w1")) == (120, 1, 120)
    kv.touch("a", "w2", 130, now=16)  # moved
    assert (kv.working_set("w1"), kv.working_set("w2")) == (0, 130)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=12), n=st.integers(2, 5))
def test_a_new_key_goes_to_the_worker_with_the_smallest_working_set(sizes, n):
    core = make_core("--policy", "manual", "--assignment-mode", "min_kv", workers=n)
    min_kv = core.policy.assignment
    for i, size in enumerate(sizes):
        before = {u: min_kv.kv.working_set(u) for u in core.registry.urls()}
        d = route(core, f"k{i}", now=i, input_ids=list(range(size)))
        assert d.branch == "vacant"
        assert before[d.url] == min(before.values())  # nothing in flight: no worker is hot


def test_a_key_stays_when_no_other_worker_has_headroom_or_is_much_lighter():
    core = make_core(
        "--policy",
        "manual",
        "--assignment-mode",
        "min_kv",
        "--kv-capacity-tokens",
        "1000",
        "--kv-repin-headroom",
        "0.2",
        workers=2,
    )
    a = route(core, "a", now=0, input_ids=list(range(400)))
    b = route(core, "b", now=0, input_ids=list(range(300)))
    assert a.url != b.url  # min_kv: b to the empty worker
    c = route(core, "c", now=1, input_ids=list(range(100)))
    assert c.url == b.url  # 300 < 400
    grow = route(core, "c", now=2, input_ids=list(range(750)))  # 300 + 750 > 1000 here, 400 + 750 > 800 there
    assert (grow.url, grow.branch) == (b.url, "occupied_hit")
    alone = route(core, "a", now=3, input_ids=list(range(1200)))  # over capacity alone: nowhere to go
    assert (alone.url, alone.branch) == (a.url, "occupied_hit")


def test_repin_kv_moves_to_a_worker_with_headroom_and_not_back_within_the_cooldown():
    core = make_core(
        "--policy",
        "manual",
        "--assignment-mode",
        "min_kv",
        "--kv-capacity-tokens",
        "1000",
        "--kv-repin-headroom",
        "0.2",
        "--kv-repin-cooldown-secs",
        "30",
        workers=2,
    )
    a = route(core, "a", now=0, input_ids=list(range(600)))  # W1 = 600
    b = route(core, "b", now=0, input_ids=list(range(700)))  # W2 = 700
    c = route(core, "c", now=0, input_ids=list(range(100)))  # to W1 (600 < 700)
    assert c.url == a.url and b.url != a.url
    route(core, "b", now=1, input_ids=list(range(300)))  # W2 = 300
    moved = route(core, "c", now=2, input_ids=list(range(500)))  # W1: 600 + 500 > 1000; W2: 300 + 500 <= 800
    assert (moved.url, moved.branch) == (b.url, "repin_kv")
    assert core.policy.entries["c"].candidates[0] == b.url
    route(core, "a", now=5, input_ids=list(range(10)))  # W1 = 10
    held = route(
        core, "c", now=10, input_ids=list(range(750))
    )  # W2: 300 + 750 > 1000, W1 has room, but c moved 8 s ago
    assert (held.url, held.branch) == (b.url, "occupied_hit")
    back = route(core, "c", now=40, input_ids=list(range(760)))  # cooldown over: W1 10 + 760 <= 800
    assert (back.url, back.branch) == (a.url, "repin_kv")
    assert sample(core, "smg_manual_policy_branch_total", branch="repin_kv") == 2


def test_when_every_worker_is_full_a_key_moves_only_to_a_much_lighter_one():
    core = make_core(
        "--policy",
        "manual",
        "--assignment-mode",
        "min_kv",
        "--kv-capacity-tokens",
        "1000",
        "--kv-repin-headroom",
        "0.2",
        workers=2,
    )
    z = route(core, "z", now=0, input_ids=list(range(1000)))  # W1 = 1000
    y = route(core, "y", now=0, input_ids=list(range(1100)))  # W2 = 1100
    x = route(core, "x", now=0, input_ids=list(range(50)))  # to W1 (1000 < 1100)
    assert x.url == z.url != y.url
    route(core, "y", now=1, input_ids=list(range(300)))  # W2 = 300
    moved = route(core, "x", now=2, input_ids=list(range(600)))  # W1 1600 > 1000; W2 900: no headroom, <= 0.8 * 1600
    assert (moved.url, moved.branch) == (y.url, "repin_kv")


def test_a_hot_worker_loses_its_keys_and_gets_no_new_ones():
    core = make_core("--policy", "manual", "--assignment-mode", "min_kv", "--kv-repin-queue-ratio", "1.5", workers=3)
    first = route(core, "k", now=0, words=50)
    others = [route(core, f"o{i}", now=0, words=10) for i in range(2)]
    assert first.url not in {o.url for o in others}
    core.begin(first, now=0)
    core.registry.begin(first.url, "stuck")  # k's worker keeps requests in flight; the others are idle
    fresh = route(core, "new", now=10, words=1)  # after the warm-up (a quarter of the 20 s smoothing window)
    assert fresh.url != first.url  # not placed on the hot worker though it is not the only light one
    moved = route(core, "k", now=12, words=60)
    assert moved.branch == "repin_queue" and moved.url != first.url


def test_a_key_with_a_large_context_stays_on_a_hot_worker():
    def hot_setup():
        core = make_core("--policy", "manual", "--assignment-mode", "min_kv", "--kv-repin-max-tokens", "100", workers=3)
        first = route(core, "k", now=0, words=50)
        route(core, "o1", now=0, words=10)
        route(core, "o2", now=0, words=10)
        for _ in range(2):
            core.registry.begin(first.url, "stuck")  # k's worker keeps requests in flight, the others are idle
        return core, first.url

    core, pinned = hot_setup()
    stay = route(core, "k", now=10, words=150)  # 150 tokens > 100: the cold prefill would cost more than it saves
    assert (stay.url, stay.branch) == (pinned, "occupied_hit")
    core, pinned = hot_setup()
    moved = route(core, "k", now=10, words=90)  # the same state, a context under the cap: re-pinned
    assert moved.branch == "repin_queue" and moved.url != pinned


ops = st.lists(
    st.one_of(
        st.tuples(st.just("req"), st.sampled_from(KEYS[:4]), st.integers(100, 700)),
        st.tuples(st.just("fin"), st.integers(0, 40), st.just(0)),
        st.tuples(st.just("wait"), st.just(0), st.integers(1, 10)),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=60, deadline=None)
@given(ops=ops, n=st.integers(2, 3), cap=st.sampled_from([1000, 1500]), spill=st.sampled_from([[], ["1"], ["2"]]))
def test_hysteresis_no_ping_pong_and_targets_never_trigger(ops, n, cap, spill):
    cooldown = 15.0
    core = make_core(
        *(["--kv-repin-spill-gap", *spill] if spill else []),
        "--policy",
        "manual",
        "--assignment-mode",
        "min_kv",
        "--kv-capacity-tokens",
        str(cap),
        "--kv-repin-cooldown-secs",
        str(cooldown),
        "--kv-repin-headroom",
        "0.2",
        workers=n,
    )
    pol, min_kv = core.policy, core.policy.assignment
    now = 0.0
    last_move: dict[str, float] = {}
    tickets = []
    for op, a, b in ops:
        if op == "wait":
            now += b
            continue
        if op == "fin":
            if tickets:
                core.finish(tickets.pop(a % len(tickets)), now=now)
            continue
        min_kv.kv.expire(now)
        entry = pol.entries.get(a)
        src = entry.candidates[0] if entry else None
        source_projected = min_kv.kv.working_set(src) - min_kv.kv.own(a, src) + b if src else 0
        d = route(core, a, now=now, input_ids=list(range(b)))
        if d.branch in ("repin_kv", "repin_queue", "repin_load"):
            assert now - last_move.get(a, float("-inf")) >= cooldown  # no re-pin within the cooldown
            last_move[a] = now
            if d.branch == "repin_kv":  # the source was over capacity; the target had headroom, or was that lighter
                assert source_projected > cap
                assert min_kv.kv.working_set(d.url) <= 0.8 * max(cap, source_projected)
            elif d.branch == "repin_load":  # spill: the source was KV-full, the target has room (so is not)
                assert spill and source_projected > 0.8 * cap
                assert min_kv.kv.working_set(d.url) <= 0.8 * cap
            else:
                assert d.url not in min_kv.hot(list(core.registry))
            again = route(core, a, now=now, input_ids=list(range(b)))  # same state, same instant: no move back
            assert (again.url, again.branch) == (d.url, "occupied_hit")
        tickets.append(core.begin(d, now=now))


def test_sticky_override_uses_min_kv_for_first_placement():
    core = make_core("--policy", "cache_aware", "--routing-key-override", "--assignment-mode", "min_kv", workers=2)
    assert type(core.policy.sticky) is ManualPolicy and type(core.policy.sticky.assignment) is MinKvAssignment
    d = core.select("chat", {"x-smg-routing-key": "k"}, chat("hi"), now=0)
    assert d.branch == "vacant" and d.url is not None


def waiting(n):
    return {"loads": [{**loads(100_000)["loads"][0], "num_waiting_reqs": n}]}


def load_setup(*flags):
    """Three workers, one key each; k's worker holds 4 requests in flight and polls 2 waiting."""
    core = make_core("--policy", "manual", "--assignment-mode", "min_kv", "--kv-repin-queue-ratio", "100", *flags,
                     workers=3)
    first = route(core, "k", now=0, words=50)
    others = [route(core, f"o{i}", now=0, words=50) for i in range(2)]
    assert len({first.url, *(o.url for o in others)}) == 3
    for _ in range(4):
        core.registry.begin(first.url, "stuck")
    for url in core.registry.urls():
        core.record_load(url, waiting(2 if url == first.url else 0), now=0)
    return core, first.url, [o.url for o in others]


def test_repin_load_is_off_by_default():
    core, _, _ = load_setup()
    assert route(core, "k", now=1, words=60).branch == "occupied_hit"


def test_repin_load_moves_a_key_off_a_queueing_worker_over_the_bound_to_the_least_loaded():
    core, _, (o1, o2) = load_setup("--kv-repin-load-epsilon", "0.5")
    core.registry.begin(o1, "busy")  # o1 has one in flight, o2 none: o2 is the least loaded under the bound
    moved = route(core, "k", now=1, words=60)  # bound ceil(1.5 * (4 + 1 + 0 + 1) / 3) = 3 <= 4
    assert (moved.url, moved.branch) == (o2, "repin_load")
    again = route(core, "k", now=2, words=70)  # the cooldown keeps it there
    assert (again.url, again.branch) == (o2, "occupied_hit")


def test_repin_load_needs_the_worker_to_report_waiting_requests():
    core, pinned, _ = load_setup("--kv-repin-load-epsilon", "0.5")
    core.record_load(pinned, waiting(0), now=0.5)  # over the bound, but nothing is queued: in-flight noise
    assert route(core, "k", now=1, words=60).branch == "occupied_hit"


def test_repin_load_stays_under_the_bound():
    core, _, _ = load_setup("--kv-repin-load-epsilon", "2.0")  # bound ceil(3 * 6 / 3) = 6 > 4
    assert route(core, "k", now=1, words=60).branch == "occupied_hit"


def test_repin_load_never_moves_to_a_queueing_worker():
    core, _, others = load_setup("--kv-repin-load-epsilon", "0.5")
    for url in others:
        core.record_load(url, waiting(1), now=0.5)
    assert route(core, "k", now=1, words=60).branch == "occupied_hit"


@settings(max_examples=60, deadline=None)
@given(inflight=st.lists(st.integers(0, 8), min_size=2, max_size=5), eps=st.sampled_from([0.1, 0.5, 1.0]),
       queued=st.lists(st.booleans(), min_size=5, max_size=5))
def test_repin_load_target_is_under_the_bound_not_queueing_and_least_loaded(inflight, eps, queued):
    n = len(inflight)
    core = make_core("--policy", "manual", "--assignment-mode", "min_kv", "--kv-repin-queue-ratio", "100",
                     "--kv-repin-load-epsilon", str(eps), workers=n)
    urls = core.registry.urls()
    pinned = route(core, "k", now=0, words=5).url
    for url, m, q in zip(urls, inflight, queued, strict=False):
        for _ in range(m):
            core.registry.begin(url, "x")
        core.record_load(url, waiting(1 if q else 0), now=0)
    before = {u: core.registry.get(u).load for u in urls}
    out = route(core, "k", now=1, words=6)
    bound = -(-(1 + eps) * (sum(before.values()) + 1) // n)
    if out.branch == "repin_load":
        assert before[pinned] >= bound - 1e-9 and core.registry.get(pinned).report.waiting > 0
        assert before[out.url] < bound and core.registry.get(out.url).report.waiting == 0
        assert before[out.url] == min(v for u, v in before.items() if u != pinned and v < bound
                                      and core.registry.get(u).report.waiting == 0)
    else:
        assert out.url == pinned


def test_context_counts_an_int64_input_ids_array_as_a_list():
    import numpy as np

    ids = list(range(40))
    assert context_tokens({"input_ids": np.arange(40, dtype=np.int64), "max_tokens": 2}, "") == \
        context_tokens({"input_ids": ids, "max_tokens": 2}, "") == 42


def test_under_the_routing_key_override_min_kv_keys_by_rid_as_every_manual_mode():
    core = make_core("--policy", "manual", "--assignment-mode", "min_kv", "--routing-key-override", workers=2)
    first = core.select("chat", {}, chat("hi", rid="conv_t1"), now=0)
    again = core.select("chat", {}, chat("hi there", rid="conv_t2_r1"), now=1)
    assert (first.key, first.branch) == ("conv", "vacant")
    assert (again.url, again.key, again.branch) == (first.url, "conv", "occupied_hit")
    assert core.policy.assignment.kv.own("conv", first.url) == 2  # the key's projected context, as a header key's



def spill_setup(*flags):
    """Three workers of 1000 KV tokens (KV-full above 800): k (300) and a (100) share one, o1 and o2 hold 50 each."""
    core = make_core("--policy", "manual", "--assignment-mode", "min_kv", "--kv-capacity-tokens", "1000",
                     "--kv-repin-headroom", "0.2", "--kv-repin-queue-ratio", "100", *flags, workers=3)
    o1 = route(core, "o1", now=0, input_ids=list(range(400)))
    o2 = route(core, "o2", now=0, input_ids=list(range(400)))
    k = route(core, "k", now=0, input_ids=list(range(300)))  # the empty worker
    a = route(core, "a", now=0, input_ids=list(range(100)))  # beside k: 300 < 400
    assert len({o1.url, o2.url, k.url}) == 3 and a.url == k.url
    route(core, "o1", now=0, input_ids=list(range(50)))
    route(core, "o2", now=0, input_ids=list(range(50)))
    return core, k.url, o1.url, o2.url


def busy(core, url, n):
    for _ in range(n):
        core.registry.begin(url, "busy")


def test_repin_spill_is_off_by_default():
    core, pinned, _, _ = spill_setup()
    busy(core, pinned, 3)
    assert route(core, "k", now=1, input_ids=list(range(750))).branch == "occupied_hit"


def test_repin_spill_moves_a_key_off_a_kv_full_busy_worker_to_the_least_loaded_with_room():
    core, pinned, o1, o2 = spill_setup("--kv-repin-spill-gap", "2")
    busy(core, pinned, 3)
    busy(core, o1, 1)  # o1 is 2 requests less busy, o2 3; each holds 50 + 750 <= 800
    moved = route(core, "k", now=1, input_ids=list(range(750)))  # k's worker: 100 + 750 > 800, under 1000
    assert (moved.url, moved.branch) == (o2, "repin_load")


def test_repin_spill_needs_the_gap():
    core, pinned, _, _ = spill_setup("--kv-repin-spill-gap", "2")
    busy(core, pinned, 1)  # one request more than the others: noise
    assert route(core, "k", now=1, input_ids=list(range(750))).branch == "occupied_hit"


def test_repin_spill_leaves_a_worker_whose_kv_is_not_full():
    core, pinned, _, _ = spill_setup("--kv-repin-spill-gap", "2")
    busy(core, pinned, 3)
    stay = route(core, "k", now=1, input_ids=list(range(600)))  # 100 + 600 <= 800: room, whatever the queue
    assert (stay.url, stay.branch) == (pinned, "occupied_hit")


def test_repin_spill_never_moves_to_a_worker_without_room():
    core, pinned, _, _ = spill_setup("--kv-repin-spill-gap", "2")
    busy(core, pinned, 3)
    route(core, "o1", now=0.5, input_ids=list(range(100)))
    route(core, "o2", now=0.5, input_ids=list(range(100)))  # 100 + 750 > 800 on both
    assert route(core, "k", now=1, input_ids=list(range(750))).branch == "occupied_hit"


def test_in_pd_mode_each_leg_keeps_its_own_key_state_and_idle_eviction_clears_it():
    """Each PD leg's manual pins ``prefill:<key>`` / ``decode:<key>``; its min_kv state is keyed the same way, so
    the idle eviction that drops a leg's entry also drops the assignment's state of that key."""
    from mock_gateway.testing import make_pd_core

    core = make_pd_core("--policy", "manual", "--assignment-mode", "min_kv", "--max-idle-secs", "5",
                        "--eviction-interval-secs", "1")
    for leg, policy in core.leg_policies.items():
        policy.assignment.repinned_at[f"{leg}:s0"] = 0.0  # as if the key had been re-pinned on this leg
    route(core, "s0", now=0.0)
    for leg, policy in core.leg_policies.items():
        assert list(policy.entries) == [f"{leg}:s0"] and list(policy.assignment.kv.live) == [f"{leg}:s0"]
    for leg, policy in core.leg_policies.items():
        assert policy.evict_idle(10.0) == 1
        assert not policy.entries and f"{leg}:s0" not in policy.assignment.repinned_at
