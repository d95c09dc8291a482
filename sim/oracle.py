"""The reuse ceiling: one infinite radix cache that sees every request in order.

``oracle_reuse`` = cached / prompt tokens if all requests shared one unbounded cache: each prompt
is matched and inserted at its arrival, and prompt + output is inserted at its finish, exactly as
a worker's cache would see them if every session stuck to one worker with infinite KV. No routing
can beat it, so it is the line every policy is compared against. It reuses the engine's
``RadixCache`` (capacity None) rather than a second implementation.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from sim.engine.radix import RadixCache


class Oracle:
    """Feed requests in nondecreasing arrival order with ``observe``; read ``reuse``."""

    def __init__(self, page_size: int = 1) -> None:
        self.cache = RadixCache(capacity=None, page_size=page_size)
        self._pending: list[tuple[float, int, np.ndarray]] = []  # (finish, seq, prompt + output)
        self._seq = 0
        self._now = 0.0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.requests = 0

    def _flush(self, now: float) -> None:
        while self._pending and self._pending[0][0] <= now:
            finish, _, ids = heapq.heappop(self._pending)
            self.cache.insert(ids, finish)

    def observe(self, arrival: float, finish: float, prompt_ids: Sequence[int] | np.ndarray,
                output_ids: Sequence[int] | np.ndarray) -> int:
        """Account one request; returns the prompt tokens the infinite cache held at its arrival."""
        arrival = max(arrival, self._now)  # arrivals are nondecreasing; guard against float noise
        self._now = arrival
        self._flush(arrival)
        prompt = np.asarray(prompt_ids, dtype=np.int64)
        cached = max_cacheable(self.cache.peek(prompt), len(prompt))
        self.cache.insert(prompt, arrival)
        full = np.concatenate([prompt, np.asarray(output_ids, dtype=np.int64)])
        heapq.heappush(self._pending, (max(finish, arrival), self._seq, full))
        self._seq += 1
        self.prompt_tokens += len(prompt)
        self.cached_tokens += cached
        self.requests += 1
        return cached

    def finish(self) -> None:
        """Insert every pending answer (end of run)."""
        self._flush(float("inf"))

    @property
    def reuse(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def max_cacheable(matched: int, prompt_len: int) -> int:
    """Cached tokens a worker can use for a prompt: the engine's rule, mirrored (see sim.engine)."""
    return min(matched, prompt_len)
