"""cache_aware: tree match, spill gate (1.13.0 margin), expected-wait fallback, insertion, eviction, metrics."""

import pytest

from mock_gateway.policies.cache_aware import spill_margin
from mock_gateway.testing import chat, make_core, sample, urls

W = urls(3)
LONG = "system prompt that every turn of this conversation shares " * 3


def route(core, text, now=None):
    return core.select("chat", {}, chat(text), now=now)


def branch(core, name):
    return sample(core, "smg_cache_aware_policy_branch_total", branch=name)


def test_routing_text_joins_message_texts_with_single_spaces():
    core = make_core("--policy", "cache_aware")
    body = {
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": "abc"},
            {"role": "user", "content": "defg"},
            {"role": "assistant", "content": "hi"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "xy"}, {"type": "image_url"}, {"type": "text", "text": "z"}],
            },
        ],
    }
    d = core.select("chat", {}, body)
    tree = core.policy.trees["fake-model"]
    assert tree.match("abc defg hi xy z") == (16, [d.url])


def test_first_request_falls_back_then_the_conversation_sticks():
    core = make_core("--policy", "cache_aware")
    first = route(core, LONG)
    assert first.branch == "expected_wait_fallback"
    for turn in range(5):
        d = route(core, LONG + f" turn {turn}")
        assert (d.url, d.branch) == (first.url, "tree_match")
    assert branch(core, "tree_match") == 5


def test_match_rate_must_exceed_the_threshold_strictly():
    core = make_core("--policy", "cache_aware", "--cache-threshold", "0.5")
    first = route(core, "aaaa")
    core.begin(first)  # in-flight load makes the other workers preferable on a miss
    d = route(core, "aaaabbbb")  # rate exactly 0.5: not a match
    assert d.branch == "expected_wait_fallback" and d.url != first.url


@pytest.mark.parametrize(("hot_load", "spills"), [(6, False), (7, True)])
def test_spill_gate_matches_the_live_7_vs_6_experiment(hot_load, spills):
    core = make_core("--policy", "cache_aware")
    holder = route(core, LONG).url
    for _ in range(hot_load):
        core.begin(_decision_for(core, holder))
    d = route(core, LONG)
    assert (d.branch == "spill") is spills
    assert (d.url != holder) is spills


def _decision_for(core, url):
    from mock_gateway.core import Decision

    return Decision(url, "chat", "cache_aware")


def test_spill_replicates_the_prefix_to_a_second_holder():
    core = make_core("--policy", "cache_aware")
    holder = route(core, LONG).url
    for _ in range(7):
        core.begin(_decision_for(core, holder))
    spilled = route(core, LONG).url
    assert spilled != holder
    assert set(core.policy.trees["fake-model"].match(LONG)[1]) == {holder, spilled}


def test_spill_margin_formula():
    assert spill_margin(7 / 3, 64) == 4.0
    assert spill_margin(100, 64) == 20.0
    assert spill_margin(100, 3) == 3
    assert spill_margin(0, 64) == 4.0


def test_misses_water_fill_by_expected_wait_with_since_poll_credit():
    core = make_core("--policy", "cache_aware", "--load-monitor-interval", "10")
    report = {"loads": [{"dp_rank": 0, "num_running_reqs": 0, "gen_throughput": 100.0}]}
    for u in core.due_polls(0.0):
        core.record_load(u, report, 0.0)
    got = [route(core, chr(ord("a") + i) * 20, now=0.1).url for i in range(6)]  # no shared prefix
    assert sorted(got[:3]) == sorted(W) and sorted(got[3:]) == sorted(W)  # each dispatch adds 10.24 s
    assert all(core.registry.get(u).since_poll_tokens() == 2048 for u in W)
    core.advance(10.0)
    for u in core.due_polls(10.0):
        core.record_load(u, report, 10.0)
    assert all(core.registry.get(u).since_poll_tokens() == 0 for u in W)


def test_reported_load_steers_misses_away_from_a_busy_worker():
    core = make_core("--policy", "cache_aware")
    for u in core.due_polls(0.0):
        running = 50 if u == W[0] else 0
        core.record_load(u, {"loads": [{"num_running_reqs": running, "gen_throughput": 1000.0}]}, 0.0)
    assert all(route(core, chr(ord("a") + i) * 20, now=1.0).url != W[0] for i in range(10))


