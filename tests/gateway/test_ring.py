"""The blake3 ring: SMG's vnode placement, clockwise lookup past unhealthy workers, minimal movement."""

import blake3
from hypothesis import given
from hypothesis import strategies as st

from mock_gateway.ring import VIRTUAL_NODES_PER_WORKER, HashRing, position, prefix_ring_key

URLS = [f"http://127.0.0.1:{18001 + i}" for i in range(6)]
keys = st.text(min_size=1, max_size=40)
pools = st.lists(st.sampled_from(URLS), min_size=1, max_size=6, unique=True)


def test_position_is_first_eight_blake3_bytes_little_endian():
    digest = blake3.blake3(b"http://w#3").digest()
    assert position("http://w#3") == int.from_bytes(digest[:8], "little")
    assert position(b"abc") == position("abc")


def test_ring_has_150_vnodes_per_worker():
    ring = HashRing(URLS[:3])
    assert len(ring._entries) == 3 * VIRTUAL_NODES_PER_WORKER
    assert [p for p, _ in ring._entries] == sorted(p for p, _ in ring._entries)


def brute_owner(key: str, members: list[str]) -> str:
    """The first vnode at or after the key's position among members' vnodes, with wrap."""
    vnodes = sorted((position(f"{u}#{i}"), u) for u in members for i in range(VIRTUAL_NODES_PER_WORKER))
    kp = position(key)
    for p, u in vnodes:
        if p >= kp:
            return u
    return vnodes[0][1]


@given(keys, pools)
def test_lookup_is_the_first_vnode_clockwise(key, members):
    assert HashRing(members).lookup(key) == brute_owner(key, members)


@given(keys, pools, st.data())
def test_unhealthy_owner_spills_clockwise_like_a_ring_without_it(key, members, data):
    down = set(data.draw(st.lists(st.sampled_from(members), unique=True, max_size=len(members) - 1)))
    ring = HashRing(members)
    up = [u for u in members if u not in down]
    assert ring.lookup(key, lambda u: u not in down) == HashRing(up).lookup(key)


@given(keys, pools, st.sampled_from(URLS))
def test_adding_a_worker_moves_keys_only_to_it(key, members, new):
    ring = HashRing(members)
    before = ring.lookup(key)
    ring.add(new)
    after = ring.lookup(key)
    assert after in (before, new)
    ring.remove(new)
    if new not in members:
        assert ring.lookup(key) == before


def test_no_healthy_worker_gives_none():
    assert HashRing(URLS[:2]).lookup("k", lambda u: False) is None
    assert HashRing().lookup("k") is None


def test_prefix_ring_key_is_16_hex_digits_of_xxh3():
    import xxhash

    assert prefix_ring_key(b"abc") == format(xxhash.xxh3_64_intdigest(b"abc"), "016x")
    assert len(prefix_ring_key(b"")) == 16
