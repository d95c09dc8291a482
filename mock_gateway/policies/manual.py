"""``manual`` (SMG ``policies/manual.rs``): a routing key is pinned to up to two candidate workers.

Branches: ``vacant`` (new key, assigned and pinned), ``occupied_hit`` (the first healthy candidate
in list order), ``occupied_miss`` (no candidate healthy: a new worker is appended, the oldest dropped
beyond two, so a key returns to its first worker once that is healthy again), ``no_routing_id``
(no valid key: assigned, not pinned), ``no_healthy_workers``. The override path adds ``cap_respill``.
Assignment modes: ``random``, ``min_load`` (gateway in-flight count), ``min_group`` (distinct keys in
flight), ``delegate`` (min_load here; the sticky override asks the wrapped policy instead).
Idle keys are evicted every ``--eviction-interval-secs`` once idle ``--max-idle-secs``.

With ``--routing-key-override`` (1.13.0, observed): a request without a valid header key is keyed by its
body ``rid`` with lineage suffixes stripped; header keys stay unstripped; no in-flight cap and no
``smg_routing_key_source_total``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mock_gateway.policies.base import Choice, Periodic, Policy, PolicyContext, RouteInput
from mock_gateway.routing_key import strip_lineage, valid_key
from mock_gateway.workers import Worker

MAX_CANDIDATE_WORKERS = 2


@dataclass
class Entry:
    candidates: list[str] = field(default_factory=list)
    last_access: float = 0.0

    def push_bounded(self, url: str) -> None:
        if len(self.candidates) >= MAX_CANDIDATE_WORKERS:
            self.candidates.pop(0)
        self.candidates.append(url)

    def pin_front(self, url: str) -> None:
        self.candidates = [url, *[u for u in self.candidates if u != url]][:MAX_CANDIDATE_WORKERS]


class ManualPolicy(Policy):
    name = "manual"

    def __new__(cls, ctx: PolicyContext, mode: str | None = None) -> ManualPolicy:
        """``--assignment-mode min_kv`` (testbed extension) is the KV-aware subclass in ``kv_aware.py``."""
        if cls is ManualPolicy and (mode or ctx.config.assignment_mode) == "min_kv":
            from mock_gateway.policies.kv_aware import KvAwarePolicy

            cls = KvAwarePolicy
        return super().__new__(cls)

    def __init__(self, ctx: PolicyContext, mode: str | None = None) -> None:
        super().__init__(ctx)
        self.mode = mode or ctx.config.assignment_mode or "random"
        self.entries: dict[str, Entry] = {}
        self._eviction = Periodic()
        self._branches = ctx.metrics.counts(ctx.metrics.manual_branch)

    # -- assignment modes ------------------------------------------------------------------------
    def _min_by(self, workers: list[Worker], values: list[int]) -> Worker:
        """Uniformly one of the workers with the smallest value."""
        best = min(values)
        return self.ctx.rng.choice([w for w, v in zip(workers, values, strict=True) if v == best])

    def assign(self, workers: list[Worker], mode: str | None = None) -> Worker:
        mode = mode or self.mode
        if mode in ("min_load", "delegate"):
            return self._min_by(workers, [w.load for w in workers])
        if mode == "min_group":
            return self._min_by(workers, [len(w.key_load) for w in workers])
        return self.ctx.rng.choice(workers)

    # -- selection -------------------------------------------------------------------------------
    def route(
        self, workers: list[Worker], key: str | None, now: float, pick: Callable[[], Worker], cap: int | None = None
    ) -> Choice:
        """The manual decision for ``key``; ``pick`` assigns a worker; ``cap`` is the sticky per-key in-flight cap."""
        m = self.ctx.metrics
        if not workers:
            choice = Choice(None, "no_healthy_workers", key)
        elif key is None:
            choice = Choice(pick().url, "no_routing_id", None)
        else:
            entry = self.entries.get(key)
            healthy = {w.url: w for w in workers}
            if entry is None:
                url = pick().url
                self.entries[key] = Entry([url], now)
                choice = Choice(url, "vacant", key)
            else:
                entry.last_access = now
                pinned = next((u for u in entry.candidates if u in healthy), None)
                if pinned is None:
                    url = pick().url
                    entry.push_bounded(url)
                    choice = Choice(url, "occupied_miss", key)
                elif cap is not None and healthy[pinned].key_load.get(key, 0) >= cap:
                    new = pick()
                    if new.url != pinned and new.key_load.get(key, 0) < cap:
                        entry.pin_front(new.url)
                    choice = Choice(new.url, "cap_respill", key)
                else:
                    choice = Choice(pinned, "occupied_hit", key)
        self._branches[choice.branch].inc()
        m.manual_cache_entries.set(len(self.entries))
        return choice

    def select(self, workers: list[Worker], req: RouteInput) -> Choice:
        key = req.key
        if key is None and self.ctx.config.routing_key_override:  # [E] 1.13.0: rid (stripped), no cap
            rid = valid_key(req.body.get("rid"))
            key = strip_lineage(rid) if rid is not None else None
        return self.route(workers, key, req.now, lambda: self.assign(workers))

    def tick(self, now: float) -> None:
        cfg = self.ctx.config
        interval, max_idle = cfg.eviction_interval_secs, cfg.max_idle_secs
        if max_idle > 0 and self._eviction.due(now, interval):
            self.evict_idle(now)

    def evict_idle(self, now: float) -> int:
        """Drop keys idle for ``max_idle_secs`` or more; the cache-entries gauge is left stale, as in SMG."""
        max_idle = self.ctx.config.max_idle_secs
        stale = [k for k, e in self.entries.items() if now - e.last_access >= max_idle]
        for k in stale:
            del self.entries[k]
        return len(stale)