def test_match_ratio_histogram():
    core = make_core("--policy", "cache_aware")
    route(core, LONG)
    route(core, LONG)
    assert sample(core, "smg_cache_aware_match_ratio_count") == 2
    assert sample(core, "smg_cache_aware_match_ratio_bucket", le="0.0") == 1
    assert sample(core, "smg_cache_aware_match_ratio_bucket", le="0.9") == 1


def test_tree_is_trimmed_to_max_tree_size_on_the_eviction_clock():
    core = make_core("--policy", "cache_aware", "--max-tree-size", "100", "--eviction-interval-secs", "5")
    for i in range(10):
        route(core, f"{i} " + "y" * 60, now=float(i))
    tree = core.policy.trees["fake-model"]
    assert tree.total_size() > 100
    core.advance(5.0)
    assert tree.total_size() <= 100
    assert sample(core, "smg_cache_tree_chars", model="fake-model") == tree.total_size()


def test_removed_worker_is_purged_from_the_tree():
    core = make_core("--policy", "cache_aware")
    holder = route(core, LONG).url
    core.remove_worker(holder)
    d = route(core, LONG)
    assert d.url != holder and d.branch == "expected_wait_fallback"


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

prompts = st.lists(
    st.tuples(st.sampled_from(["alpha ", "beta ", "gamma "]), st.text("xyz ", max_size=8), st.integers(0, 3)),
    min_size=1,
    max_size=30,
)


@given(prompts, st.integers(0, 100))
def test_cache_aware_invariants(seq, seed):
    """Property: the chosen worker then holds the whole text; a match above the threshold with an ungated
    holder goes to a holder (tree_match); the branch is expected_wait_fallback exactly when rate <= threshold."""
    core = make_core("--policy", "cache_aware", seed=seed)
    tree = core.policy.trees["fake-model"]
    for prefix, tail, extra_load in seq:
        text = prefix * 6 + tail
        matched, holders = tree.match(text)
        rate = matched / len(text)
        gated = core.policy.gated(list(core.registry))
        d = route(core, text)
        if rate > 0.3:
            if any(h not in gated for h in holders):
                assert d.branch == "tree_match" and d.url in holders and d.url not in gated
            else:
                assert d.url not in holders or d.branch == "tree_match"
        else:
            assert d.branch == "expected_wait_fallback"
        assert tree.match(text) == (len(text), tree.match(text)[1]) and d.url in tree.match(text)[1]
        for _ in range(extra_load):
            core.begin(_decision_for(core, d.url))


from mock_gateway.char_tree import CharTree  # noqa: E402


def _shape(tree: CharTree) -> list:
    def node(n) -> list:
        return [n.label, sorted(n.tenants.items()), [node(c) for _, c in sorted(n.children.items())]]

    return [node(tree.root), sorted(tree.tenant_size.items())]


ops = st.lists(
    st.tuples(st.text("ab c", max_size=10), st.sampled_from(["w1", "w2", "w3"]), st.booleans(), st.integers(0, 30)),
    max_size=25,
)


@given(ops)
def test_inserting_along_the_match_walk_builds_the_same_tree_as_a_fresh_insert(steps):
    """Property: insert(seq, t, walk) from match_walk(seq) == insert(seq, t); a walk made stale by another
    change of the tree (an insert, an eviction) is not reused."""
    plain, walked = CharTree(), CharTree()
    stale = None
    for seq, tenant, evict, size in steps:
        assert plain.match(seq) == walked.match_walk(seq)[:2]
        _, _, walk = walked.match_walk(seq)
        plain.insert(seq, tenant)
        walked.insert(seq, tenant, walk)
        if stale is not None:  # a walk of an earlier state, for the same text, must be walked again
            plain.insert(stale[0], "w9")
            walked.insert(stale[0], "w9", stale[1])
        stale = (seq, walk)
        if evict:
            assert plain.evict(size) == walked.evict(size)
        assert _shape(plain) == _shape(walked)
