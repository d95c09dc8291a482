"""A radix prefix cache over token ids, in the manner of SGLang's ``RadixCache``.

Edges are labelled with numpy ``int64`` arrays and compared vectorised, so a 30k-token prompt costs a
handful of numpy operations rather than 30k Python steps. Semantics:

- ``page_size`` p: only whole pages are matched and stored (lengths round down to a multiple of p);
  children are keyed by their first page.
- ``capacity`` in tokens (None = unbounded). ``insert`` evicts least-recently-used unlocked leaves so
  that ``resident_tokens <= capacity`` always holds (the newly inserted tokens are the most recent,
  so they go last; if nothing else can go, the tail of the new insert is dropped).
- Nodes on a path locked by ``lock(node)`` (ref-counted, from the node up to the root) are never
  evicted until ``unlock(node)``.
- Eviction takes the least recently used unlocked leaf first; removing a leaf may make its parent an
  evictable leaf. Divergences from SGLang, both for speed and both invisible in matched lengths:
  (1) when a request extends an unlocked leaf (the next turn of a conversation), the leaf's label is
  extended in place instead of hanging a child below it, so a session is one node, not one per turn;
  (2) eviction of a leaf takes only the pages it needs from the leaf's tail (the newest tokens)
  instead of the whole node, which is what SGLang's turn-by-turn chain of leaves approximates.
- Arrays passed in are kept as views (no copies): do not mutate an ``np.ndarray`` after passing it
  to ``insert``. Lists are converted.

Handles returned by ``match``/``insert`` are nodes; a handle stands for the prefix that ends at the
node's end. Locked handles stay valid across splits (a split inserts the new node above them).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

import numpy as np

TokenIds = Sequence[int] | np.ndarray
_INT64 = np.dtype(np.int64)


def as_ids(ids: TokenIds) -> np.ndarray:
    """Token ids as a 1-D ``int64`` array (no copy when already one; lists cost ~13 ns per token)."""
    if type(ids) is np.ndarray and ids.dtype is _INT64 and ids.ndim == 1:  # the usual case, two identity checks
        return ids
    if isinstance(ids, np.ndarray) and ids.dtype == np.int64 and ids.ndim == 1:
        return ids
    if isinstance(ids, list):
        try:
            return np.fromiter(ids, dtype=np.int64, count=len(ids))
        except (TypeError, ValueError, OverflowError):
            pass  # fall through for the error message (or for bools, numpy ints and the like)
    try:
        arr = np.asarray(ids, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"token ids must be integers: {e}") from None
    if arr.ndim != 1:
        raise ValueError("token ids must be a flat sequence of integers")
    return arr


class Node:
    """One radix-tree node. ``key`` is the edge label from the parent; the root has an empty key."""

    __slots__ = ("alive", "children", "key", "lock_ref", "parent", "stamp", "tick")

    def __init__(self, key: np.ndarray, parent: Node | None, stamp: float, tick: int) -> None:
        self.key = key
        self.parent = parent
        self.children: dict[int | bytes, Node] = {}
        self.lock_ref = 0
        self.stamp = stamp
        self.tick = tick
        self.alive = True

    def __lt__(self, other: Node) -> bool:  # heap ties between duplicate entries of one node
        return False

    def __repr__(self) -> str:
        return f"Node(len={len(self.key)}, lock={self.lock_ref}, stamp={self.stamp}, children={len(self.children)})"


class RadixCache:
    """Radix prefix cache with page granularity, token capacity, LRU eviction and ref-counted locks."""

    def __init__(self, capacity: int | None = None, page_size: int = 1) -> None:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        if capacity is not None and capacity < 0:
            raise ValueError("capacity must be >= 0 or None")
        self.capacity = capacity
        self.page_size = page_size
        self._tick = 0
        self.root = Node(np.empty(0, dtype=np.int64), None, float("-inf"), 0)
        self.root.lock_ref = 1  # never evicted, never counted
        self._resident = 0
        self._locked = 0  # tokens in nodes with lock_ref > 0 (SGLang's protected size)
        self._nodes = 0  # excluding the root
        self._heap: list[tuple[float, int, Node]] = []  # candidate evictable leaves, lazily validated
        self.evicted_total = 0

    # ------------------------------------------------------------------ introspection
    @property
    def resident_tokens(self) -> int:
        return self._resident

    @property
    def locked_tokens(self) -> int:
        return self._locked

    @property
    def evictable_tokens(self) -> int:
        return self._resident - self._locked

    @property
    def node_count(self) -> int:
        return self._nodes

    # ------------------------------------------------------------------ helpers
    def _child_key(self, ids: np.ndarray, pos: int) -> int | bytes:
        if self.page_size == 1:
            return int(ids[pos])
        return ids[pos : pos + self.page_size].tobytes()

    def _touch(self, node: Node, now: float) -> None:
        self._tick += 1
        node.stamp = now
        node.tick = self._tick
        if not node.children and node.lock_ref == 0:
            self._push(node)

    def _push(self, node: Node) -> None:
        heapq.heappush(self._heap, (node.stamp, node.tick, node))
        if len(self._heap) > 4 * self._nodes + 1024:
            self._heap = [e for e in self._heap if self._valid(e)]
            heapq.heapify(self._heap)

    @staticmethod
    def _valid(entry: tuple[float, int, Node]) -> bool:
        node = entry[2]
        return node.alive and node.tick == entry[1] and not node.children and node.lock_ref == 0

    def _common(self, key: np.ndarray, ids: np.ndarray, pos: int, limit: int) -> int:
        """Length of the common prefix of ``key`` and ``ids[pos:limit]``, rounded down to pages."""
        m = min(len(key), limit - pos)
        a, b = key[:m], ids[pos : pos + m]
        if a.tobytes() == b.tobytes():  # the common case (a whole edge matches), cheapest as a memcmp
            common = m
        else:
            common = int((a == b).argmin())
        p = self.page_size
        return common if p == 1 else common - common % p

    def _split(self, child: Node, at: int) -> Node:
        """Split ``child`` so that a new node holds its first ``at`` tokens; return the new node."""
        parent = child.parent
        assert parent is not None
        new = Node(child.key[:at], parent, child.stamp, child.tick)
        new.lock_ref = child.lock_ref
        parent.children[self._child_key(child.key, 0)] = new
        child.key = child.key[at:]
        child.parent = new
        new.children[self._child_key(child.key, 0)] = child
        self._nodes += 1
        return new

    def _walk(self, ids: np.ndarray, limit: int, now: float | None, split: bool) -> tuple[int, Node]:
        """Match ``ids[:limit]``; with ``now`` touch the path, with ``split`` end the match on a node."""
        return self._walk_from(self.root, ids, 0, limit, now, split)

    def _walk_from(
        self, node: Node, ids: np.ndarray, pos: int, limit: int, now: float | None, split: bool = True
    ) -> tuple[int, Node]:
        """Like ``_walk`` but starting below ``node``, whose path is known to match ``ids[:pos]``."""
        start = pos
        page = self.page_size
        while pos < limit:
            # _child_key and _common, inlined (the hot loop of every match and insert)
            child = node.children.get(ids.item(pos) if page == 1 else ids[pos : pos + page].tobytes())
            if child is None:
                break
            key = child.key
            m = len(key)
            if limit - pos < m:
                m = limit - pos
                key = key[:m]
            part = ids[pos : pos + m]
            if key.tobytes() == part.tobytes():
                common = m
            else:
                common = int((key == part).argmin())
            if page != 1:
                common -= common % page
            if common < len(child.key):
                if common > 0 and split:
                    child = self._split(child, common)
                    if now is not None:
                        self._touch(child, now)
                    node = child
                pos += common
                break
            if now is not None:
                self._touch(child, now)
            node = child
            pos += common
        return pos - start, node

    # ------------------------------------------------------------------ public API
    def match(self, ids: TokenIds, now: float) -> tuple[int, Node]:
        """Longest cached prefix (whole pages) of ``ids`` and the node where it ends; updates LRU stamps."""
        arr = as_ids(ids)
        limit = len(arr) - len(arr) % self.page_size
        return self._walk(arr, limit, now, split=True)

    def peek(self, ids: TokenIds) -> int:
        """Length of the longest cached prefix of ``ids``, without any side effect."""
        arr = as_ids(ids)
        limit = len(arr) - len(arr) % self.page_size
        return self._walk(arr, limit, None, split=False)[0]

    def insert(self, ids: TokenIds, now: float, after: tuple[int, Node] | None = None) -> Node:
        """Insert ``ids`` (whole pages only) and return the node where they end.

        With a capacity, LRU leaves are evicted afterwards to fit; the returned handle may then be
        truncated or dead if the insert itself did not fit (check with ``peek``).
        ``after=(cached, node)`` from an earlier ``match`` of a prefix of ``ids`` whose node stayed
        locked until now skips re-comparing those ``cached`` tokens (their path is only re-stamped).
        """
        arr = as_ids(ids)
        p = self.page_size
        limit = len(arr) - len(arr) % p
        if self.capacity is not None and limit > self.capacity:
            limit = self.capacity - self.capacity % p
        if after is not None:  # the node ends at the last full page of the earlier prefix
            after = (after[0] - after[0] % p, after[1])
        if after is not None and after[1].alive and 0 < after[0] <= limit:
            pos, node = after
            up = node
            while up is not self.root:
                self._touch(up, now)
                up = up.parent  # type: ignore[assignment]
            if pos < limit:
                more, node = self._walk_from(node, arr, pos, limit, now)
                pos += more
        else:
            pos, node = self._walk(arr, limit, now, split=True)
        if pos < limit:
            if node is not self.root and not node.children and node.lock_ref == 0:
                # extend the leaf in place: its label becomes a view of the new ids
                start = pos - len(node.key)
                node.key = arr[start:limit]
                self._resident += limit - pos
                self._touch(node, now)
            else:
                self._tick += 1
                leaf = Node(arr[pos:limit], node, now, self._tick)
                node.children[self._child_key(arr, pos)] = leaf
                self._nodes += 1
                self._resident += limit - pos
                self._push(leaf)
                node = leaf
        if self.capacity is not None and self._resident > self.capacity:
            self.evict(self._resident - self.capacity)
        return node

    def lock(self, node: Node) -> None:
        """Protect the path from ``node`` to the root from eviction (ref-counted)."""
        while node is not self.root:
            if node.lock_ref == 0:
                self._locked += len(node.key)
            node.lock_ref += 1
            node = node.parent  # type: ignore[assignment]

    def unlock(self, node: Node) -> None:
        """Release one ``lock(node)``."""
        while node is not self.root:
            if node.lock_ref <= 0:
                raise RuntimeError("unlock without matching lock")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._locked -= len(node.key)
                if not node.children and node.alive:
                    self._push(node)
            node = node.parent  # type: ignore[assignment]

    def unlock_gain(self, node: Node, pending: dict[Node, int]) -> int:
        """Tokens that would become unlocked by one more ``unlock(node)``, given ``pending`` unlocks.

        ``pending`` maps nodes to unlocks already simulated; it is updated. Nothing else changes.
        """
        gain = 0
        while node is not self.root:
            d = pending.get(node, 0) + 1
            pending[node] = d
            if node.lock_ref == d:
                gain += len(node.key)
            node = node.parent  # type: ignore[assignment]
        return gain

    def evict(self, n_tokens: int, on_evict: Callable[[Node, int], None] | None = None) -> int:
        """Evict at least ``n_tokens`` (whole pages) from unlocked LRU leaves, if there are that many.

        Returns the number of tokens evicted (may exceed ``n_tokens`` by less than a page, or fall short
        when too little is evictable). ``on_evict(node, keep)`` is told of each piece before it goes: the
        tokens of ``node``'s label from ``keep`` on (HiCache's write_back backs them up).
        """
        evicted = 0
        p = self.page_size
        heap = self._heap
        while evicted < n_tokens and heap:
            entry = heap[0]
            node = entry[2]
            if not (node.alive and node.tick == entry[1] and not node.children and node.lock_ref == 0):
                heapq.heappop(heap)
                continue
            size = len(node.key)
            want = n_tokens - evicted
            if p > 1:
                want = -(-want // p) * p
            if want < size:
                if on_evict is not None:
                    on_evict(node, size - want)
                node.key = node.key[: size - want]
                self._resident -= want
                evicted += want
                break
            heapq.heappop(heap)
            if on_evict is not None:
                on_evict(node, 0)
            parent = node.parent
            assert parent is not None
            del parent.children[self._child_key(node.key, 0)]
            node.alive = False
            node.parent = None
            self._nodes -= 1
            self._resident -= size
            evicted += size
            if parent is not self.root and not parent.children and parent.lock_ref == 0:
                self._push(parent)
        self.evicted_total += evicted
        return evicted

    def path_ids(self, node: Node) -> np.ndarray:
        """The token ids from the root to the end of ``node``."""
        parts = []
        while node is not self.root:
            parts.append(node.key)
            node = node.parent  # type: ignore[assignment]
        parts.reverse()
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def flush(self) -> int:
        """Evict every unlocked token; return how many."""
        return self.evict(self.evictable_tokens)

    def check(self) -> None:
        """Verify the internal invariants (for tests): counts, page alignment, lock monotonicity."""
        resident = locked = nodes = 0
        stack = [self.root]
        while stack:
            node = stack.pop()
            for k, child in node.children.items():
                assert child.alive and child.parent is node
                assert len(child.key) > 0 and len(child.key) % self.page_size == 0
                assert self._child_key(child.key, 0) == k
                assert child.lock_ref <= node.lock_ref or node is self.root
                resident += len(child.key)
                nodes += 1
                if child.lock_ref > 0:
                    locked += len(child.key)
                stack.append(child)
        assert resident == self._resident, (resident, self._resident)
        assert locked == self._locked, (locked, self._locked)
        assert nodes == self._nodes
        if self.capacity is not None:
            assert self._resident <= self.capacity
