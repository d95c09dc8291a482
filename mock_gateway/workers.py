"""Worker registry: health status, circuit breaker, in-flight load per worker and per key, polled engine load.

Pure state; every time-dependent call takes ``now``. The registry keeps registration order, which is
the order SMG's policies see (round_robin's sequence, consistent_hashing's target index).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, ValuesView
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

CB_CLOSED, CB_OPEN, CB_HALF_OPEN = "closed", "open", "half_open"
CB_STATE_VALUE = {CB_CLOSED: 0, CB_OPEN: 1, CB_HALF_OPEN: 2}


@dataclass
class EngineReport:
    """One polled ``/v1/loads`` answer, summed (counts) or averaged (ratios) over DP ranks."""

    running: int = 0
    waiting: int = 0
    waiting_uncached_tokens: int = 0
    token_usage: float = 0.0
    gen_throughput: float = 0.0
    cache_hit_rate: float = 0.0
    at: float = 0.0
    ranks: list[dict] = field(default_factory=list)

    @classmethod
    def parse(cls, load: Any, now: float) -> EngineReport | None:
        """From SMG's ``WorkerLoadResponse`` JSON (``{"loads": [...]}``) or an object with EngineLoad's fields."""
        if isinstance(load, Mapping):
            ranks = load.get("loads")
            if not isinstance(ranks, list) or not ranks or not all(isinstance(r, Mapping) for r in ranks):
                return None
        elif load is not None and hasattr(load, "num_running_reqs"):
            ranks = [
                {
                    k: getattr(load, k)
                    for k in (
                        "num_running_reqs",
                        "num_waiting_reqs",
                        "num_waiting_uncached_tokens",
                        "token_usage",
                        "gen_throughput",
                        "cache_hit_rate",
                    )
                }
            ]
        else:
            return None

        def num(r: Mapping, k: str) -> float:
            v = r.get(k, 0)
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0

        n = len(ranks)
        return cls(
            running=int(sum(num(r, "num_running_reqs") for r in ranks)),
            waiting=int(sum(num(r, "num_waiting_reqs") for r in ranks)),
            waiting_uncached_tokens=int(sum(num(r, "num_waiting_uncached_tokens") for r in ranks)),
            token_usage=sum(num(r, "token_usage") for r in ranks) / n,
            gen_throughput=sum(num(r, "gen_throughput") for r in ranks),
            cache_hit_rate=sum(num(r, "cache_hit_rate") for r in ranks) / n,
            at=now,
            ranks=[dict(r) for r in ranks],
        )


@dataclass
class CircuitBreaker:
    """SMG's per-worker breaker: opens after ``failure_threshold`` consecutive failures, half-opens after
    ``timeout`` (or when health returns), closes after ``success_threshold`` successes while half-open."""

    failure_threshold: int = 10
    success_threshold: int = 3
    timeout: float = 60.0
    enabled: bool = True
    state: str = CB_CLOSED
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    opened_at: float = 0.0

    def can_execute(self) -> bool:
        return not self.enabled or self.state != CB_OPEN

    def _go(self, to: str, now: float) -> tuple[str, str]:
        frm, self.state = self.state, to
        if to == CB_OPEN:
            self.opened_at = now
        self.consecutive_successes = 0
        if to == CB_CLOSED:
            self.consecutive_failures = 0
        return frm, to

    def tick(self, now: float) -> tuple[str, str] | None:
        if self.enabled and self.state == CB_OPEN and now - self.opened_at >= self.timeout:
            return self._go(CB_HALF_OPEN, now)
        return None

    def readmit(self, now: float) -> tuple[str, str] | None:
        """Health came back: an open breaker half-opens at once."""
        return self._go(CB_HALF_OPEN, now) if self.enabled and self.state == CB_OPEN else None

    def record(self, ok: bool, now: float) -> tuple[str, str] | None:
        if not self.enabled:
            return None
        if ok:
            self.consecutive_failures = 0
            self.consecutive_successes += 1
            if self.state == CB_HALF_OPEN and self.consecutive_successes >= self.success_threshold:
                return self._go(CB_CLOSED, now)
            return None
        self.consecutive_successes = 0
        self.consecutive_failures += 1
        if self.state == CB_HALF_OPEN or (
            self.state == CB_CLOSED and self.consecutive_failures >= self.failure_threshold
        ):
            return self._go(CB_OPEN, now)
        return None


REGULAR, PREFILL, DECODE = "regular", "prefill", "decode"  # SMG's WorkerType (PD mode: prefill and decode)
SGLANG_DEFAULT_BOOTSTRAP_PORT = 8998  # sglang --disaggregation-bootstrap-port's default


@dataclass
class Worker:
    url: str
    model: str = "unknown"
    worker_type: str = REGULAR
    bootstrap_port: int | None = None  # a prefill worker's registered bootstrap port (None: SGLang's default)
    status: str = "ready"  # ready | not_ready | failed
    load: int = 0  # the gateway's own in-flight count (worker.load())
    key_load: dict[str, int] = field(default_factory=dict)  # in-flight requests per routing key
    report: EngineReport | None = None
    since_poll: list[tuple[float, int]] = field(default_factory=list)  # (dispatch time, tokens) credited
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    health_failures: int = 0
    health_successes: int = 0
    _credited: tuple[int, int] = field(default=(0, 0), repr=False, compare=False)  # (len(since_poll), its sum)

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    @property
    def bootstrap_host(self) -> str:
        """The host of the worker's URL, as SMG's ``parse_bootstrap_host`` (an IPv6 host in brackets)."""
        host = urlsplit(self.url if "://" in self.url else f"http://{self.url}").hostname or "localhost"
        return f"[{host}]" if ":" in host else host

    @property
    def routing_key_load(self) -> int:
        """Distinct routing keys with at least one request in flight here (``min_group``)."""
        return len(self.key_load)

    def since_poll_tokens(self) -> int:
        """Tokens credited since the last report (a running sum, recomputed if ``since_poll`` was changed
        other than through ``credit``/``drop_credits``)."""
        n, total = self._credited
        if n != len(self.since_poll):
            total = sum(t for _, t in self.since_poll)
            self._credited = (len(self.since_poll), total)
        return total

    def credit(self, now: float, tokens: int) -> None:
        """Credit a dispatch of ``tokens`` at ``now`` until the next load report."""
        total = self.since_poll_tokens() + tokens  # summed in list order, as sum() over the list would
        self.since_poll.append((now, tokens))
        self._credited = (len(self.since_poll), total)

    def drop_credits(self, upto: float) -> None:
        """A report taken at ``upto`` already reflects the dispatches credited up to then."""
        self.since_poll = [(t, n) for t, n in self.since_poll if t > upto]
        self._credited = (len(self.since_poll), sum(t for _, t in self.since_poll))

    def overloaded(self, waiting_cap: int, usage_cap: float) -> bool:
        r = self.report
        return r is not None and (r.waiting >= waiting_cap or r.token_usage >= usage_cap)


class WorkerRegistry:
    """Workers in registration order, keyed by URL."""

    def __init__(self) -> None:
        self._workers: dict[str, Worker] = {}
        self._by_model: dict[str | None, tuple[Worker, ...]] = {}  # of_model's answers, dropped on add/remove

    def __contains__(self, url: object) -> bool:
        return url in self._workers

    def __len__(self) -> int:
        return len(self._workers)

    def __iter__(self):
        return iter(list(self._workers.values()))

    def values(self) -> ValuesView[Worker]:
        """The workers in registration order, without a copy (do not add or remove while iterating)."""
        return self._workers.values()

    def get(self, url: str) -> Worker | None:
        return self._workers.get(url)

    def add(self, worker: Worker) -> Worker:
        self._by_model.clear()
        return self._workers.setdefault(worker.url, worker)

    def remove(self, url: str) -> Worker | None:
        self._by_model.clear()
        return self._workers.pop(url, None)

    def urls(self) -> list[str]:
        return list(self._workers)

    def for_model(self, model: str | None) -> list[Worker]:
        """Workers serving ``model`` (all of them for None, a model-less request)."""
        return [w for w in self._workers.values() if model is None or w.model == model]

    def of_model(self, model: str | None) -> tuple[Worker, ...]:
        """``for_model`` as a cached tuple (a worker's model does not change once registered)."""
        ws = self._by_model.get(model)
        if ws is None:
            ws = self._by_model[model] = tuple(self.for_model(model))
        return ws

    def models(self) -> list[str]:
        return list(dict.fromkeys(w.model for w in self._workers.values()))

    def begin(self, url: str, key: str | None) -> None:
        w = self._workers.get(url)
        if w is None:
            return
        w.load += 1
        if key is not None:
            w.key_load[key] = w.key_load.get(key, 0) + 1

    def end(self, url: str, key: str | None) -> None:
        w = self._workers.get(url)
        if w is None:
            return
        w.load = max(0, w.load - 1)
        if key is not None and key in w.key_load:
            w.key_load[key] -= 1
            if w.key_load[key] <= 0:
                del w.key_load[key]

    def loads(self, urls: Iterable[str]) -> dict[str, int]:
        return {u: self._workers[u].load for u in urls if u in self._workers}
