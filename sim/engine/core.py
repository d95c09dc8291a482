"""The pure worker engine: one SGLang-like worker, driven by the caller's clock.

``Engine.submit(now, prompt_ids, output_ids)`` computes a request's whole timeline at its arrival
and returns it; the caller (the simulator in virtual time, or the worker app in scaled wall-clock
time, which then sleeps until ``finish``) passes nondecreasing ``now``. Nothing here reads a clock
or does I/O. The model, in order of the arrival-time computation:

1. Commit every request finished by ``now`` (``advance``), in finish order: its prompt + output ids
   go into the radix cache (so the next turn of a conversation reuses all of it), its lock on its
   cached prefix is released, its KV reservation is freed.
2. Match the prompt in the cache and lock the matched prefix until the request finishes. As in
   SGLang, at least one prompt token is always computed (the match covers ``prompt[:-1]``).
   **Visibility:** a request's tokens enter the cache at its *finish*, not at its prefill as in
   SGLang. Only concurrent requests sharing a not-yet-cached prefix see the difference (they miss
   where SGLang would hit); consecutive turns of a session, which wait for each other, do not.
3. KV admission. The pool holds the cache's resident tokens plus, for every admitted unfinished
   request, its reservation ``prompt - cached + output`` (the cached prefix is shared, locked in
   the tree). Reservations are taken at arrival. If the pool lacks room, unlocked LRU cache is
   evicted now (``RequestTiming.evicted_tokens``). If locked KV and reservations still fill it,
   the request waits until enough earlier requests finish: each finish frees its reservation and
   unlocks its prefix (their finish times are known), and the cache is trimmed as they finish
   (those evictions count in ``stats.evicted_tokens``, not in any request's timing).
   The look-ahead counts each earlier request's unlock of its cached prefix as freed only if that
   request is the prefix's sole holder *at this arrival*; a later arrival that shares and locks the
   prefix before it is freed makes the promise stale, and KV in use then exceeds the pool for a while
   (``stats.peak_kv_tokens`` shows it). Independent sessions never share a prefix, so this needs
   concurrent requests with a common, otherwise unlocked prefix while the pool is full.
   A request whose prompt + output alone exceeds the pool is admitted alone once every earlier
   request has finished, after the whole unlocked cache is evicted; it runs over capacity (token
   usage > 1) and at its finish the cache keeps the most recent part of it that fits.
4. Start = max(arrival, prefill lane free (one FCFS lane), a decode slot free (at most
   ``max_running_requests`` unfinished), KV ready). First token = start + prefill time; finish =
   first token + (output - 1) decode steps at the batch size and total context of the requests
   still running at the first token. ``config.slowdown`` multiplies both durations.
   Timelines are fixed at arrival: a later arrival does not slow down requests already admitted.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass

import numpy as np

from .latency import decode_time, prefill_time
from .radix import Node, RadixCache, TokenIds, as_ids
from .types import EngineLoad, EngineStats, RequestTiming, WorkerConfig

GEN_THROUGHPUT_WINDOW = 5.0  # seconds of history for EngineLoad.gen_throughput
_NEG_INF = float("-inf")


@dataclass(slots=True)
class _Request:
    arrival: float
    start: float
    first_token: float
    finish: float
    prompt: np.ndarray
    output: np.ndarray
    node: Node  # locked cached-prefix handle
    cached: int
    alloc: int  # KV reserved outside the cache: prompt - cached + output


class Engine:
    """One worker: radix cache, FCFS prefill lane, decode slots, KV pool; time passed in."""

    def __init__(self, config: WorkerConfig | None = None) -> None:
        self.config = config or WorkerConfig()
        if self.config.max_running_requests < 1:
            raise ValueError("max_running_requests must be >= 1")
        if self.config.slowdown <= 0:
            raise ValueError("slowdown must be > 0")
        self.cache = RadixCache(capacity=None, page_size=self.config.page_size)  # the engine trims
        self.stats = EngineStats()
        self._capacity = self.config.kv_capacity_tokens
        self._now = _NEG_INF
        # unfinished requests, sorted by (finish, submission order); parallel lists for bisect
        self._finishes: list[float] = []
        self._ctxs: list[float] = []
        self._allocs: list[int] = []
        self._reqs: list[_Request] = []
        self._alloc_total = 0
        self._lane_free = _NEG_INF
        self._busy_until = _NEG_INF
        self._recent: deque[tuple[float, float, int]] = deque()  # committed (first_token, finish, output)
        self._not_started: deque[tuple[float, int]] = deque()  # (start, alloc) in submission (= start) order
        self._not_started_alloc = 0

    # ------------------------------------------------------------------ time
    @property
    def now(self) -> float:
        """The latest time seen by ``submit``/``advance``/``load``."""
        return self._now

    @property
    def in_flight(self) -> int:
        """Admitted requests not yet committed (running or waiting)."""
        return len(self._reqs)

    def advance(self, now: float) -> None:
        """Commit every request finished by ``now``, in finish order."""
        finishes = self._finishes
        while finishes and finishes[0] <= now:
            self._commit()
        if now > self._now:
            self._now = now
        pending = self._not_started
        while pending and pending[0][0] <= now:
            self._not_started_alloc -= pending.popleft()[1]

    def used_tokens(self) -> int:
        """KV in use now: locked cache plus the reservations of requests that have started."""
        return self.cache.locked_tokens + self._alloc_total - self._not_started_alloc

    def _commit(self) -> None:
        del self._finishes[0]
        del self._ctxs[0]
        del self._allocs[0]
        req = self._reqs.pop(0)
        cache = self.cache
        cache.unlock(req.node)
        full = _join(req.prompt, req.output)
        cache.insert(full, req.finish, after=(req.cached, req.node))
        self._alloc_total -= req.alloc
        self._trim()
        self._recent.append((req.first_token, req.finish, len(req.output)))

    def _trim(self) -> int:
        """Evict so that resident cache + reservations fit the pool (as far as unlocked cache allows)."""
        if self._capacity is None:
            return 0
        over = self.cache.resident_tokens + self._alloc_total - self._capacity
        if over <= 0:
            return 0
        evicted = self.cache.evict(over)
        self.stats.evicted_tokens += evicted
        return evicted

    # ------------------------------------------------------------------ requests
    def submit(self, now: float, prompt_ids: TokenIds, output_ids: TokenIds) -> RequestTiming:
        """Admit a request arriving at ``now`` and return its whole timeline.

        ``now`` earlier than the latest time seen is treated as that time. ``output_ids`` are the
        exact output tokens (their count is the output length). numpy arrays are kept, not copied:
        do not mutate them afterwards.
        """
        now = float(now)
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now}")
        if now < self._now:
            now = self._now
        self.advance(now)
        prompt = as_ids(prompt_ids)
        output = as_ids(output_ids)
        n_prompt = len(prompt)
        n_out = len(output)
        if n_prompt == 0:
            raise ValueError("empty prompt")
        cfg = self.config
        cache = self.cache
        cached, node = cache.match(prompt[: n_prompt - 1], now)
        cache.lock(node)
        new = n_prompt - cached
        alloc = new + n_out

        evicted = 0
        kv_ready = _NEG_INF
        cap = self._capacity
        if cap is not None:
            free = cap - cache.resident_tokens - self._alloc_total
            if free < alloc:
                evicted = cache.evict(alloc - free)
                self.stats.evicted_tokens += evicted
                free += evicted
                if free < alloc:
                    kv_ready = self._kv_ready(alloc - free)
                    if n_prompt + n_out > cap:
                        self.stats.oversized_requests += 1
        self._alloc_total += alloc

        finishes = self._finishes
        n = len(finishes)
        m = cfg.max_running_requests
        slot_free = finishes[n - m] if n >= m else _NEG_INF
        ready = max(now, self._lane_free, slot_free)
        start = ready if ready >= kv_ready else kv_ready
        if kv_ready > ready:
            self.stats.kv_wait_requests += 1
            self.stats.kv_wait_time += kv_ready - ready

        lat = cfg.latency
        t_prefill = prefill_time(lat, new, cached) * cfg.slowdown
        first = start + t_prefill
        self._lane_free = first
        i = bisect_right(finishes, first)
        own_ctx = n_prompt + n_out / 2
        ctx = own_ctx + sum(self._ctxs[i:])
        finish = first + decode_time(lat, n_out, 1 + n - i, ctx) * cfg.slowdown

        j = bisect_right(finishes, finish)
        if start > now:
            self._not_started.append((start, alloc))
            self._not_started_alloc += alloc
        # KV held when this request starts: its own, the cache still locked then, and the earlier requests
        # still running then (those finished by then have unlocked their prefixes)
        k = bisect_right(finishes, start)
        in_use = cache.locked_tokens + alloc + sum(self._allocs[k:])
        if k:
            pending: dict[Node, int] = {}
            gain = cache.unlock_gain
            for req in self._reqs[:k]:
                in_use -= gain(req.node, pending)
        finishes.insert(j, finish)
        self._ctxs.insert(j, own_ctx)
        self._allocs.insert(j, alloc)
        self._reqs.insert(j, _Request(now, start, first, finish, prompt, output, node, cached, alloc))

        st = self.stats
        st.requests += 1
        st.prompt_tokens += n_prompt
        st.cached_tokens += cached
        st.output_tokens += n_out
        st.prefill_time += t_prefill
        busy_from = start if start > self._busy_until else self._busy_until
        if finish > busy_from:
            st.busy_time += finish - busy_from
            self._busy_until = finish
        if in_use > st.peak_kv_tokens:
            st.peak_kv_tokens = in_use
        return _timing(now, start, first, finish, n_prompt, cached, n_out, evicted)

    def _kv_ready(self, deficit: int) -> float:
        """Earliest finish of an unfinished request after which ``deficit`` more tokens can be freed."""
        pending: dict[Node, int] = {}
        freed = 0
        gain = self.cache.unlock_gain
        for req in self._reqs:
            freed += req.alloc + gain(req.node, pending)
            if freed >= deficit:
                return req.finish
        # prompt + output exceeds the pool: run alone after everything before it
        return self._finishes[-1] if self._finishes else _NEG_INF

    # ------------------------------------------------------------------ queries
    def load(self, now: float) -> EngineLoad:
        """Load at ``now`` (commits finishes up to ``now`` first), in SGLang's terms.

        ``num_used_tokens`` = locked cache + KV of started requests; unlike SGLang it includes the
        prefixes locked by waiting requests (they lock at arrival here, at scheduling in SGLang).
        ``gen_throughput`` = output tokens produced in the last ``GEN_THROUGHPUT_WINDOW`` seconds
        (each request's tokens spread evenly from first token to finish) / the window.
        """
        self.advance(now)
        running = waiting = waiting_uncached = 0
        lo = now - GEN_THROUGHPUT_WINDOW
        generated = 0.0
        for req in self._reqs:
            if req.start <= now:
                running += 1
                generated += _tokens_in_window(req.first_token, req.finish, len(req.output), lo, now)
            else:
                waiting += 1
                waiting_uncached += len(req.prompt) - req.cached
        recent = self._recent
        while recent and recent[0][1] <= lo:
            recent.popleft()
        for first, finish, n_out in recent:
            generated += _tokens_in_window(first, finish, n_out, lo, now)
        used = (
            self.used_tokens()
            if now >= self._now
            else self.cache.locked_tokens + sum(r.alloc for r in self._reqs if r.start <= now)
        )
        cap = self._capacity
        st = self.stats
        if used > st.peak_kv_tokens:
            st.peak_kv_tokens = used
        return EngineLoad(
            num_running_reqs=running,
            num_waiting_reqs=waiting,
            num_waiting_uncached_tokens=waiting_uncached,
            num_used_tokens=used,
            max_total_num_tokens=cap if cap is not None else 0,
            token_usage=used / cap if cap else 0.0,
            cache_hit_rate=st.cache_hit_rate,
            gen_throughput=generated / GEN_THROUGHPUT_WINDOW,
            max_running_requests=self.config.max_running_requests,
        )

    def peek_cached(self, prompt_ids: TokenIds) -> int:
        """Prompt tokens a request with this prompt would find cached now (no side effects)."""
        prompt = as_ids(prompt_ids)
        if len(prompt) == 0:
            return 0
        return self.cache.peek(prompt[: len(prompt) - 1])

    def flush_cache(self) -> int:
        """Drop every unlocked cached token (SGLang's ``/flush_cache``); return how many."""
        return self.cache.flush()


def _timing(
    arrival: float, start: float, first: float, finish: float, prompt: int, cached: int, output: int, evicted: int
) -> RequestTiming:
    """``RequestTiming(...)`` without the frozen dataclass's per-field ``object.__setattr__`` (a fifth of the cost)."""
    t = _new(RequestTiming)
    t.__dict__.update(
        arrival=arrival,
        start=start,
        first_token=first,
        finish=finish,
        prompt_tokens=prompt,
        cached_tokens=cached,
        output_tokens=output,
        evicted_tokens=evicted,
    )
    return t


_new = object.__new__


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _join(prompt: np.ndarray, output: np.ndarray) -> np.ndarray:
    """``prompt + output`` as one array; a view, not a copy, when ``output`` directly follows ``prompt``
    in one buffer (as when a caller slices both out of a session's token array)."""
    if not len(output):
        return prompt
    root = _root(prompt)
    if (
        root is _root(output)
        and root.dtype == np.int64
        and root.flags.c_contiguous
        and prompt.flags.c_contiguous
        and output.flags.c_contiguous
    ):
        p0 = prompt.__array_interface__["data"][0]
        if output.__array_interface__["data"][0] == p0 + prompt.nbytes:
            off = (p0 - root.__array_interface__["data"][0]) // 8
            return root.reshape(-1)[off : off + len(prompt) + len(output)]
    return np.concatenate((prompt, output))


def _tokens_in_window(first: float, finish: float, n_out: int, lo: float, hi: float) -> float:
    """Output tokens produced in ``(lo, hi]``, the first at ``first`` and the rest evenly up to ``finish``."""
    if n_out <= 0 or finish <= lo or first > hi:
        return 0.0
    if n_out == 1 or finish <= first:
        return float(n_out) if lo < first <= hi else 0.0
    count = 1.0 if lo < first <= hi else 0.0
    rate = (n_out - 1) / (finish - first)
    a = max(lo, first)
    b = min(hi, finish)
    if b > a:
        count += rate * (b - a)
    return count
