"""Testbed extension, not an SMG feature: KV-aware key assignment, ``--policy manual --assignment-mode min_kv``.

An assignment strategy of ``manual`` (``policies/assignment.py``) that also uses manual's re-pin hooks.

SMG's assignment modes look at request or key counts at first placement only. This mode keeps, from what
the gateway routes, each key's projected context (prompt tokens + ``max_tokens``) and, per worker, the
projected KV working set: the sum of the contexts of its *live* keys (routed within
``--session-kv-idle-secs``; ``session_kv.py``). A new key goes to the worker with the smallest working set.
An existing key is re-pinned when

- ``repin_kv``: its worker's working set (the other live keys plus this key's new context) would exceed
  the worker's KV capacity, and another worker can take the key with ``--kv-repin-headroom`` of its
  capacity to spare, or, when every worker is that full, with a projected working set at most
  ``1 - headroom`` times the key's own worker's (its LRU thrashes less; on an over-full worker the key's
  KV is likely evicted already, so the move costs little); or
- ``repin_queue``: its worker is *hot*: the worker's in-flight requests per live key, smoothed in time
  (``--kv-load-smoothing-secs``; measured only while the worker holds ``--kv-hot-min-keys`` live keys, else
  the last estimate is kept), is at least ``--kv-repin-queue-ratio`` times the median over the available
  workers and ``HOT_MIN_GAP`` above it (no worker is hot in the first quarter of the smoothing window).
  Tool and think time are the same everywhere, so by Little's law a slow or queueing worker keeps its
  sessions in flight for a larger share of their time whatever the number of keys it holds. The target is
  a worker that is not hot. Only keys whose context is at most ``--kv-repin-max-tokens`` move (a move is a
  cold prefill of the whole context: caught early, a session leaves a slow worker cheaply; late, the move
  itself would be the tail latency). New keys are not placed on a hot worker either (a slow worker's
  sessions grow slowly, so it would otherwise look KV-light).

- ``repin_load`` (off unless ``--kv-repin-load-epsilon EPS`` is given): its worker's in-flight requests
  reach the bounded-load bound ``ceil((1 + EPS) * average)`` (Mirrokni, Thorup and Zadimoghaddam; the
  average counts the request being placed) *and* the worker's last polled ``/v1/loads`` reports waiting
  requests; the target is the least loaded worker under the bound whose last report shows none waiting.
  The queueing gate keeps the ordinary in-flight fluctuation of closed-loop agents (which crosses such a
  bound all the time at small loads) from moving keys; it fires when KV admission or the prefill lane
  makes requests wait (``kv-bound``: a rollout whose makespan KV capacity sets).
- ``repin_load`` also (off unless ``--kv-repin-spill-gap G`` is given): its worker is KV-full (the projected
  working set with this key's new context is above ``1 - headroom`` of its capacity) and another worker has
  at least ``G`` fewer requests in flight and room for the key (``--kv-repin-headroom`` to spare); the target
  is the least loaded of those. This is the field's fix (``cache_aware`` spilling to the shortest queue under
  imbalance) with two guards it lacks: only a worker whose KV is full sheds keys (its LRU is evicting the
  keys' prefixes anyway, so a move costs little), and only to a worker that can hold the key.

Hysteresis: the target conditions are strictly inside the trigger conditions (a target is never itself
triggering: it has ``--kv-repin-headroom`` of its KV capacity to spare or is that much lighter than the
source, or it is not hot), and a key re-pinned once is not re-pinned again for ``--kv-repin-cooldown-secs``.

Capacity per worker: ``--kv-capacity-tokens`` if given, else the sum of ``max_total_num_tokens`` over the
ranks of the worker's last polled ``/v1/loads``; unknown capacity disables the KV trigger for that worker.
Context size: the request's ``input_ids`` length if it carries them, else the routing text's token count
(``testbed_common.tokenizer.encode``, the testbed's word-level tokenizer), plus ``max_tokens``.

Everything else (branches, candidates, failover, idle eviction, keys from ``rid`` under
``--routing-key-override``) is ``manual``'s. Under ``--routing-key-override`` with another policy, the shared
sticky map uses ``min_kv``'s choice for first placement only (no measures, no re-pin).
"""

