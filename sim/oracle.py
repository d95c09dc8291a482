"""The reuse ceiling: one infinite radix cache that sees every request in order.

``oracle_reuse`` = cached / prompt tokens if all requests shared one unbounded cache. It follows
the worker engine's visibility rules exactly (``sim.engine.core``): a prompt is matched at its
arrival against everything *finished* by then, at most ``prompt[:-1]`` (one token is always
computed), and prompt + output enter the cache at the request's finish. A worker's cache only
ever holds a subset of that, so no routing can beat it, and a single worker with unbounded KV
reaches it exactly. It reuses the engine's ``RadixCache`` (capacity None), not a second tree.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from sim.engine.radix import RadixCache, as_ids


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
        prompt = as_ids(prompt_ids)  # no copy for an int64 array
        cached = self.cache.peek(prompt[: max_cacheable(len(prompt))]) if len(prompt) else 0
        full = np.concatenate((prompt, as_ids(output_ids)))
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


def max_cacheable(prompt_len: int) -> int:
    """Most prompt tokens a worker can take from its cache: all but the last (the engine's rule)."""
    return max(prompt_len - 1, 0)
