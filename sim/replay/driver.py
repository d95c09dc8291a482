"""Open-loop replay of a Mooncake trace straight to the gateway, in virtual time.

Requests go out in timestamp order, each as a token request ``POST /generate`` with ``input_ids``
(the block tokens), ``sampling_params.max_new_tokens`` = the trace's output length and ``sim_time`` =
its timestamp, plus ``X-SMG-Routing-Key: <derived key>`` when the key is on. There is no session
server: Mooncake has no sessions and the requests are independent (open loop). As SMG does with
token requests, ``cache_aware`` matches the token ids in its token tree (the mock's ``CharTree`` over
tuples of ids); ``prefix_hash`` hashes the first ids.

Two transports, same results:

- ``http``: the stack of ``sim.transports.http.HttpTransport`` (uvicorn workers and mock gateway on
  loopback; its session server is started but unused), requests posted to the gateway's ``/generate``.
- ``direct``: ``MooncakeDirect``, the gateway core and the worker engines in process, running the gateway's
  one request path (``mock_gateway.request_path``, as the app and ``sim.transports.direct.DirectGateway`` do:
  advance the clock, answer due load polls and health rounds, select, count in flight, serve, keep in flight
  until the virtual finish). Two short cuts keep a 12k-request, 145M-token trace well under a minute, neither
  changing a decision: the request's ids are validated once here (``GatewayCore.select(..., tokens=ids)`` hands
  them to the policy instead of the gateway's per-id Python check, ~2 ms per 12k ids) and the worker is asked
  with the int64 array (``WorkerCore.generate_ids``) instead of through ``WorkerCore.infer``'s JSON parsing, with
  the same answer and the same timeline. ``tests/sim/replay/test_replay_driver.py``
  checks both against the unshortened paths.

Workers run the arrival-time engine (``arrival_engine``): the open loop takes each answer at once.

Records: one ``sim.agents.RequestRecord`` per request; requests with equal derived keys form a
"session" (for ``stickiness`` and ``eligible_reuse``), numbered in order of first appearance.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mock_gateway.config import parse_args
from mock_gateway.core import GatewayCore
from mock_gateway.request_path import Attempt, Effect, PollLoads, ProbeHealth, Send, request_path, run
from sim.agents import RequestRecord, SessionOutcome, WorkloadResult
from sim.oracle import max_cacheable
from sim.replay.mooncake import BlockCache, MooncakeRequest
from sim.transports.pool import Setup, gateway_argv, port_salt, stable_ports, worker_configs, worker_urls
from sim.worker.core import WorkerCore
from sim.worker.request import admission_refusal

ROUTING_HEADER = "x-smg-routing-key"


@dataclass(frozen=True)
class TraceItem:
    """One request to send: the trace request, its routing key and its session number."""

    request: MooncakeRequest
    key: str
    session: int
    turn: int


def plan_items(requests: Sequence[MooncakeRequest], keys: Sequence[str]) -> list[TraceItem]:
    sessions: dict[str, int] = {}
    turns: dict[str, int] = {}
    out = []
    for r, k in zip(requests, keys, strict=True):
        s = sessions.setdefault(k, len(sessions))
        t = turns.get(k, 0)
        turns[k] = t + 1
        out.append(TraceItem(r, k, s, t))
    return out


def body_of(r: MooncakeRequest, ids: list[int]) -> dict[str, Any]:
    return {"input_ids": ids, "sampling_params": {"max_new_tokens": r.output_length}, "sim_time": r.timestamp}


def shared_tokens(a: MooncakeRequest, b: MooncakeRequest) -> int:
    """Tokens two requests' prompts share (equal leading block ids, partial last blocks included)."""
    k = 0
    for x, y in zip(a.hash_ids, b.hash_ids, strict=False):
        if x != y:
            break
        k += 1
    return min(k * 512, a.input_length, b.input_length)


