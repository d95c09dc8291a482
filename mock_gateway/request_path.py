"""One request's way through the gateway, written once as a sans-IO step machine that every driver runs.

``request_path(...)`` is a generator. It does all of the core's bookkeeping itself and yields an effect each time
the request needs the outside world, expecting that effect's result back through ``.send()``:

- ``PollLoads(urls, now, virtual)``: fetch each URL's ``/v1/loads`` (at ``?sim_time=now`` when ``virtual``); send
  back the answers in ``urls`` order (a WorkerLoadResponse mapping or an ``EngineLoad``; None for a failed fetch);
- ``ProbeHealth(urls, now)``: probe each URL's ``--health-check-endpoint``; send back one bool (2xx) per URL;
- ``Send(decision, ticket)``: send the attempt to ``decision.url``; send back an ``Attempt``;
- ``SendPair(prefill, decode, prefill_ticket, decode_ticket, bootstrap)`` (PD mode): send both legs at once, each
  body with the ``bootstrap`` fields added; send back one ``Attempt`` for the pair (``pd.pair_failure`` gives SMG's
  answer when a leg failed; else the decode's answer, its virtual finish and the ``PdTimes``);
- ``Backoff(seconds)``: wait before the next attempt (or not: virtual-time drivers go on at once); send back None.

It returns the refusing ``Decision`` (``url`` None) when the first attempt finds no worker, else the last
``Attempt`` (whose ``response`` the driver relays).

The steps, in order: advance the core's clock to ``now`` (releases finished virtual requests, runs eviction and
breaker timers); poll loads if a poll is due; on the virtual clock, probe health if a round is due (in live time
``health.health_loop`` probes on the wall clock instead); then per attempt: select without the workers that
already failed this request, count it in flight (``begin``), send, count the upstream answer, release the ticket
(at once, or when the clock passes the worker's virtual finish), settle the breaker (``retry.settle_attempt``),
and, while ``retry.retry_next`` allows, back off and try again. A PD attempt counts both legs in flight until the
decode's answer ends (its virtual finish), settles both breakers with the pair's status and re-picks both legs on a
retry (SMG's ``execute_dual_dispatch``: no worker is excluded).

Drivers: ``mock_gateway.app.Gateway`` (httpx, streams relayed and released at their end, ``asyncio.sleep``),
``sim.transports.direct.DirectGateway`` (in-process worker cores; a dead worker refuses the connection) and
``sim.replay.driver.MooncakeDirect`` (the worker engines straight, token ids checked once by the replayer).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

from mock_gateway import retry, upstream
from mock_gateway.core import Decision, GatewayCore, Ticket
from mock_gateway.pd import PdTimes

CONNECTION_FAILED = "call_upstream_connection_failed"


@dataclass(frozen=True, slots=True)
class PollLoads:
    urls: list[str]
    now: float
    virtual: bool


@dataclass(frozen=True, slots=True)
class ProbeHealth:
    urls: list[str]
    now: float


@dataclass(frozen=True, slots=True)
class Send:
    decision: Decision
    ticket: Ticket


@dataclass(frozen=True, slots=True)
class SendPair:
    prefill: Decision
    decode: Decision
    prefill_ticket: Ticket
    decode_ticket: Ticket
    bootstrap: dict[str, Any]  # bootstrap_host, bootstrap_port, bootstrap_room: added to both bodies


@dataclass(frozen=True, slots=True)
class Backoff:
    seconds: float


Effect = PollLoads | ProbeHealth | Send | SendPair | Backoff


@dataclass(slots=True)
class Attempt:
    """What came of one ``Send``, as its driver reports it."""

    status: int | None  # the worker's HTTP status; None: the connection failed
    response: Any  # the driver's answer to relay if this is the last attempt
    virtual_finish: float | None = None  # the worker's x-sim-finish (virtual time), else None
    now: float | None = None  # live time: the driver's clock when the attempt settled; None: the core's clock
    relayed: bool = False  # a stream still being relayed: the driver finishes the ticket(s) itself at its end
    pd_times: PdTimes | None = None  # PD: an answered pair's durations for the PD histograms


RequestPath = Generator[Effect, Any, Decision | Attempt]


def request_path(
    core: GatewayCore,
    endpoint: str,
    headers: Mapping[str, str],
    body: object,
    now: float,
    virtual: bool,
    jitter: random.Random,
    known_messages: int = 0,
    tokens: list[int] | None = None,
) -> RequestPath:
    """The request's steps (module docstring). ``headers`` lower-cased; ``body`` the parsed JSON; ``virtual``: ``now``
    is the request's ``sim_time``; ``jitter`` draws the retry backoffs; ``known_messages`` and ``tokens``: an
    in-process caller's promises, see ``GatewayCore.select``."""
    cfg, m = core.config, core.metrics
    answers = m.counts(m.upstream_responses)  # by (router_type, status_code, error_code)
    core.advance(now)
    urls = core.due_polls(core.clock)
    if urls:
        t = core.clock
        loads = yield PollLoads(urls, t, virtual)
        for url, load in zip(urls, loads, strict=True):
            core.record_load(url, load, t)
    if virtual:
        urls = core.due_health(core.clock)
        if urls:
            t = core.clock
            results = yield ProbeHealth(urls, t)
            for url, ok in zip(urls, results, strict=True):
                core.health_result(url, ok, t)
    last: Attempt | None = None
    failed: list[str] = []  # a retry re-runs selection without the workers that failed this request
    for attempt in range(cfg.max_attempts):
        d = core.select(endpoint, headers, body, now=core.clock, exclude=failed, attempt=attempt,
                        known_messages=known_messages, tokens=tokens)
        if d.url is None:
            if last is not None:
                break
            if d.status == 503:
                answers[("http", "503", d.error_code or "")].inc()
            return d
        pair = d.decode
        if pair is None:
            tickets: tuple[Ticket, ...] = (core.begin(d),)
            send: Send | SendPair = Send(d, tickets[0])
        else:
            tickets = (core.begin(d), core.begin(pair))
            send = SendPair(d, pair, tickets[0], tickets[1], core.bootstrap(d))
        try:
            last = yield send
        except GeneratorExit:  # the driver failed mid-attempt and closed the path: nothing stays in flight
            for ticket in tickets:
                core.finish(ticket)
            raise
        status = last.status
        if status is None:
            answers[("http", "500", CONNECTION_FAILED)].inc()
        else:
            answers[("http", str(status), "")].inc()
        if not last.relayed:
            for ticket in tickets:
                core.finish(ticket, virtual_finish=last.virtual_finish)
        if last.now is not None:
            core.advance(last.now)
        if pair is None:
            retryable = retry.settle_attempt(core, d.url, status, core.clock)
            failed.append(d.url)
            worker_types: tuple[str, ...] = ("regular",)
        else:
            assert status is not None and pair.url is not None, "a pair's driver answers with a status"
            if last.pd_times is not None:
                last.pd_times.observe(m, d.model)
            retryable = retry.settle_pair(core, (d.url, pair.url), status, core.clock)
            worker_types = retry.PD_WORKER_TYPES
        if not retry.retry_next(m, endpoint, attempt, cfg.max_attempts, retryable, worker_types):
            break
        delay = upstream.backoff(attempt + 1, cfg, jitter)
        m.retry_backoff.labels(attempt=str(attempt + 1)).observe(delay)
        yield Backoff(delay)
    assert last is not None
    return last


def run(path: RequestPath, perform: Callable[[Effect], Any]) -> Decision | Attempt:
    """Drive ``path`` synchronously: ``perform`` each effect and send its result back; the path's outcome."""
    try:
        effect = next(path)
        while True:
            effect = path.send(perform(effect))
    except StopIteration as done:
        return done.value
