"""GatewayCore: the synchronous, pure routing core of the mock SMG gateway (no I/O, clock passed in):
worker state, selection and in-flight accounting. Request validation is ``request_validation.py``; the per-request
loop around this core (polls, health rounds, attempts, retries) is ``request_path.py``, which the FastAPI app,
the simulator's ``direct`` transport and the Mooncake replayer all drive. All random choices come from one
``random.Random(seed)``.

API (``now`` is seconds on the caller's one clock: virtual ``sim_time``, or live seconds since start;
when omitted the core's clock is used)::

    core = GatewayCore(config: GatewayConfig, seed: int | None = None,
                       metrics: GatewayMetrics | None = None, now: float = 0.0)
    core.add_worker(url: str, model: str = "unknown", now: float | None = None,
                    worker_type: str = "regular", bootstrap_port: int | None = None) -> Worker
    core.remove_worker(url: str) -> bool
    core.advance(now: float) -> int            # clock = max(clock, now); release in-flight requests whose
                                               # virtual finish <= clock; run eviction and breaker timers;
                                               # returns #released
    core.due_polls(now: float) -> list[str]    # URLs to poll now if a load poll is due (marks it done)
    core.record_load(url: str, load: Mapping | EngineLoad | None, now: float) -> None
                                               # a /v1/loads answer (WorkerLoadResponse JSON) or an EngineLoad
    core.select(endpoint: str, headers: Mapping[str, str], body: object, now: float | None = None,
                exclude: Iterable[str] = (), attempt: int = 0, known_messages: int = 0,
                tokens: list[int] | None = None) -> Decision
                                               # endpoint "chat" | "completions" | "generate";
                                               # headers lower-cased; body the parsed JSON; tokens: the
                                               # body's input_ids, already checked by an in-process caller
    core.begin(decision: Decision, now: float | None = None) -> Ticket   # count the request in flight
    core.finish(ticket: Ticket, virtual_finish: float | None = None, now: float | None = None) -> None
                                               # release now, or keep in flight until the clock passes
                                               # virtual_finish (the worker's x-sim-finish)
    core.record_outcome(url: str, ok: bool, now: float) -> None         # circuit-breaker outcome of an attempt
    core.breaker_tick(now: float) -> None      # open breakers half-open after --cb-timeout-duration-secs
                                               # (advance() calls it; breaker times are on the same clock)
    core.health_result(url: str, ok: bool, now: float) -> None          # one health probe's result
    core.due_health(now: float) -> list[str]   # virtual time: URLs to probe now if a health round is due
                                               # (every --health-check-interval-secs; marks it done)

PD mode (``--pd-disaggregation``): every worker has a type (``prefill`` or ``decode``; ``add_worker``) and each leg
its own policy instance (``leg_policies``). ``select`` picks the prefill worker first, then the decode worker, each
among the available workers of its type with its leg's policy (``RouteInput.leg`` set); it returns the prefill leg's
``Decision`` with the decode leg's in ``Decision.decode`` (or one refusal). ``bootstrap(decision)`` draws the
bootstrap fields SMG injects into both bodies; ``begin`` and ``finish`` are called once per leg.

An in-process caller may give ``input_ids`` as a 1-D integer numpy array (checked as a list is, vectorised:
ids in [0, 2**32)); JSON bodies only ever carry lists. The routing text and routing tokens are extracted only
if the policy reads them (``RouteInput`` is lazy), and metrics writes are deferred to collection (metrics.py).

``Decision.url`` is None when the request is refused; ``Decision.status`` / ``error_code`` / ``param`` /
``message`` then give SMG's answer (a ``request_validation.Invalid``'s 400 or 422; 404 ``model_not_found``;
503 ``no_available_workers`` or ``worker_overload_protection_shed``). ``Decision.branch`` is the policy's branch
label, ``Decision.key`` the key the request is accounted under. The order of calls per request (advance, due
load polls, due health rounds, select, begin, finish with the worker's virtual finish, breaker outcome,
retries with the failed URLs in ``exclude``) is ``request_path.request_path``'s.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mock_gateway.config import PD_LEGS, GatewayConfig
from mock_gateway.metrics import GatewayMetrics
from mock_gateway.policies.base import LAZY, Policy, PolicyContext, RouteInput
from mock_gateway.policies.factory import make_policy
from mock_gateway.request_validation import validate
from mock_gateway.routing_key import header_key
from mock_gateway.workers import (
    CB_OPEN,
    CB_STATE_VALUE,
    REGULAR,
    CircuitBreaker,
    EngineReport,
    Worker,
    WorkerRegistry,
)

ENDPOINTS = ("chat", "completions", "generate")
_NONE: frozenset[str] = frozenset()
ROOM_MASK = (1 << 63) - 1  # SMG's generate_room_id: a random u64 masked to [0, 2**63 - 1]


@dataclass
class Decision:
    url: str | None
    endpoint: str
    policy: str
    branch: str | None = None
    key: str | None = None  # per-key in-flight accounting key
    model: str = "unknown"  # metrics label
    status: int = 200
    error_code: str | None = None
    message: str = ""
    param: str | None = None
    stream: bool = False
    worker_type: str = REGULAR  # the type of the worker picked (PD: this decision's leg)
    decode: Decision | None = None  # PD: the decode leg's decision (this one is the prefill leg's)


@dataclass
class Ticket:
    id: int
    url: str
    key: str | None
    started: float
    virtual_finish: float | None = None
    done: bool = False


class GatewayCore:
    def __init__(
        self, config: GatewayConfig, seed: int | None = None, metrics: GatewayMetrics | None = None, now: float = 0.0
    ) -> None:
        self.config = config
        self.rng = random.Random(config.seed if seed is None else seed)
        self.metrics = metrics or GatewayMetrics()
        self.registry = WorkerRegistry()
        self.ctx = PolicyContext(config, self.rng, self.registry, self.metrics)
        # PD: one policy instance per leg, each reading the config with its leg's policy (SMG's create_pd_router)
        self.leg_policies: dict[str, Policy] = {}
        if config.pd_disaggregation:
            self.leg_policies = {
                leg: make_policy(PolicyContext(config.leg_config(leg), self.rng, self.registry, self.metrics))
                for leg in PD_LEGS
            }
            self.policy = self.leg_policies[PD_LEGS[0]]
        else:
            self.policy = make_policy(self.ctx)
        self._policies = tuple(self.leg_policies.values()) or (self.policy,)
        self.clock = now
        self._next_poll: float | None = None
        self._next_health: float | None = None  # virtual-time health rounds (due_health)
        self._ids = itertools.count(1)
        self._pending: list[tuple[float, int, Ticket]] = []  # released when the clock passes virtual finish
        self.inflight: dict[int, Ticket] = {}
        self._open: set[str] = set()  # workers whose breaker is open (every transition passes _cb_metrics)
        self._not_ready: set[str] = set()  # workers whose status is not "ready" (set only by health_result)
        self._overloaded: set[str] = set()  # workers whose last load report is over a cap (reports: record_load)
        m = self.metrics  # cached label children, most with deferred writes (see metrics.py)
        self._m_health = m.gauges(m.worker_health)
        self._m_active = m.gauges(m.worker_active)
        self._m_keys_active = m.gauges(m.worker_keys_active)
        self._m_cb_state = m.gauges(m.cb_state)
        self._m_cb_failures = m.gauges(m.cb_failures)
        self._m_cb_successes = m.gauges(m.cb_successes)
        self._m_cb_outcomes = m.counts(m.cb_outcomes)
        self._m_worker_requests = m.counts(m.worker_requests)
        self._m_router = m.counts(m.router_requests)
        self._m_selection = m.counts(m.selection)
        self._m_overloaded = m.series(m.workers_overloaded)
        self._m_health_checks = m.counts(m.health_checks)
        self._m_load_polls = m.counts(m.load_polls)
        self._m_engine = [
            m.gauges(g)
            for g in (m.engine_running, m.engine_waiting, m.engine_token_usage, m.engine_gen_throughput,
                      m.engine_cache_hit_rate)
        ]
        for p in self._policies:
            p.tick(now)

    # -- workers -----------------------------------------------------------------------------------
    def add_worker(self, url: str, model: str = "unknown", now: float | None = None, worker_type: str = REGULAR,
                   bootstrap_port: int | None = None) -> Worker:
        """Register a worker; in PD mode every policy instance is told of it (one ring holds both types)."""
        now = self.clock if now is None else now
        cfg = self.config
        if url in self.registry:
            return self.registry.get(url)  # type: ignore[return-value]
        w = self.registry.add(
            Worker(
                url,
                model,
                worker_type,
                bootstrap_port,
                breaker=CircuitBreaker(
                    cfg.cb_failure_threshold,
                    cfg.cb_success_threshold,
                    cfg.cb_timeout_duration_secs,
                    enabled=not cfg.disable_circuit_breaker,
                ),
            )
        )
        for p in self._policies:
            p.on_worker_added(w)
        if self._next_poll is None:
            self._next_poll = now  # the monitor's first tick fires when the group is created
        if self._next_health is None:
            self._next_health = now + cfg.health_check_interval_secs  # the checker's first round, one interval on
        self._m_health[url].set(1)
        self._m_active[url].set(0)
        self._m_cb_state[url].set(0)
        self._pool_gauge()
        return w

    def remove_worker(self, url: str) -> bool:
        w = self.registry.remove(url)
        if w is None:
            return False
        self._open.discard(url)
        self._not_ready.discard(url)
        self._overloaded.discard(url)
        for p in self._policies:
            p.on_worker_removed(url)
        self._pool_gauge()
        return True

    def _pool_gauge(self) -> None:
        sizes: dict[tuple[str, str], int] = {}
        for w in self.registry.values():
            sizes[w.worker_type, w.model] = sizes.get((w.worker_type, w.model), 0) + 1
        for (worker_type, model), n in sizes.items():
            self.metrics.worker_pool_size.labels(worker_type=worker_type, connection_mode="http", model=model).set(n)

    def models(self) -> list[str]:
        return self.registry.models()

    # -- clock -------------------------------------------------------------------------------------
    def advance(self, now: float) -> int:
        """Move the clock forward, release finished virtual requests and run periodic tasks."""
        if now > self.clock:
            self.clock = now
        clock, pending = self.clock, self._pending
        released = 0
        while pending and pending[0][0] <= clock:
            _, _, t = heapq.heappop(pending)
            released += self._release(t)
        for p in self._policies:
            p.tick(clock)
        self.breaker_tick(clock)
        return released

    def due_polls(self, now: float) -> list[str]:
        """The workers to poll for load now, if the ``--load-monitor-interval`` tick is due (marks it done)."""
        if self._next_poll is None or now < self._next_poll or not len(self.registry) or not self.polls_loads:
            return []
        self._next_poll = now + max(self.config.load_monitor_interval, 1e-9)
        return [w.url for w in self.registry if w.ready]

    def due_health(self, now: float) -> list[str]:
        """Virtual time: every worker's URL if a health round is due at ``now`` (then the next is one
        ``--health-check-interval-secs`` later), else []. Rounds missed between two requests collapse into
        one, as load polls do; the caller probes each URL and reports with ``health_result``."""
        cfg = self.config
        if cfg.disable_health_check or self._next_health is None or now < self._next_health:
            return []
        self._next_health = now + max(cfg.health_check_interval_secs, 1e-9)
        return self.registry.urls()

    def poll_due(self, now: float) -> bool:
        return self._next_poll is not None and now >= self._next_poll and len(self.registry) > 0 and self.polls_loads

    @property
    def polls_loads(self) -> bool:
        """1.13.0 polls every group; ``--disable-load-monitoring`` polls only for a load-aware policy or
        overload protection."""
        cfg = self.config
        return (
            not cfg.disable_load_monitoring
            or cfg.overload_protection
            or any(p in ("cache_aware", "least_load", "power_of_two") for p in cfg.policies())
        )

    def record_load(self, url: str, load: Any, now: float) -> None:
        """A load report for ``url`` taken at ``now``; None or an unparsable answer makes it unavailable."""
        w = self.registry.get(url)
        if w is None:
            return
        w.report = EngineReport.parse(load, now)
        cfg = self.config
        if w.overloaded(cfg.worker_overload_waiting_requests, cfg.worker_overload_token_usage):
            self._overloaded.add(url)
        else:
            self._overloaded.discard(url)
        w.drop_credits(now)  # the report already reflects them
        self._m_load_polls[(url, "poll")].inc()
        if w.report is not None:
            fields = ("num_running_reqs", "num_waiting_reqs", "token_usage", "gen_throughput", "cache_hit_rate")
            for i, r in enumerate(w.report.ranks):
                labels = (url, w.model, str(r.get("dp_rank", i)))
                for series, f in zip(self._m_engine, fields, strict=True):
                    series[labels].set(float(r.get(f, 0) or 0))

    # -- health and breaker ----------------------------------------------------------------------
    def _cb_metrics(self, w: Worker, transition: tuple[str, str] | None) -> None:
        if transition is not None:
            self.metrics.cb_transitions.labels(worker=w.url, **{"from": transition[0], "to": transition[1]}).inc()
        b, url = w.breaker, w.url
        if b.state == CB_OPEN:
            self._open.add(url)
        else:
            self._open.discard(url)
        self._m_cb_state[url].set(CB_STATE_VALUE[b.state])
        self._m_cb_failures[url].set(b.consecutive_failures)
        self._m_cb_successes[url].set(b.consecutive_successes)

    def record_outcome(self, url: str, ok: bool, now: float) -> None:
        w = self.registry.get(url)
        if w is None:
            return
        self._m_cb_outcomes[(url, "success" if ok else "failure")].inc()
        self._cb_metrics(w, w.breaker.record(ok, now))

    def breaker_tick(self, now: float) -> None:
        if not self._open:
            return
        for w in self.registry.values():
            if w.breaker.state == CB_OPEN:  # only an open breaker has a timer
                t = w.breaker.tick(now)
                if t is not None:
                    self._cb_metrics(w, t)

    def health_result(self, url: str, ok: bool, now: float) -> None:
        """One probe: Ready -> NotReady after ``failure_threshold`` failures, -> Failed after 3x that;
        back to Ready after ``success_threshold`` successes (an open breaker then half-opens)."""
        w = self.registry.get(url)
        if w is None:
            return
        cfg = self.config
        self._m_health_checks[(w.worker_type, "success" if ok else "failure")].inc()
        if ok:
            w.health_failures = 0
            w.health_successes += 1
            if not w.ready and w.health_successes >= cfg.health_success_threshold:
                w.status = "ready"
                t = w.breaker.readmit(now)
                if t is not None:
                    self.metrics.cb_readmissions.labels(worker=url).inc()
                    self._cb_metrics(w, t)
        else:
            w.health_successes = 0
            w.health_failures += 1
            if w.health_failures >= 3 * cfg.health_failure_threshold:
                w.status = "failed"
            elif w.health_failures >= cfg.health_failure_threshold and w.ready:
                w.status = "not_ready"
        if w.ready:
            self._not_ready.discard(url)
        else:
            self._not_ready.add(url)
        self._m_health[url].set(1 if w.ready else 0)

    # -- selection ---------------------------------------------------------------------------------
    def available(self, model: str | None, exclude: Iterable[str] = ()) -> list[Worker]:
        """Ready workers of the model whose breaker allows a request (before overload protection)."""
        if self._open or self._not_ready:
            out = [
                w
                for w in self.registry.of_model(model)
                if w.status == "ready" and (w.breaker.state != CB_OPEN or not w.breaker.enabled)
            ]
        else:  # every worker ready, no breaker open (the usual case): all of them, without looking at each
            out = list(self.registry.of_model(model))
        if exclude:
            ex = set(exclude)
            out = [w for w in out if w.url not in ex]
        return out

    def select(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        body: object,
        now: float | None = None,
        exclude: Iterable[str] = (),
        attempt: int = 0,
        known_messages: int = 0,
        tokens: list[int] | None = None,
    ) -> Decision:
        """Pick a worker for one attempt of a request (the policy counts its branch).

        In-process callers' promises (never from JSON): ``known_messages``, see ``request_validation.validate``
        (e.g. ``direct``'s); ``tokens``, the body's ``input_ids`` already checked valid (a non-empty list of ints
        in [0, 2**32), no ``x-smg-routing-tokens`` header), so the per-id checks are skipped and the policy routes
        on them as they are (the Mooncake replayer's)."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        now = self.clock if now is None else now
        cfg = self.config
        bad = validate(endpoint, body, known_messages, ids_checked=tokens is not None)
        if bad is not None:
            return Decision(None, endpoint, cfg.policy, status=bad.status, error_code=bad.error_code,
                            message=bad.message, param=bad.param)
        assert type(body) is dict or isinstance(body, Mapping)
        model = body.get("model")
        if endpoint == "generate" and model == "unknown":
            model = None
        label = model or "unknown"
        stream = bool(body.get("stream", False))
        if attempt == 0:
            backend = "pd" if self.leg_policies else "regular"
            self._m_router[("http", backend, "http", label, endpoint, "true" if stream else "false")].inc()
        if model is not None and not self.registry.of_model(model):
            return Decision(
                None,
                endpoint,
                cfg.policy,
                model=label,
                status=404,
                error_code="model_not_found",
                message=f"No worker available for model '{model}'",
                stream=stream,
            )
        key = header_key(headers, cfg.routing_key_headers)
        route = (endpoint, headers, body, model, label, stream, key, now, tokens, exclude)
        if self.leg_policies:
            return self._select_pair(route)
        d = self._pick(self.available(model, exclude), cfg.policy, self.policy, route)
        return self._selected(d) if d.url is not None else d

    def _select_pair(self, route: tuple) -> Decision:
        """PD: the prefill leg, then the decode leg, each among the available workers of its type with its own
        policy; the prefill leg's decision holding the decode's, or the first leg's refusal (SMG's
        ``select_pd_pair``: a leg without workers is 503 ``server_selection_failed``)."""
        endpoint, model, label, stream, exclude = route[0], route[3], route[4], route[5], route[9]
        available = self.available(model, exclude)
        legs: list[Decision] = []
        for leg, policy in self.leg_policies.items():
            workers = [w for w in available if w.worker_type == leg]
            policy_name = self.config.leg_policy(leg)
            d = self._pick(workers, policy_name, policy, route, leg) if workers else Decision(
                None, endpoint, policy_name, model=label, status=503, error_code="server_selection_failed",
                message=f"No available servers: No available {leg} workers (all circuits open or unhealthy)",
                stream=stream)
            if d.url is None:
                return d
            legs.append(d)
        prefill, decode = legs
        prefill.decode = decode
        self._selected(prefill)
        self._selected(decode)
        return prefill

    def _pick(self, workers: list[Worker], policy_name: str, policy: Policy, route: tuple,
              leg: str | None = None) -> Decision:
        """One worker among ``workers`` (overload protection, then the policy), not yet counted as selected."""
        endpoint, headers, body, model, label, stream, key, now, tokens, exclude = route
        cfg, m = self.config, self.metrics
        worker_type = leg or REGULAR
        if workers and cfg.overload_protection:
            overloaded = self._overloaded  # by their last load reports, kept up to date by record_load
            fine = [w for w in workers if w.url not in overloaded] if overloaded else workers
            self._m_overloaded[label].set(len(workers) - len(fine))
            if not fine:
                if cfg.worker_overload_shed:
                    m.overload_shed.labels(stage="selection").inc()
                    return Decision(
                        None,
                        endpoint,
                        policy_name,
                        model=label,
                        status=503,
                        error_code="worker_overload_protection_shed",
                        message="All workers are overloaded",
                        stream=stream,
                    )
                m.overload_fallback.labels(stage="selection").inc()
                chosen = min(workers, key=lambda w: w.load)
                return Decision(chosen.url, endpoint, policy_name, "overload_fallback", key, label, stream=stream,
                                worker_type=worker_type)
            workers = fine
        # text and tokens are computed only if the policy reads them
        req = RouteInput(endpoint, headers, body, model, None, LAZY if tokens is None else tokens, key, now,
                         frozenset(exclude) if exclude else _NONE, leg)
        choice = policy.select(workers, req)
        if choice.url is None:
            return Decision(
                None,
                endpoint,
                policy_name,
                choice.branch,
                model=label,
                status=503,
                error_code="no_available_workers",
                message="All workers are unavailable (circuit breaker open or unhealthy)",
                stream=stream,
            )
        key = choice.key if choice.key is not None else req.key
        return Decision(choice.url, endpoint, policy_name, choice.branch, key, label, stream=stream,
                        worker_type=worker_type)

    def bootstrap(self, prefill: Decision) -> dict[str, Any]:
        """The fields SMG injects into both legs' bodies (``inject_bootstrap_into_value``): the prefill worker's host
        and registered bootstrap port (None: null), and a room drawn from the gateway's seeded RNG."""
        w = self.registry.get(prefill.url)  # type: ignore[arg-type]
        assert w is not None
        return {"bootstrap_host": w.bootstrap_host, "bootstrap_port": w.bootstrap_port,
                "bootstrap_room": self.rng.getrandbits(64) & ROOM_MASK}

    def _selected(self, d: Decision) -> Decision:
        self._m_selection[(d.worker_type, "http", d.model, d.policy)].inc()
        return d

    # -- in-flight accounting -----------------------------------------------------------------------
    def begin(self, decision: Decision, now: float | None = None) -> Ticket:
        """Count a dispatched attempt in flight on its worker (and under its key)."""
        assert decision.url is not None, "begin() needs a decision with a worker"
        now = self.clock if now is None else now
        t = Ticket(next(self._ids), decision.url, decision.key, now)
        self.inflight[t.id] = t
        self.registry.begin(t.url, t.key)
        w = self.registry.get(t.url)
        self._m_worker_requests[(t.url, w.model if w else decision.model)].inc()
        if w is not None:
            self._load_gauges(w)
        return t

    def finish(self, ticket: Ticket, virtual_finish: float | None = None, now: float | None = None) -> None:
        """Release now, or at ``virtual_finish`` if that is still ahead of the clock."""
        if ticket.done or ticket.virtual_finish is not None:
            return
        if virtual_finish is not None and virtual_finish > self.clock:
            ticket.virtual_finish = virtual_finish
            heapq.heappush(self._pending, (virtual_finish, ticket.id, ticket))
            return
        self._release(ticket)

    def _release(self, ticket: Ticket) -> int:
        if ticket.done:
            return 0
        ticket.done = True
        self.inflight.pop(ticket.id, None)
        self.registry.end(ticket.url, ticket.key)
        w = self.registry.get(ticket.url)
        if w is not None:
            self._load_gauges(w)
        return 1

    def _load_gauges(self, w: Worker) -> None:
        self._m_active[w.url].set(w.load)
        self._m_keys_active[w.url].set(len(w.key_load))
