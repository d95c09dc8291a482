"""The one interface every policy implements (``factory.py`` builds the policy ``--policy`` names).

A policy gets the router-filtered available workers (registration order) and one ``RouteInput``;
it returns a ``Choice`` (a worker URL or None, and the branch label it counted). Policies keep their
own state (maps, rings, trees) and may use the shared context: config, the seeded RNG, the worker
registry (in-flight loads, engine reports) and the metrics. They do no I/O and read time only from
``RouteInput.now``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from mock_gateway.config import GatewayConfig
from mock_gateway.metrics import GatewayMetrics
from mock_gateway.ring import HashRing
from mock_gateway.routing_key import routing_text, routing_tokens
from mock_gateway.workers import Worker, WorkerRegistry


class _Lazy:
    """Marks a ``RouteInput`` field not computed yet."""

    __slots__ = ()


LAZY = _Lazy()

# The branches under which a policy moves a routing key to another worker (a re-pin), by the policy of the
# branch counter ``smg_<policy>_policy_branch_total`` that counts them; ``sim.measures`` sums them as ``re_pins``.
# manual: ``occupied_miss`` (no candidate healthy), ``cap_respill`` (the sticky override's in-flight cap; the
# key's map is manual's, so its counter too), and the re-pins of the ``min_kv`` assignment (``testbed/min_kv.py``).
# bounded_load has no such branch: its ``home``/``walked`` place new keys and moved ones alike.
REPIN_BRANCHES: Mapping[str, frozenset[str]] = {
    "manual": frozenset({"occupied_miss", "cap_respill", "repin_kv", "repin_queue", "repin_load"}),
}


class RouteInput:
    """One request as a policy sees it. ``text`` and ``tokens`` are computed on first read when not given
    (most policies never read the routing text, whose extraction is O(conversation))."""

    __slots__ = ("_text", "_tokens", "body", "endpoint", "exclude", "headers", "key", "leg", "model", "now")

    def __init__(
        self,
        endpoint: str,  # "chat" | "completions" | "generate"
        headers: Mapping[str, str],  # lower-cased names
        body: Mapping[str, Any],
        model: str | None,  # None for a model-less request
        text: str | None = None,  # routing text (cache_aware, prefix_hash); None: routing_text(endpoint, body)
        tokens: list[int] | _Lazy | None = LAZY,  # routing token ids; LAZY: routing_tokens(endpoint, headers, body)
        key: str | None = None,  # the valid header routing key, unstripped (None if absent)
        now: float = 0.0,
        exclude: frozenset[str] = frozenset(),
        leg: str | None = None,  # PD mode: the leg being picked ("prefill" | "decode"); None: a regular worker
    ) -> None:
        self.endpoint = endpoint
        self.headers = headers
        self.body = body
        self.model = model
        self._text = text
        self._tokens = tokens
        self.key = key
        self.now = now
        self.exclude = exclude
        self.leg = leg

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = routing_text(self.endpoint, self.body)
        return self._text

    def text_prefix(self, n: int) -> str:
        """``text[:n]``, without extracting the whole routing text if it is not already known."""
        if self._text is not None:
            return self._text[:n]
        return routing_text(self.endpoint, self.body, n)

    @property
    def tokens(self) -> list[int] | None:
        if self._tokens is LAZY:
            self._tokens = routing_tokens(self.endpoint, self.headers, self.body)
        return self._tokens  # type: ignore[return-value]

    def leg_key(self, key: str) -> str:
        """A sticky map's entry for ``key`` on this leg: SMG's ``WorkerLeg::routing_id_prefix`` namespaces PD legs
        (``prefill:<key>``, ``decode:<key>``) so that each leg is pinned independently."""
        return key if self.leg is None else f"{self.leg}:{key}"

    def __repr__(self) -> str:
        leg = "" if self.leg is None else f", leg={self.leg!r}"
        return f"RouteInput({self.endpoint!r}, model={self.model!r}, key={self.key!r}, now={self.now!r}{leg})"


@dataclass
class Choice:
    url: str | None
    branch: str | None = None
    key: str | None = None  # the key the request is accounted under (per-key in-flight)


@dataclass
class PolicyContext:
    config: GatewayConfig
    rng: random.Random
    registry: WorkerRegistry
    metrics: GatewayMetrics

    def dispatch_tokens(self, req: RouteInput) -> int:
        """Tokens a dispatch credits to the expected-wait selector (p-bar for text requests)."""
        return len(req.tokens) if req.tokens else self.config.least_load_mean_prefill_tokens


class Policy:
    name: ClassVar[str] = ""

    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx

    def select(self, workers: list[Worker], req: RouteInput) -> Choice:
        raise NotImplementedError

    def on_worker_added(self, worker: Worker) -> None:
        pass

    def on_worker_removed(self, url: str) -> None:
        pass

    def tick(self, now: float) -> None:
        pass


class RingPolicy(Policy):
    """A policy that places every worker on SMG's blake3 ring (consistent_hashing, prefix_hash, bounded_load)."""

    def __init__(self, ctx: PolicyContext) -> None:
        super().__init__(ctx)
        self.ring = HashRing()

    def on_worker_added(self, worker: Worker) -> None:
        self.ring.add(worker.url)

    def on_worker_removed(self, url: str) -> None:
        self.ring.remove(url)

    def sync_ring(self, workers: list[Worker]) -> None:
        """Place workers registered after the policy was built."""
        for w in workers:
            if w.url not in self.ring:
                self.ring.add(w.url)


@dataclass
class Periodic:
    """SMG's eviction loop on virtual time: the first tick arms it, then it is due once per ``interval`` elapsed.

    A late tick fires once and skips the missed periods, keeping the schedule on the original grid.
    """

    next_at: float | None = None

    def due(self, now: float, interval: float) -> bool:
        if interval <= 0:
            return False
        if self.next_at is None:
            self.next_at = now + interval
            return False
        if now < self.next_at:
            return False
        self.next_at += interval * max(1, math.floor((now - self.next_at) / interval) + 1)
        return True
