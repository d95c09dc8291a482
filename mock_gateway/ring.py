"""SMG's consistent-hash ring (``worker/hash_ring.rs``) and prefix_hash's key hashing.

150 virtual nodes per worker at ``blake3(f"{url}#{i}")``; a position is the first 8 bytes of the
blake3 digest read as a little-endian u64. A key goes to the first vnode at or after its own
position, walking clockwise (with wrap) past workers that are not healthy.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Iterable

import blake3
import xxhash

VIRTUAL_NODES_PER_WORKER = 150


@functools.lru_cache(maxsize=1 << 16)
def position(data: str | bytes) -> int:
    """Ring position of a key: ``u64::from_le_bytes(blake3(data)[0..8])`` (memoized: sticky keys recur)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return int.from_bytes(blake3.blake3(data).digest()[:8], "little")


def prefix_ring_key(data: bytes) -> str:
    """prefix_hash's ring key: ``format!("{:016x}", xxh3_64(bytes))``."""
    return f"{xxhash.xxh3_64_intdigest(data):016x}"


class HashRing:
    """A sorted list of ``(position, url)`` vnodes; adding or removing a URL moves only its own vnodes."""

    def __init__(self, urls: Iterable[str] = ()) -> None:
        self._entries: list[tuple[int, str]] = []
        self._urls: set[str] = set()
        for url in urls:
            self.add(url)

    def __len__(self) -> int:
        return len(self._urls)

    def __contains__(self, url: object) -> bool:
        return url in self._urls

    def add(self, url: str) -> None:
        if url in self._urls:
            return
        self._urls.add(url)
        for i in range(VIRTUAL_NODES_PER_WORKER):
            bisect.insort(self._entries, (position(f"{url}#{i}"), url))

    def remove(self, url: str) -> None:
        if url in self._urls:
            self._urls.discard(url)
            self._entries = [e for e in self._entries if e[1] != url]

    def lookup(self, key: str | bytes, healthy: Callable[[str], bool] = lambda _u: True) -> str | None:
        """The first healthy URL clockwise from the key's position (each URL checked once), or None."""
        if not self._entries:
            return None
        pos = position(key)
        start = bisect.bisect_left(self._entries, (pos, ""))
        seen: set[str] = set()
        n = len(self._entries)
        for j in range(n):
            url = self._entries[(start + j) % n][1]
            if url in seen:
                continue
            if healthy(url):
                return url
            seen.add(url)
            if len(seen) == len(self._urls):
                break
        return None
