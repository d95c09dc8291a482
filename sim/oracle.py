"""The reuse ceiling: one infinite radix cache that sees every request in order.

``oracle_reuse`` = cached / prompt tokens if all requests shared one unbounded cache. It follows
the arrival-time engine's visibility rules exactly (``sim.engine.core``): a prompt is matched at its
arrival against everything *finished* by then, at most ``prompt[:-1]`` (one token is always
computed), and prompt + output enter the cache at the request's finish. A worker's cache only
ever holds a subset of that, so on that engine no routing can beat it, and a single worker with
unbounded KV reaches it exactly.

The iteration-level engine (the default, ``sim.engine.scheduler``) differs from it both ways:
SGLang caches prompt + output - 1 (the last sampled token has no KV), so a turn that continues its
session's previous one finds one token less; it matches a prompt when the request is *admitted*, which
may be later than its arrival, so a request that queued finds what finished meanwhile; and, as SGLang,
it puts a prompt's KV in the tree when its prefill is done, not when the request finishes, so a request
arriving while another with the same prefix decodes finds that prefix (the oracle does not). In virtual
time a single unbounded worker comes within a fraction of a percent of the oracle, on either side; in
live time, where requests that virtual time sends at one instant arrive a little apart, the last effect
can put ``kv_reuse`` above ``oracle_reuse`` (the conformance scenario: 0.947 against 0.935).

A PD pool (``Oracle(prompt_only=True)``) has another ceiling: its prefill workers' trees receive the prompt only,
never the answer (SGLang's prefill inserts the prompt when its KV is sent; the first output token's KV is never
computed there, shared/specs/pd-hicache.md section 2), and a decode worker's answer reaches no prefill tree. So
the PD oracle inserts each request's prompt alone, when its prefill ends: a pinned session reuses at most its
previous prompt, and no routing of the prefill leg can beat that. One session pinned on both legs with an
unbounded prefill cache reaches it exactly (tests/sim/test_pd_oracle.py).

The cache is a small append-only radix tree (``PrefixTree``) rather than the engine's
``RadixCache``: nothing is ever evicted, so it needs no LRU stamps, and it hands out cursors (where a
sequence ends in the tree) from which the next turn of a conversation is matched and inserted,
comparing only its new tokens (``Oracle.observe_turn``). It matches exactly what an unbounded
``RadixCache`` of the same page size matches (tests/sim/test_measures.py checks the two side by side).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from sim.engine.radix import as_ids


class _Node:
    __slots__ = ("children", "key", "parent", "start")

    def __init__(self, key: np.ndarray, start: int, parent: _Node | None) -> None:
        self.key = key  # edge label from the parent (a view of some inserted sequence)
        self.start = start  # tokens above this node: the key spans [start, start + len(key))
        self.parent = parent
        self.children: dict[int | bytes, _Node] = {}


Cursor = tuple[_Node, int]  # (node, pos): ids[:pos] lies on the path to node, within node's span or at its end


class PrefixTree:
    """Append-only radix tree over int64 token ids in whole pages: ``match`` (longest stored prefix) and
    ``insert``, both optionally resumed from a cursor of a sequence known to share ``pos`` tokens."""

    def __init__(self, page_size: int = 1) -> None:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.page_size = page_size
        self.root = _Node(np.empty(0, dtype=np.int64), 0, None)
        self.tokens = 0  # stored tokens (edge labels)

    def _child_key(self, ids: np.ndarray, pos: int) -> int | bytes:
        if self.page_size == 1:
            return int(ids[pos])
        return ids[pos : pos + self.page_size].tobytes()

    def _common(self, key: np.ndarray, off: int, ids: np.ndarray, pos: int, limit: int) -> int:
        """Common prefix of ``key[off:]`` and ``ids[pos:limit]``, in whole pages."""
        m = min(len(key) - off, limit - pos)
        if m <= 0:
            return 0
        eq = key[off : off + m] == ids[pos : pos + m]
        common = m if eq.all() else int(eq.argmin())
        p = self.page_size
        return common if p == 1 else common - common % p

    def _resume(self, cursor: Cursor | None, pos: int) -> Cursor:
        """A cursor at ``pos`` (<= the cursor's position) on the cursor's path: climb above later splits."""
        if cursor is None or pos <= 0:
            return self.root, 0
        node = cursor[0]
        while node.parent is not None and pos <= node.start:
            node = node.parent
        return node, pos

    def _walk(self, ids: np.ndarray, limit: int, node: _Node, pos: int) -> Cursor:
        """Follow ``ids[pos:limit]`` down from ``(node, pos)``; where the match ends."""
        off = pos - node.start
        if off < len(node.key):  # resumed inside an edge
            c = self._common(node.key, off, ids, pos, limit)
            pos += c
            if off + c < len(node.key):
                return node, pos
        while pos < limit:
            child = node.children.get(self._child_key(ids, pos))
            if child is None:
                break
            c = self._common(child.key, 0, ids, pos, limit)
            node, pos = child, pos + c
            if c < len(child.key):
                break
        return node, pos

    def _limit(self, n: int) -> int:
        return n - n % self.page_size

    def match(self, ids: Sequence[int] | np.ndarray, cursor: Cursor | None = None, shared: int = 0) -> Cursor:
        """Where the longest stored prefix of ``ids`` ends (its length is the cursor's ``pos``). With ``cursor``
        of a stored sequence whose first ``shared`` tokens equal those of ``ids``, only the rest is compared."""
        arr = as_ids(ids)
        limit = self._limit(len(arr))
        if cursor is not None:
            node, pos = cursor
            if pos <= shared and pos <= limit and not node.children and pos == node.start + len(node.key):
                return cursor  # resumed at the end of a leaf: nothing stored beyond (a conversation's next turn)
        node, pos = self._resume(cursor, self._limit(min(shared, limit, cursor[1] if cursor else 0)))
        return self._walk(arr, limit, node, pos)

    def insert(self, ids: Sequence[int] | np.ndarray, cursor: Cursor | None = None, shared: int = 0) -> Cursor:
        """Store ``ids`` (whole pages; kept as views: do not mutate them); the cursor at its end."""
        arr = as_ids(ids)
        limit = self._limit(len(arr))
        node, pos = self.match(arr, cursor, shared)
        if pos == limit:
            return node, pos
        off = pos - node.start
        if off < len(node.key):  # diverges inside an edge: split it
            parent = node.parent
            assert parent is not None
            upper = _Node(node.key[:off], node.start, parent)
            parent.children[self._child_key(node.key, 0)] = upper
            node.key, node.start, node.parent = node.key[off:], pos, upper
            upper.children[self._child_key(node.key, 0)] = node
            node = upper
        if node.parent is not None and not node.children:  # a leaf: extend its label in place
            node.key = arr[node.start : limit]
        else:
            leaf = _Node(arr[pos:limit], pos, node)
            node.children[self._child_key(arr, pos)] = leaf
            node = leaf
        self.tokens += limit - pos
        return node, limit


class Turn:
    """One observed request, for ``Oracle.observe_turn``: its prompt + output and, once what it inserts
    (``full[:inserted]``) entered the cache, where that ends there."""

    __slots__ = ("cursor", "full", "inserted", "start")

    def __init__(self, full: np.ndarray, start: Cursor, inserted: int) -> None:
        self.full = full
        self.start = start  # where the prompt's match ended: full[:start[1]] is in the cache
        self.inserted = inserted  # tokens of ``full`` it puts in the cache: all, or the prompt's (PD)
        self.cursor: Cursor | None = None


class Oracle:
    """Feed requests in nondecreasing arrival order with ``observe``; read ``reuse``. ``prompt_only``: the PD
    ceiling (a request inserts its prompt alone; its ``finish`` is then its prefill's end)."""

    def __init__(self, page_size: int = 1, prompt_only: bool = False) -> None:
        self.cache = PrefixTree(page_size=page_size)
        self.prompt_only = prompt_only
        self._pending: list[tuple[float, int, Turn]] = []  # (finish, seq, turn)
        self._seq = 0
        self._now = 0.0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.requests = 0

    def _flush(self, now: float) -> None:
        while self._pending and self._pending[0][0] <= now:
            t = heapq.heappop(self._pending)[2]
            ids = t.full if t.inserted == len(t.full) else t.full[:t.inserted]
            t.cursor = self.cache.insert(ids, t.start, t.start[1])

    def observe(self, arrival: float, finish: float, prompt_ids: Sequence[int] | np.ndarray,
                output_ids: Sequence[int] | np.ndarray) -> int:
        """Account one request; returns the prompt tokens the infinite cache held at its arrival. ``finish``: when
        what it inserts enters the cache (its finish; with ``prompt_only``, its prefill's end)."""
        prompt = as_ids(prompt_ids)  # no copy for an int64 array
        return self.observe_turn(arrival, finish, prompt, np.concatenate((prompt, as_ids(output_ids))))[0]

    def observe_turn(self, arrival: float, finish: float, prompt: np.ndarray, full: np.ndarray,
                     prev: Turn | None = None, shared: int = 0) -> tuple[int, Turn]:
        """``observe`` for a conversation: ``prompt`` (int64) and ``full`` = prompt + output; ``prev`` an earlier
        ``Turn`` whose ``full`` shares its first ``shared`` tokens with ``prompt``, whose path in the cache is
        then not compared again. Returns the cached tokens and this request's ``Turn``."""
        arrival = max(arrival, self._now)  # arrivals are nondecreasing; guard against float noise
        self._now = arrival
        self._flush(arrival)
        n = len(prompt)
        cap = max_cacheable(n)
        cursor = prev.cursor if prev is not None else None  # None until prev's answer entered the cache
        shared = min(shared, cap) if cursor is not None else 0
        matched = self.cache.match(prompt[:cap], cursor, shared) if n else (self.cache.root, 0)
        cached = matched[1]
        # the cache only grows: inserting prompt + output (or the prompt) resumes where this match ended
        turn = Turn(full, matched, n if self.prompt_only else len(full))
        heapq.heappush(self._pending, (max(finish, arrival), self._seq, turn))
        self._seq += 1
        self.prompt_tokens += n
        self.cached_tokens += cached
        self.requests += 1
        return cached, turn

    def finish(self) -> None:
        """Insert every pending answer (end of run)."""
        self._flush(float("inf"))

    @property
    def reuse(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def max_cacheable(prompt_len: int) -> int:
    """Most prompt tokens a worker can take from its cache: all but the last (the engine's rule)."""
    return max(prompt_len - 1, 0)
