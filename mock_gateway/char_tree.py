"""The approximate radix tree of SMG's cache_aware policy (``kv_index::Tree``), with tenants and LRU eviction.

Keys are sequences: ``str`` (units are Unicode characters, as SMG's char tree) or tuples of token
ids (SMG's token tree, page size ignored). Every node on the path of a string inserted for a tenant
(a worker URL) carries that tenant with a last-access stamp; a match reports how many units matched
and which tenants hold the deepest node reached. Eviction removes per-tenant LRU leaves until the
total size (units summed over tenants) fits. Stamps are a logical counter, so runs are reproducible.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import NamedTuple

MATCHED_TENANTS_CAP = 8


class _Node:
    __slots__ = ("children", "label", "parent", "tenants")

    def __init__(self, label: Sequence, parent: _Node | None) -> None:
        self.label = label
        self.parent = parent
        self.children: dict[object, _Node] = {}
        self.tenants: dict[str, int] = {}


def _common(a: Sequence, b: Sequence, start: int) -> int:
    """Length of the common prefix of ``a`` and ``b[start:]`` (slice comparisons run in C; bisect on a mismatch)."""
    if type(b) is str and b.startswith(a, start):  # the common case, a whole edge, compared without copies
        return len(a)
    n = min(len(a), len(b) - start)
    if a[:n] == b[start : start + n]:
        return n
    lo, hi = 0, n  # a[:lo] matches, a[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[start + lo : start + mid]:
            lo = mid
        else:
            hi = mid
    return lo


class Walk(NamedTuple):
    """Where ``seq`` runs in the tree: the nodes it passes whole, the position after them, and the child
    it enters partly (``common`` units of its label) or None; valid while the tree's version holds."""

    version: int
    seq: Sequence
    path: list[_Node]
    i: int
    partial: _Node | None
    common: int


class CharTree:
    """Radix tree keyed by characters (or token ids) whose nodes record which tenants hold them."""

    def __init__(self) -> None:
        self.root = _Node("", None)
        self.tenant_size: dict[str, int] = {}
        self._stamp = 0
        self._version = 0  # bumped by every change of the tree's shape or tenants

    # -- queries ---------------------------------------------------------------------------------
    def match(self, seq: Sequence) -> tuple[int, list[str]]:
        """(units matched, up to 8 tenants of the deepest node reached); no tenants when nothing matched."""
        matched, tenants, _ = self.match_walk(seq)
        return matched, tenants

    def match_walk(self, seq: Sequence) -> tuple[int, list[str], Walk]:
        """``match``, plus the walk, which ``insert`` of the same ``seq`` reuses if the tree has not changed."""
        w = self._walk(seq)
        matched = w.i + w.common
        if matched == 0:
            return 0, [], w
        last = w.partial if w.partial is not None else w.path[-1]
        ten = last.tenants
        return matched, sorted(ten, key=lambda t: -ten[t])[:MATCHED_TENANTS_CAP], w

    def _walk(self, seq: Sequence) -> Walk:
        path: list[_Node] = []
        node, i, n = self.root, 0, len(seq)
        while i < n:
            child = node.children.get(seq[i])
            if child is None:
                break
            common = _common(child.label, seq, i)
            if common < len(child.label):
                return Walk(self._version, seq, path, i, child, common)
            path.append(child)
            i += common
            node = child
        return Walk(self._version, seq, path, i, None, 0)

    def total_size(self) -> int:
        return sum(self.tenant_size.values())

    def tenants(self) -> set[str]:
        return set(self.tenant_size)

    # -- updates ---------------------------------------------------------------------------------
    def _touch(self, node: _Node, tenant: str, stamp: int) -> None:
        if tenant not in node.tenants:
            self.tenant_size[tenant] = self.tenant_size.get(tenant, 0) + len(node.label)
        node.tenants[tenant] = stamp

    def insert(self, seq: Sequence, tenant: str, walk: Walk | None = None) -> None:
        """Record that ``tenant`` holds the whole of ``seq`` (and so every prefix of it); ``walk`` from
        ``match_walk(seq)`` saves walking the tree again if nothing changed it since."""
        if walk is None or walk.version != self._version or walk.seq is not seq:
            walk = self._walk(seq)
        self._version += 1
        self._stamp += 1
        stamp = self._stamp
        touch = self._touch
        touch(self.root, tenant, stamp)
        for node in walk.path:  # edges seq runs through whole
            touch(node, tenant, stamp)
        node = walk.path[-1] if walk.path else self.root
        i, n = walk.i, len(seq)
        child = walk.partial
        if child is not None:  # split the edge: mid takes the common part and the child's tenants
            common = walk.common
            mid = _Node(child.label[:common], node)
            mid.tenants = dict(child.tenants)
            node.children[seq[i]] = mid
            child.label = child.label[common:]
            child.parent = mid
            mid.children[child.label[0]] = child
            touch(mid, tenant, stamp)
            i += common
            node = mid
        if i < n:  # the rest hangs below as a new leaf (after a split, seq differs from the old child there)
            leaf = _Node(seq[i:], node)
            node.children[seq[i]] = leaf
            touch(leaf, tenant, stamp)

    def _is_tenant_leaf(self, node: _Node, tenant: str) -> bool:
        return tenant in node.tenants and not any(tenant in c.tenants for c in node.children.values())

    def _drop(self, node: _Node, tenant: str) -> None:
        del node.tenants[tenant]
        self.tenant_size[tenant] -= len(node.label)
        if not node.tenants and not node.children and node.parent is not None:
            del node.parent.children[node.label[0]]

    def evict(self, max_size: int) -> int:
        """Evict least-recently-used tenant leaves until the total size is at most ``max_size``; units freed."""
        total = self.total_size()
        if total <= max_size:
            return 0
        self._version += 1
        heap: list[tuple[int, int, str, _Node]] = []
        seq = 0
        stack = [self.root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            if node is self.root:
                continue
            for tenant, stamp in node.tenants.items():
                if self._is_tenant_leaf(node, tenant):
                    heap.append((stamp, seq, tenant, node))
                    seq += 1
        heapq.heapify(heap)
        freed = 0
        while total > max_size and heap:
            stamp, _, tenant, node = heapq.heappop(heap)
            if node.tenants.get(tenant) != stamp or not self._is_tenant_leaf(node, tenant):
                continue
            parent = node.parent
            size = len(node.label)
            self._drop(node, tenant)
            total -= size
            freed += size
            if parent is not None and parent is not self.root:
                for t, st in parent.tenants.items():  # the parent may now be a leaf for several tenants
                    if self._is_tenant_leaf(parent, t):
                        heapq.heappush(heap, (st, seq, t, parent))
                        seq += 1
        return freed

    def remove_tenant(self, tenant: str) -> None:
        """Purge a tenant from every node (a worker was removed)."""
        self._version += 1
        stack = [self.root]
        order = []
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(node.children.values())
        for node in reversed(order):  # children before parents, so emptied subtrees prune bottom-up
            if tenant in node.tenants:
                self._drop(node, tenant)
            elif not node.tenants and not node.children and node.parent is not None:
                node.parent.children.pop(node.label[0], None)
        self.tenant_size.pop(tenant, None)
