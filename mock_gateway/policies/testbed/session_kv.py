"""Projected session KV (testbed extension): what ``bounded_load`` (``--bounded-load-measure kv``) and ``min_kv``
measure instead of request counts.

A request's context is its prompt tokens plus its ``max_tokens``; a worker's working set is the sum of the
contexts of its *live* keys (routed within ``--session-kv-idle-secs``), kept from what the gateway routes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from testbed_common.tokenizer import encode


def context_tokens(body: Mapping[str, Any], text: str, tokens: list[int] | None = None) -> int:
    """Projected KV of the request: prompt tokens (``input_ids`` or the routing text's tokens) + output budget."""
    ids = body.get("input_ids")
    if isinstance(ids, list | np.ndarray) and len(ids):  # an in-process caller may pass an int64 array
        prompt = len(ids)
    elif tokens:
        prompt = len(tokens)
    else:
        prompt = len(encode(text)) if text else 0
    out = body.get("max_tokens", body.get("max_completion_tokens"))
    if not isinstance(out, int) or isinstance(out, bool) or out < 0:
        out = 0
    return max(1, prompt + out)


@dataclass
class Session:
    worker: str
    ctx: int
    last: float


class SessionKV:
    """Projected resident session KV per worker: the sum of live keys' contexts (live = routed within ``live_secs``).

    Pure bookkeeping over routed requests; ``touch`` records a routed request, ``expire`` drops keys idle
    longer than ``live_secs`` from the working sets.
    """

    def __init__(self, live_secs: float) -> None:
        self.live_secs = live_secs
        self.live: OrderedDict[str, Session] = OrderedDict()  # least recently routed first
        self.by_worker: dict[str, int] = {}
        self.keys: dict[str, int] = {}

    def expire(self, now: float) -> None:
        while self.live:
            key, s = next(iter(self.live.items()))
            if now - s.last <= self.live_secs:
                break
            self._drop(key)

    def _drop(self, key: str) -> None:
        s = self.live.pop(key)
        self.keys[s.worker] -= 1
        left = self.by_worker.get(s.worker, 0) - s.ctx
        if left > 0:
            self.by_worker[s.worker] = left
        else:
            self.by_worker.pop(s.worker, None)

    def working_set(self, url: str) -> int:
        return self.by_worker.get(url, 0)

    def own(self, key: str | None, url: str) -> int:
        """The key's live context on ``url`` (0 if it is not live there)."""
        s = self.live.get(key) if key is not None else None
        return s.ctx if s is not None and s.worker == url else 0

    def touch(self, key: str, url: str, ctx: int, now: float) -> None:
        if key in self.live:
            self._drop(key)
        self.live[key] = Session(url, ctx, now)
        self.by_worker[url] = self.by_worker.get(url, 0) + ctx
        self.keys[url] = self.keys.get(url, 0) + 1

    def count(self, url: str) -> int:
        """Live keys on ``url``."""
        return self.keys.get(url, 0)

    def remove_worker(self, url: str) -> None:
        for key in [k for k, s in self.live.items() if s.worker == url]:
            self._drop(key)
