"""HiCache's storage tier (L3): pages of KV keyed by hash chains of their tokens, shared by a pool's workers.

SGLang (0.5.23) keys an L3 page by a chain hash: page ``i``'s key hashes page ``i - 1``'s key with page ``i``'s
token ids (``mem_cache/utils.py`` ``get_hash_str``, SHA-256 in a C++ extension; the chain seeded by the request's
``extra_key``/``cache_salt``, ``storage_namespace_seed``), so a key stands for the whole prefix up to its page and
any worker that computes the same prefix finds the pages another wrote (``mem_cache/hicache_storage.py``'s
``batch_exists`` answers how many leading keys exist). Here the hash is xxh3-128 (only equality matters), and only
full pages are keyed, as SGLang backs up and prefetches whole pages.

Time: a write is stored at the call but readable only from its ``ready`` time on (when the worker's host -> L3
copy finishes in virtual time); a page is readable at ``now`` iff some write of it is ready by ``now`` (and the
page was not evicted since). ``L3Store`` is the in-process store shared by every engine of a ``direct`` pool; the
``http`` transport serves one over loopback (``sim/worker``), whose wire forms are the JSON helpers below.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import xxhash

from .radix import TokenIds, as_ids

KEY_BYTES = 16  # xxh3-128


def page_keys(ids: TokenIds, page_size: int, salt: bytes = b"") -> list[bytes]:
    """The chain keys of the full pages of ``ids``: key ``i`` = xxh3-128(key ``i - 1`` + page ``i``'s ids), seeded
    by ``salt``."""
    if page_size < 1:
        raise ValueError("page_size must be >= 1")
    arr = as_ids(ids)
    data = arr.tobytes()
    step = page_size * arr.itemsize
    keys: list[bytes] = []
    prev = salt
    digest = xxhash.xxh3_128_digest
    for start in range(0, (len(arr) // page_size) * step, step):
        prev = digest(prev + data[start : start + step])
        keys.append(prev)
    return keys


class StorageTier(Protocol):
    """What an engine needs of L3 (``L3Store`` in process; a remote store over HTTP implements the same)."""

    page_size: int

    def match(self, keys: Sequence[bytes], now: float) -> int:
        """How many leading ``keys`` are readable at ``now``."""
        ...

    def write(self, keys: Sequence[bytes], ready: float) -> int:
        """Store ``keys``, readable from ``ready`` on; return how many were not stored before."""
        ...


class L3Store:
    """An in-process L3: page key -> the earliest time some write of it is readable; LRU beyond ``capacity_pages``.

    ``match`` and ``write`` both count as uses for the LRU order. A page evicted and written again is new.
    """

    def __init__(self, page_size: int, capacity_pages: int | None = None) -> None:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        if capacity_pages is not None and capacity_pages < 0:
            raise ValueError("capacity_pages must be >= 0 or None")
        self.page_size = page_size
        self.capacity_pages = capacity_pages
        self._ready: OrderedDict[bytes, float] = OrderedDict()
        self.evicted_pages = 0

    def __len__(self) -> int:
        return len(self._ready)

    def match(self, keys: Sequence[bytes], now: float) -> int:
        ready = self._ready
        n = 0
        for key in keys:
            at = ready.get(key)
            if at is None or at > now:
                break
            ready.move_to_end(key)
            n += 1
        return n

    def write(self, keys: Sequence[bytes], ready: float) -> int:
        if not math.isfinite(ready):
            raise ValueError(f"ready must be finite, got {ready}")
        store = self._ready
        new = 0
        for key in keys:
            at = store.get(key)
            if at is None:
                new += 1
                store[key] = ready
            elif ready < at:  # an earlier write of the same page: readable from then on
                store[key] = ready
            store.move_to_end(key)
        cap = self.capacity_pages
        if cap is not None:
            while len(store) > cap:
                store.popitem(last=False)
                self.evicted_pages += 1
        return new


# ---------------------------------------------------------------------- JSON wire forms (keys as hex strings)
def keys_to_json(keys: Sequence[bytes]) -> list[str]:
    return [k.hex() for k in keys]


def keys_from_json(value: Any) -> list[bytes]:
    """Keys from their JSON form; ``ValueError`` with a message for anything else than a list of hex strings."""
    if not isinstance(value, list):
        raise ValueError("'keys' must be a list of hex strings")
    keys = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError("'keys' must be a list of hex strings")
        try:
            keys.append(bytes.fromhex(item))
        except ValueError:
            raise ValueError(f"not a hex key: {item[:40]!r}") from None
    return keys


def _time_field(body: Any, name: str) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"'{name}' must be a finite number")
    return float(value)


def match_request(keys: Sequence[bytes], now: float) -> dict[str, Any]:
    """The body of a match (answered ``{"matched": n}``)."""
    return {"keys": keys_to_json(keys), "now": now}


def write_request(keys: Sequence[bytes], ready: float) -> dict[str, Any]:
    """The body of a write (answered ``{"new": n}``)."""
    return {"keys": keys_to_json(keys), "ready": ready}


def parse_match_request(body: Any) -> tuple[list[bytes], float]:
    """``{"keys": [hex], "now": t}`` -> (keys, now); ``ValueError`` (a 400) on anything else."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return keys_from_json(body.get("keys")), _time_field(body, "now")


def parse_write_request(body: Any) -> tuple[list[bytes], float]:
    """``{"keys": [hex], "ready": t}`` -> (keys, ready); ``ValueError`` (a 400) on anything else."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return keys_from_json(body.get("keys")), _time_field(body, "ready")

