"""``manual`` (SMG ``policies/manual.rs``): a routing key is pinned to up to two candidate workers.

Branches: ``vacant`` (new key, assigned and pinned), ``occupied_hit`` (the first healthy candidate
in list order), ``occupied_miss`` (no candidate healthy: a new worker is appended, the oldest dropped
beyond two, so a key returns to its first worker once that is healthy again), ``no_routing_id``
(no valid key: assigned, not pinned), ``no_healthy_workers``. The override path adds ``cap_respill``.
Assignment is a strategy (``assignment.py``, ``--assignment-mode``); a testbed strategy may also re-pin a
key instead of an ``occupied_hit`` under its own branch label (``testbed/min_kv.py``).
Idle keys are evicted every ``--eviction-interval-secs`` once idle ``--max-idle-secs``. In PD mode each leg's
entry is namespaced (``prefill:<key>``, ``decode:<key>``; ``RouteInput.leg_key``) and every leg's pick is one branch
event; requests stay accounted under the bare key.

With ``--routing-key-override`` (1.13.0, observed): a request without a valid header key is keyed by its
body ``rid`` with lineage suffixes stripped; header keys stay unstripped; no in-flight cap and no
``smg_routing_key_source_total``.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

from mock_gateway.policies.assignment import Assignment
from mock_gateway.policies.base import Choice, Periodic, Policy, PolicyContext, RouteInput
from mock_gateway.routing_key import strip_lineage, valid_key
from mock_gateway.workers import Worker

MAX_CANDIDATE_WORKERS = 2


@dataclass
class Entry:
    candidates: list[str] = field(default_factory=list)
    last_access: float = 0.0

    def pinned(self, healthy: Container[str]) -> str | None:
        """The first healthy candidate."""
        return next((u for u in self.candidates if u in healthy), None)

    def push_bounded(self, url: str) -> None:
        if len(self.candidates) >= MAX_CANDIDATE_WORKERS:
            self.candidates.pop(0)
        self.candidates.append(url)

    def pin_front(self, url: str) -> None:
        self.candidates = [url, *[u for u in self.candidates if u != url]][:MAX_CANDIDATE_WORKERS]


class ManualPolicy(Policy):
    name = "manual"

    def __init__(self, ctx: PolicyContext, assignment: Assignment) -> None:
        super().__init__(ctx)
        self.assignment = assignment
        self.entries: dict[str, Entry] = {}
        self._eviction = Periodic()
        self._branches = ctx.metrics.counts(ctx.metrics.manual_branch)

    def _counted(self, choice: Choice) -> Choice:
        self._branches[choice.branch].inc()
        self.ctx.metrics.manual_cache_entries.set(len(self.entries))
        return choice

    # -- selection -------------------------------------------------------------------------------
    def route(
        self, workers: list[Worker], key: str | None, req: RouteInput, cap: int | None = None, repin: bool = False
    ) -> Choice:
        """The manual decision for ``key``: ``cap`` is the sticky per-key in-flight cap; ``repin`` lets the
        assignment move a key off its healthy pinned worker (manual's own ``select`` only)."""
        now = req.now
        if not workers:
            return self._counted(Choice(None, "no_healthy_workers", key))
        if key is None:
            return self._counted(Choice(self.assignment.choose(workers, req).url, "no_routing_id", None))
        entry = self.entries.get(pin := req.leg_key(key))
        if entry is None:
            url = self.assignment.choose(workers, req).url
            self.entries[pin] = Entry([url], now)
            return self._counted(Choice(url, "vacant", key))
        entry.last_access = now
        healthy = {w.url: w for w in workers}
        pinned = entry.pinned(healthy)
        if pinned is None:
            url = self.assignment.choose(workers, req).url
            entry.push_bounded(url)
            return self._counted(Choice(url, "occupied_miss", key))
        if cap is not None and healthy[pinned].key_load.get(key, 0) >= cap:
            new = self.assignment.choose(workers, req)
            if new.url != pinned and new.key_load.get(key, 0) < cap:
                entry.pin_front(new.url)
            return self._counted(Choice(new.url, "cap_respill", key))
        if repin and (move := self.assignment.repin(workers, pin, healthy[pinned], now)) is not None:
            target, branch = move
            entry.pin_front(target.url)
            return self._counted(Choice(target.url, branch, key))
        return self._counted(Choice(pinned, "occupied_hit", key))

    def select(self, workers: list[Worker], req: RouteInput) -> Choice:
        key = req.key
        if key is None and self.ctx.config.routing_key_override:  # [E] 1.13.0: rid (stripped), no cap
            rid = valid_key(req.body.get("rid"))
            key = strip_lineage(rid) if rid is not None else None
        self.assignment.begin(workers, req)
        choice = self.route(workers, key, req, repin=True)
        if key is not None and choice.url is not None:  # the assignment sees the leg's entry, as evict_idle forgets it
            self.assignment.routed(req.leg_key(key), choice.url, req.now)
        return choice

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
        self.assignment.forget(stale)
        return len(stale)

    def on_worker_removed(self, url: str) -> None:
        self.assignment.on_worker_removed(url)
