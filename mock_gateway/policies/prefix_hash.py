"""``prefix_hash`` (SMG ``policies/prefix_hash.rs``): xxh3 of the key or prompt prefix, placed on the blake3 ring.

Key bytes: the routing key; else the first ``--prefix-token-count`` token ids (u32 little-endian);
else the first 4 x that many characters of the routing text. The ring target is taken if its
in-flight load is at most ``max(avg * load_factor, avg + abs)`` with ``avg = (sum + 1) / n``
(``ring_hit``); otherwise the least-loaded passing worker (``load_balance_walk``), or the target
anyway if none passes. Nothing to hash: least loaded (``no_routing_key``).
"""

from __future__ import annotations

import struct

from mock_gateway.policies.base import Choice, RingPolicy, RouteInput
from mock_gateway.ring import prefix_ring_key
from mock_gateway.workers import Worker


def key_bytes(req: RouteInput, prefix_token_count: int) -> bytes:
    if req.key is not None:
        return req.key.encode("utf-8")
    if req.tokens:
        ids = req.tokens[:prefix_token_count]
        return struct.pack(f"<{len(ids)}I", *ids)
    return req.text_prefix(4 * prefix_token_count).encode("utf-8")


def least_loaded(workers: list[Worker]) -> Worker:
    return min(workers, key=lambda w: w.load)


class PrefixHashPolicy(RingPolicy):
    name = "prefix_hash"

    def _decide(self, workers: list[Worker], req: RouteInput) -> Choice:
        if not workers:
            return Choice(None, "no_healthy_workers", req.key)
        data = key_bytes(req, self.ctx.config.prefix_token_count)
        if not data:
            return Choice(least_loaded(workers).url, "no_routing_key", req.key)
        self.sync_ring(workers)
        by_url = {w.url: w for w in workers}
        target = self.ring.lookup(prefix_ring_key(data), by_url.__contains__)
        if target is None:
            return Choice(least_loaded(workers).url, "fallback_least_load", req.key)
        cfg = self.ctx.config
        total = sum(w.load for w in workers)
        avg = (total + 1) / len(workers)
        limit = max(avg * cfg.prefix_hash_load_factor, avg + cfg.prefix_hash_balance_abs_threshold)
        if total == 0 or by_url[target].load <= limit:
            return Choice(target, "ring_hit", req.key)
        passing = [w for w in workers if w.load <= limit]
        if passing:
            return Choice(least_loaded(passing).url, "load_balance_walk", req.key)
        return Choice(target, "ring_hit", req.key)

    def select(self, workers: list[Worker], req: RouteInput) -> Choice:
        choice = self._decide(workers, req)
        self.ctx.metrics.counts(self.ctx.metrics.ph_branch)[choice.branch].inc()
        return choice
