"""``consistent_hashing`` (SMG ``policies/consistent_hashing.rs``): the blake3 ring.

Priority: ``x-smg-target-worker`` (an index into the available list: ``target_worker_hit``, or
``target_worker_miss`` and no worker), the routing key (``routing_key_hit``), the implicit key from
``x-forwarded-for`` then ``cookie`` (``implicit_key_hit``, 1.13.0), else uniform random
(``random_fallback``). Unhealthy owners are skipped clockwise; keys return when they recover.
"""

from __future__ import annotations

from mock_gateway.policies.base import Choice, RingPolicy, RouteInput
from mock_gateway.workers import Worker

TARGET_WORKER_HEADER = "x-smg-target-worker"


class ConsistentHashingPolicy(RingPolicy):
    name = "consistent_hashing"

    def _decide(self, workers: list[Worker], req: RouteInput) -> Choice:
        if not workers:
            return Choice(None, "no_healthy_workers", req.key)
        target = req.headers.get(TARGET_WORKER_HEADER)
        if target is not None:
            try:
                idx = int(target.strip())
            except ValueError:
                idx = -1
            if 0 <= idx < len(workers):
                return Choice(workers[idx].url, "target_worker_hit", req.key)
            return Choice(None, "target_worker_miss", req.key)
        healthy = {w.url for w in workers}
        self.sync_ring(workers)
        if req.key is not None:
            url = self.ring.lookup(req.key, healthy.__contains__)
            return Choice(url, "routing_key_hit" if url else "no_healthy_workers", req.key)
        # [E] 1.13.0: x-forwarded-for if present (an empty one does not fall through to cookie), else cookie
        implicit = req.headers.get("x-forwarded-for", req.headers.get("cookie"))
        if implicit:
            url = self.ring.lookup(implicit, healthy.__contains__)
            if url:
                return Choice(url, "implicit_key_hit", None)
        return Choice(self.ctx.rng.choice(workers).url, "random_fallback", None)

    def select(self, workers: list[Worker], req: RouteInput) -> Choice:
        choice = self._decide(workers, req)
        self.ctx.metrics.counts(self.ctx.metrics.ch_branch)[choice.branch].inc()
        return choice
