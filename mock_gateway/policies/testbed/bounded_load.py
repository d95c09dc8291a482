"""Testbed extension, not an SMG feature: consistent hashing with bounded loads, ``--policy bounded_load``.

Mirrokni, Thorup and Zadimoghaddam (SODA'18): a worker accepts a key only while its load (without that
key) is under ``bound = ceil((1 + eps) * average)``, the average counting the item being placed. A key
keeps its current worker while that worker is under the bound (``hit``); otherwise, and for a new key,
it walks SMG's blake3 ring (``mock_gateway.ring``) clockwise from the key's position to the first
available worker under the bound (``home`` if that is the key's ring owner, ``walked`` if it passed a
full one). Since the average counts the new item, some worker is always under the bound; ``fallback``
(least loaded) is only a guard.

Load (``--bounded-load-measure``):

- ``requests``: the gateway's in-flight count (the item is one request);
- ``kv``: projected resident session KV, the sum of the contexts of the worker's live keys (routed within
  ``--session-kv-idle-secs``; context = prompt tokens + ``max_tokens``, see ``session_kv.context_tokens``);
  the item is the request's context.

``eps`` is ``--bounded-load-epsilon``. Requests without a key go to the least loaded worker
(``no_routing_id``). Pins idle for ``--max-idle-secs`` are evicted every ``--eviction-interval-secs``.
Branch counter: ``smg_bounded_load_policy_branch_total{branch}``.
"""

from __future__ import annotations

import math

from prometheus_client import Counter

from mock_gateway.policies.base import Choice, Periodic, PolicyContext, RingPolicy, RouteInput
from mock_gateway.policies.testbed.session_kv import SessionKV, context_tokens
from mock_gateway.workers import Worker

MEASURES = ("requests", "kv")


def load_bound(loads: list[float], item: float, eps: float) -> int:
    """``ceil((1 + eps) * (sum(loads) + item) / n)``: the load a worker must be under to take the item
    (Mirrokni, Thorup and Zadimoghaddam's bounded-load rule)."""
    return math.ceil((1.0 + eps) * (sum(loads) + item) / len(loads) - 1e-9)


class BoundedLoadPolicy(RingPolicy):
    name = "bounded_load"

    def __init__(self, ctx: PolicyContext) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        if cfg.bounded_load_measure not in MEASURES:
            raise ValueError(f"--bounded-load-measure must be one of {MEASURES}")
        self.measure = cfg.bounded_load_measure
        self.eps = cfg.bounded_load_epsilon
        self.kv = SessionKV(cfg.session_kv_idle_secs)
        self.pins: dict[str, tuple[str, float]] = {}  # key -> (worker url, last access)
        self._eviction = Periodic()
        self.branches = Counter(
            "smg_bounded_load_policy_branch",
            "Bounded-load consistent hashing selection branch (testbed extension)",
            ("branch",),
            registry=ctx.metrics.registry,
        )

    def on_worker_removed(self, url: str) -> None:
        super().on_worker_removed(url)
        self.kv.remove_worker(url)

    # -- load ------------------------------------------------------------------------------------
    def load(self, w: Worker, key: str | None) -> int:
        """The worker's load without the key's own share."""
        if self.measure == "kv":
            return self.kv.working_set(w.url) - self.kv.own(key, w.url)
        return w.load - (w.key_load.get(key, 0) if key is not None else 0)

    def bound(self, workers: list[Worker], key: str | None, item: int) -> tuple[dict[str, int], int]:
        loads = {w.url: self.load(w, key) for w in workers}
        return loads, load_bound(list(loads.values()), item, self.eps)

    # -- selection -------------------------------------------------------------------------------
    def _decide(self, workers: list[Worker], req: RouteInput, item: int) -> Choice:
        key = req.key
        if not workers:
            return Choice(None, "no_healthy_workers", key)
        loads, bound = self.bound(workers, key, item)
        if key is None:
            best = min(loads.values())
            return Choice(self.ctx.rng.choice([w for w in workers if loads[w.url] == best]).url, "no_routing_id")
        self.sync_ring(workers)
        pin = self.pins.get(key)
        if pin is not None and pin[0] in loads and loads[pin[0]] < bound:
            return Choice(pin[0], "hit", key)
        owner = self.ring.lookup(key, loads.__contains__)
        url = self.ring.lookup(key, lambda u: u in loads and loads[u] < bound)
        if url is None:
            best = min(loads.values())
            url = self.ctx.rng.choice([w for w in workers if loads[w.url] == best]).url
            return Choice(url, "fallback", key)
        return Choice(url, "home" if url == owner else "walked", key)

    def select(self, workers: list[Worker], req: RouteInput) -> Choice:
        self.kv.expire(req.now)
        item = context_tokens(req.body, req.text, req.tokens) if self.measure == "kv" else 1
        choice = self._decide(workers, req, item)
        if req.key is not None and choice.url is not None:
            self.pins[req.key] = (choice.url, req.now)
            self.kv.touch(req.key, choice.url, item if self.measure == "kv" else 0, req.now)
        self.branches.labels(branch=choice.branch).inc()
        return choice

    # -- idle eviction (as manual) ---------------------------------------------------------------
    def tick(self, now: float) -> None:
        cfg = self.ctx.config
        interval, max_idle = cfg.eviction_interval_secs, cfg.max_idle_secs
        if max_idle <= 0 or not self._eviction.due(now, interval):
            return
        for k in [k for k, (_, t) in self.pins.items() if now - t >= max_idle]:
            del self.pins[k]