# ---- transports -------------------------------------------------------------------------------------


def arrival_engine(setup: Setup) -> None:
    """An open-loop trace is sent in timestamp order and each answer taken at once, which needs workers that
    answer at arrival: the arrival-time engine (``workers.engine = "arrival"``; the iteration-level engine needs
    the co-simulated clock of agents, ``sim.cosim``)."""
    if setup.scenario.engine != "arrival":
        raise ValueError(f"a Mooncake replay runs on the arrival-time engine, not {setup.scenario.engine!r}: "
                         "build its scenario with engine='arrival'")


@dataclass
class Served:
    status: int
    worker: str | None = None
    arrival: float = 0.0
    start: float = 0.0
    first_token: float = 0.0
    finish: float = 0.0
    cached_tokens: int = 0
    output_ids: list[int] | None = None
    error: str | None = None


class MooncakeDirect:
    """Gateway core + worker engines in process (see the module docstring)."""

    def __init__(self, setup: Setup, urls: list[str] | None = None) -> None:
        arrival_engine(setup)
        configs = worker_configs(setup.scenario)
        urls = urls or worker_urls(stable_ports(port_salt(setup), len(configs), check=False))
        self.cores = {u: WorkerCore(c, seed=setup.seed) for u, c in zip(urls, configs, strict=True)}
        self.workers = [c.name for c in self.cores.values()]
        self.config = parse_args(gateway_argv(setup, urls))
        self.gateway = GatewayCore(self.config, now=0.0)
        self.jitter = random.Random(self.config.seed)  # retry jitter (the app's); never drawn: no 4xx is retried
        for url, w in self.cores.items():
            self.gateway.add_worker(url, w.model_name)
        self.seed = setup.seed

    def send(self, r: MooncakeRequest, prompt: np.ndarray, ids: list[int], key: str | None) -> Served:
        headers = {ROUTING_HEADER: key} if key is not None else {}

        def perform(effect: Effect) -> Any:
            if isinstance(effect, Send):
                return self._serve(effect.decision.url, r, prompt)
            if isinstance(effect, PollLoads):
                return [self.cores[u].loads(effect.now) for u in effect.urls]
            if isinstance(effect, ProbeHealth):
                return [self.cores[u].health()[0] < 300 for u in effect.urls]
            return None  # Backoff: no wait in virtual time

        steps = request_path(self.gateway, "generate", headers, body_of(r, ids), r.timestamp, True, self.jitter,
                             tokens=ids)
        outcome = run(steps, perform)
        if isinstance(outcome, Attempt):
            return outcome.response
        return Served(outcome.status, error=f"{outcome.status}: {outcome.message}")

    def _serve(self, url: str, r: MooncakeRequest, prompt: np.ndarray) -> Attempt:
        """``WorkerCore.infer``'s answer to the request, without its JSON (module docstring)."""
        w = self.cores[url]
        refused = admission_refusal(r.input_length, r.output_length, w.context_length, w.config.kv_capacity_tokens)
        if refused is not None:  # the worker's 400s, before the engine
            return Attempt(400, Served(400, error=f"400: {refused}"))
        try:
            timing, output_ids = w.generate_ids(r.timestamp, prompt, r.output_length)
        except ValueError as e:
            return Attempt(400, Served(400, w.name, error=f"400: the worker cannot admit this request: {e}"))
        served = Served(200, w.name, timing.arrival, timing.start, timing.first_token, timing.finish,
                        timing.cached_tokens, output_ids.tolist())
        return Attempt(200, served, timing.finish)

    def gateway_metrics(self) -> str:
        return self.gateway.metrics.render().decode()

    def worker_stats(self) -> dict[str, dict[str, Any]]:
        from sim.transports.direct import engine_stats

        return {c.name: engine_stats(c) for c in self.cores.values()}

    def close(self) -> None:
        pass


