"""The character radix tree: match length and holders equal a brute-force model; sizes; LRU eviction."""

from hypothesis import given
from hypothesis import strategies as st

from mock_gateway.char_tree import CharTree

TENANTS = ["a", "b", "c", "d"]
texts = st.text(alphabet="xyzé漢 ", min_size=0, max_size=12)
inserts = st.lists(st.tuples(texts, st.sampled_from(TENANTS)), max_size=25)


def lcp(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def build(ops) -> CharTree:
    t = CharTree()
    for s, tenant in ops:
        t.insert(s, tenant)
    return t


@given(inserts, texts)
def test_match_is_the_longest_common_prefix_and_its_holders(ops, query):
    t = build(ops)
    matched, holders = t.match(query)
    best = max((lcp(s, query) for s, _ in ops), default=0)
    assert matched == best
    if matched == 0:
        assert holders == []
    else:
        prefix = query[:matched]
        assert set(holders) == {tenant for s, tenant in ops if s.startswith(prefix)}


@given(inserts)
def test_tenant_size_counts_distinct_prefixes_of_its_strings(ops):
    t = build(ops)
    for tenant in TENANTS:
        prefixes = {s[:i] for s, tt in ops if tt == tenant for i in range(1, len(s) + 1)}
        assert t.tenant_size.get(tenant, 0) == len(prefixes)


@given(inserts, st.integers(min_value=0, max_value=30))
def test_eviction_fits_the_budget_and_keeps_sizes_consistent(ops, budget):
    t = build(ops)
    before = t.total_size()
    freed = t.evict(budget)
    assert t.total_size() <= budget
    assert before - freed == t.total_size()
    # every tenant still matches exactly what its remaining nodes spell
    for tenant in TENANTS:
        size = 0
        stack = [t.root]
        while stack:
            n = stack.pop()
            stack.extend(n.children.values())
            if tenant in n.tenants:
                size += len(n.label)
        assert size == t.tenant_size.get(tenant, 0)


def test_eviction_drops_the_least_recently_used_leaf_first():
    t = CharTree()
    t.insert("aaaa", "old")
    t.insert("bbbb", "new")
    t.evict(4)
    assert t.match("bbbb") == (4, ["new"])
    assert t.match("aaaa") == (0, [])


def test_units_are_unicode_characters():
    t = CharTree()
    t.insert("é漢字", "w")
    assert t.total_size() == 3
    assert t.match("é漢x") == (2, ["w"])


def test_partial_edge_match_reports_the_child_holders():
    t = CharTree()
    t.insert("hello world", "w1")
    t.insert("hello there", "w2")
    assert t.match("hello wo") == (8, ["w1"])
    matched, holders = t.match("hello")
    assert matched == 5 and set(holders) == {"w1", "w2"}


@given(inserts)
def test_remove_tenant_purges_it_everywhere(ops):
    t = build(ops)
    t.remove_tenant("a")
    assert "a" not in t.tenant_size
    for s, tenant in ops:
        if tenant != "a":
            assert t.match(s)[0] == len(s)
            assert "a" not in t.match(s)[1]


def test_token_sequences_work_like_strings():
    t = CharTree()
    t.insert((1, 2, 3, 4), "w")
    assert t.match((1, 2, 9)) == (2, ["w"])