from __future__ import annotations

import math

from mock_gateway.policies.assignment import Assignment
from mock_gateway.policies.base import PolicyContext, RouteInput
from mock_gateway.policies.testbed.bounded_load import load_bound
from mock_gateway.policies.testbed.session_kv import SessionKV, context_tokens
from mock_gateway.workers import Worker

NEG_INF = float("-inf")
HOT_MIN_GAP = 0.2  # a hot worker's busy share exceeds the median's by at least this much (absolute)


def kv_capacity(worker: Worker, override: int | None) -> int | None:
    """KV capacity in tokens: the flag, else the polled ``max_total_num_tokens`` (summed over ranks), else None."""
    if override:
        return override
    r = worker.report
    if r is None:
        return None
    total = 0
    for rank in r.ranks:
        v = rank.get("max_total_num_tokens")
        if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
            total += int(v)
    return total or None


def queueing(w: Worker) -> bool:
    """The worker's last polled load report shows requests waiting (for KV or the prefill lane)."""
    return w.report is not None and w.report.waiting > 0


class MinKvAssignment(Assignment):
    """``--assignment-mode min_kv`` (see the module docstring)."""

    name = "min_kv"

    def __init__(self, ctx: PolicyContext) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        self.kv = SessionKV(cfg.session_kv_idle_secs)
        self.context = 0  # projected context of the request being routed (set by ``begin``)
        self.repinned_at: dict[str, float] = {}
        self.smoothed: dict[str, tuple[float, float]] = {}  # url -> (smoothed in-flight per live key, at)
        self.since: float | None = None  # first observation: the smoothing window grows to tau from here
        self.clock = 0.0  # time of the last observation

    # -- measures --------------------------------------------------------------------------------
    def capacity(self, w: Worker) -> int | None:
        return kv_capacity(w, self.ctx.config.kv_capacity_tokens)

    def busy(self, w: Worker) -> float:
        """In-flight requests per live key: the share of its sessions' time a worker keeps them in a request.

        Tool and think time is the same everywhere, so a slow or queueing worker shows a higher share
        (Little's law) whatever the number of keys it holds."""
        return w.load / max(1, self.kv.count(w.url))

    def observe(self, workers: list[Worker], now: float) -> None:
        """Smooth ``busy`` per worker exponentially in time (``--kv-load-smoothing-secs``), at each request.

        A worker holding fewer than ``--kv-hot-min-keys`` live keys says nothing about its speed: its last
        estimate is kept (so a slow worker that lost its keys is not refilled because it went quiet)."""
        cfg = self.ctx.config
        tau = cfg.kv_load_smoothing_secs
        if self.since is None:
            self.since = now
        self.clock = max(self.clock, now)
        for w in workers:
            prev = self.smoothed.get(w.url)
            b = self.busy(w)
            if prev is not None and self.kv.count(w.url) < max(1, cfg.kv_hot_min_keys):
                self.smoothed[w.url] = (prev[0], now)
            elif prev is None or tau <= 0:
                self.smoothed[w.url] = (b, now)
            else:
                avg, at = prev
                a = 1.0 - math.exp(-max(0.0, now - at) / min(tau, max(now - (self.since or 0.0), 1e-9)))
                self.smoothed[w.url] = (avg + a * (b - avg), now)

    def pressure(self, w: Worker) -> float:
        s = self.smoothed.get(w.url)
        return s[0] if s is not None else self.busy(w)

    def hot(self, workers: list[Worker]) -> set[str]:
        """Workers whose smoothed ``busy`` is at least ``--kv-repin-queue-ratio`` times the (lower) median over
        ``workers`` and above it by ``HOT_MIN_GAP``; none before a quarter of the smoothing window has passed."""
        cfg = self.ctx.config
        if len(workers) < 2 or self.since is None or self.clock - self.since < cfg.kv_load_smoothing_secs / 4:
            return set()  # warm-up: a quarter of the smoothing window before any worker is called hot
        p = {w.url: self.pressure(w) for w in workers}
        ref = sorted(p.values())[(len(p) - 1) // 2]
        return {u for u, v in p.items() if v >= cfg.kv_repin_queue_ratio * ref and v - ref >= HOT_MIN_GAP}

    # -- manual's hooks --------------------------------------------------------------------------
    def begin(self, workers: list[Worker], req: RouteInput) -> None:
        self.kv.expire(req.now)
        self.observe(workers, req.now)
        self.context = context_tokens(req.body, req.text, req.tokens)

    def choose(self, workers: list[Worker], req: RouteInput) -> Worker:
        """The smallest projected working set among the workers that are not hot (ties: in-flight)."""
        hot = self.hot(workers)
        pool = [w for w in workers if w.url not in hot] or workers
        best = min((self.kv.working_set(w.url), w.load) for w in pool)
        return self.ctx.rng.choice([w for w in pool if (self.kv.working_set(w.url), w.load) == best])

    def repin(self, workers: list[Worker], key: str, pinned: Worker, now: float) -> tuple[Worker, str] | None:
        move = self.repin_target(workers, key, pinned, self.context, now)
        if move is not None:
            self.repinned_at[key] = now
        return move

    def routed(self, key: str, url: str, now: float) -> None:
        self.kv.touch(key, url, self.context, now)

    def forget(self, keys: list[str]) -> None:
        for k in keys:
            self.repinned_at.pop(k, None)

    def on_worker_removed(self, url: str) -> None:
        self.kv.remove_worker(url)
        self.smoothed.pop(url, None)

    # -- re-pin decision -------------------------------------------------------------------------
    def repin_target(
        self, workers: list[Worker], key: str, pinned: Worker, ctx: int, now: float
    ) -> tuple[Worker, str] | None:
        """Where to move ``key`` off ``pinned`` now, and why; None to stay."""
        cfg = self.ctx.config
        if now - self.repinned_at.get(key, NEG_INF) < cfg.kv_repin_cooldown_secs or len(workers) < 2:
            return None
        others = [w for w in workers if w.url != pinned.url]
        cap = self.capacity(pinned)
        projected = self.kv.working_set(pinned.url) - self.kv.own(key, pinned.url) + ctx
        if cap is not None and projected > cap:
            fits = [w for w in others if self.has_room(w, key, ctx)]
            if not fits:  # everyone is full: a much lighter worker still thrashes less (the key's KV is likely gone)
                keep = (1.0 - cfg.kv_repin_headroom) * projected
                fits = [w for w in others if self.kv.working_set(w.url) - self.kv.own(key, w.url) + ctx <= keep]
            if fits:
                return self._best(fits, key), "repin_kv"
        eps = cfg.kv_repin_load_epsilon
        if eps is not None:
            loads = {w.url: w.load for w in workers}
            bound = load_bound(list(loads.values()), 1, eps)
            if loads[pinned.url] >= bound and queueing(pinned):
                under = [w for w in others if loads[w.url] < bound and not queueing(w)]
                if under:
                    least = min(loads[w.url] for w in under)
                    return self._best([w for w in under if loads[w.url] == least], key), "repin_load"
        gap = cfg.kv_repin_spill_gap
        if gap is not None and cap is not None and projected > (1.0 - cfg.kv_repin_headroom) * cap:
            roomy = [w for w in others if w.load <= pinned.load - gap and self.has_room(w, key, ctx)]
            if roomy:
                least = min(w.load for w in roomy)
                return self._best([w for w in roomy if w.load == least], key), "repin_load"
        hot = self.hot(workers)
        if pinned.url in hot and ctx <= cfg.kv_repin_max_tokens:
            calm = [w for w in others if w.url not in hot]
            if calm:
                return self._best(calm, key), "repin_queue"
        return None

    def has_room(self, w: Worker, key: str, ctx: int) -> bool:
        """The key fits on ``w`` with ``--kv-repin-headroom`` of its capacity to spare."""
        c = self.capacity(w)
        return (
            c is not None
            and self.kv.working_set(w.url) - self.kv.own(key, w.url) + ctx
            <= (1.0 - self.ctx.config.kv_repin_headroom) * c
        )

    def _best(self, workers: list[Worker], key: str) -> Worker:
        def score(w: Worker) -> tuple[int, int]:
            return self.kv.working_set(w.url) - self.kv.own(key, w.url), w.load

        best = min(score(w) for w in workers)
        return self.ctx.rng.choice([w for w in workers if score(w) == best])