class MooncakeHttp:
    """Posts each request to a gateway URL (the http transport's mock gateway, or any SMG)."""

    def __init__(self, transport: Any) -> None:
        import httpx

        arrival_engine(transport.setup)
        self.transport = transport
        self.workers = list(transport.workers)
        self.client = httpx.Client(base_url=transport.gateway_url, timeout=httpx.Timeout(300.0, connect=10.0),
                                   trust_env=False)

    def send(self, r: MooncakeRequest, prompt: np.ndarray, ids: list[int], key: str | None) -> Served:
        import httpx

        from testbed_common import vtime

        headers = {"content-type": "application/json"}
        if key is not None:
            headers[ROUTING_HEADER] = key
        try:
            resp = self.client.post("/generate", json=body_of(r, ids), headers=headers)
        except httpx.HTTPError as e:
            return Served(0, error=f"transport: {type(e).__name__}: {e}")
        try:
            data = resp.json()
        except ValueError:
            data = {}
        if resp.status_code != 200:
            msg = data.get("error", data.get("message", "")) if isinstance(data, dict) else ""
            if isinstance(msg, dict):
                msg = msg.get("message", "")
            return Served(resp.status_code, resp.headers.get(vtime.HEADER_WORKER), error=f"{resp.status_code}: {msg}")
        try:
            sim = data[vtime.SIM_RESPONSE_FIELD]
            return Served(200, str(sim["worker"]), float(sim["arrival"]), float(sim["start"]),
                          float(sim["first_token"]), float(sim["finish"]), int(sim["cached_tokens"]),
                          [int(t) for t in data["output_ids"]])
        except (KeyError, TypeError, ValueError) as e:
            return Served(resp.status_code, error=f"malformed answer: {type(e).__name__}: {e}")

    def gateway_metrics(self) -> str:
        return self.transport.gateway_metrics()

    def worker_stats(self) -> dict[str, dict[str, Any]]:
        return self.transport.worker_stats()

    def close(self) -> None:
        self.client.close()


def replay_mooncake(items: Sequence[TraceItem], sender: Any, routing_key: bool,
                    on_request: Callable[[RequestRecord], None] | None = None) -> WorkloadResult:
    """Send every item in order through ``sender`` (``MooncakeDirect`` or ``MooncakeHttp``); the records."""
    result = WorkloadResult()
    blocks = BlockCache.for_requests(it.request for it in items)
    outcomes: dict[int, SessionOutcome] = {}
    last: dict[int, MooncakeRequest] = {}
    for it in items:
        r = it.request
        out = outcomes.get(it.session)
        if out is None:
            out = outcomes[it.session] = SessionOutcome(it.session, it.key, start=r.timestamp)
            result.sessions.append(out)
        prompt, ids = blocks.request(r)
        served = sender.send(r, prompt, ids, it.key if routing_key else None)
        rec = RequestRecord(it.session, it.turn, False, r.timestamp, served.status, worker=served.worker)
        if served.error is not None:
            rec.error = served.error
            if out.error is None:
                out.error = f"turn {it.turn}: {served.error}"
        else:
            rec.arrival, rec.start, rec.first_token, rec.finish = (served.arrival, served.start, served.first_token,
                                                                   served.finish)
            rec.prompt_tokens, rec.cached_tokens = r.input_length, served.cached_tokens
            rec.output_tokens = len(served.output_ids or ())
            prev = last.get(it.session)
            if prev is not None:
                rec.eligible_tokens = min(shared_tokens(prev, r), max_cacheable(r.input_length))
            rec.oracle_cached = result.oracle.observe(rec.arrival, rec.finish, prompt, served.output_ids or [])
            last[it.session] = r
            out.turns_done += 1
            out.end = max(out.end, rec.finish)
        result.requests.append(rec)
        if on_request is not None:
            on_request(rec)
    result.end_time = max((r.finish for r in result.requests if r.ok), default=0.0)
    result.oracle.finish()
    return result

