"""``direct``: the session server, gateway and worker cores wired in-process, without HTTP.

The wiring follows the HTTP adapters step by step (session_server.app, mock_gateway.app,
sim.worker.app) so that, for a seed, ``direct`` and ``http`` give identical results: the session
core runs each turn with a synchronous upstream; the upstream is the gateway's one request path
(``mock_gateway.request_path``, which the app runs too) over the gateway core, its load polls, health probes
and sends answered by the worker cores; the worker core answers with its modelled timeline. A worker marked
dead (``sim.faults``) fails its attempts, load polls and health probes as a refused connection does in ``http``.

Objects cross cores by reference where nobody mutates them, and are copied where a core changes them: the session
core copies the client's body and its message list (parse_body), the gateway hands the worker a new top-level body
(``upstream.with_defaults``). Message dicts, token ids and response bodies are shared and treated as read-only by
every core. A worker's 200 chat answer crosses the gateway and the session core typed (``fastjson.ChatAnswer``):
they read its message and id arrays, the session records it as is, and its JSON body (thousands of per-token
objects) is built only if somebody reads it, the same body ``http`` carries. Token ids are read-only int64 arrays
inside every core: the session sends its checkpoint + the new tokens as one array, the worker checks it with one
reduction and echoes that very array, which the session core recognises by identity (no per-id work). The session
core tells the gateway and the worker how many leading messages are the very objects of a request answered 200
before (``UpstreamRequest.known_messages``), and they validate only the others (same 4xx for anything bad).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Mapping
from typing import Any

from mock_gateway import upstream
from mock_gateway.config import parse_args
from mock_gateway.core import GatewayCore
from mock_gateway.request_path import (
    CONNECTION_FAILED,
    Attempt,
    Effect,
    PollLoads,
    ProbeHealth,
    Send,
    request_path,
    run,
)
from session_server.core import SessionCore
from session_server.errors import SessionError
from session_server.upstream import UpstreamRequest, UpstreamResponse
from sim.transports.base import Reply
from sim.transports.pool import Setup, gateway_argv, port_salt, stable_ports, worker_configs, worker_urls
from sim.worker.core import WorkerCore
from sim.worker.reply import Reply as WorkerReply
from testbed_common import fastjson, vtime

ENDPOINTS = {"v1/chat/completions": "chat", "v1/completions": "completions", "generate": "generate"}
_CLIENT_HEADERS = {"content-type": "application/json"}  # what the agents' HTTP client sends


def _request_time(body: Any) -> float | None:
    """``vtime.request_time``, with the agents' case (a finite non-negative float in a dict) first."""
    v = body.get(vtime.SIM_TIME_FIELD) if type(body) is dict else None
    if type(v) is float and 0.0 <= v < math.inf:
        return v
    return vtime.request_time(body)


class _ReplyHeaders(Mapping[str, str]):
    """A worker reply's headers, rendered (``Reply.headers``) only if somebody reads them: nobody does in a
    ``direct`` run, which relays no headers."""

    __slots__ = ("_reply",)

    def __init__(self, reply: WorkerReply) -> None:
        self._reply = reply

    def __getitem__(self, key: str) -> str:
        return self._reply.headers[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._reply.headers)

    def __len__(self) -> int:
        return len(self._reply.headers)


class DirectGateway:
    """The gateway's request path (``mock_gateway.request_path``) driven over a ``GatewayCore`` and in-process
    ``WorkerCore``s: loads and health from the worker cores, a dead worker's attempt a refused connection, and no
    wait for the retry backoff (virtual time does not pass while a request is in the gateway)."""

    def __init__(self, argv: list[str], workers: dict[str, WorkerCore]) -> None:
        self.config = parse_args(argv)
        self.core = GatewayCore(self.config, now=0.0)
        self.jitter = random.Random(self.config.seed)  # retry jitter, apart from the routing RNG (as the app's)
        self.workers = workers
        self.dead: set[str] = set()  # workers whose server is down (sim.faults): attempts, polls, probes fail
        for url, w in workers.items():  # registration: all ready in the first round, in the given order
            self.core.add_worker(url, w.model_name)

    def __call__(self, req: UpstreamRequest) -> UpstreamResponse:
        endpoint = ENDPOINTS.get(req.path.strip("/"))
        if endpoint is None:
            return UpstreamResponse(404, {"content-type": "application/json"},
                                    data={"error": {"message": f"no route {req.path}", "code": "not_found"}})
        body = req.json if req.json is not None else json.loads(req.content or b"null")
        headers = {k.lower(): v for k, v in req.headers.items()}
        sim_t = _request_time(body) if isinstance(body, dict) else None
        now = sim_t if sim_t is not None else self.core.clock
        known = req.known_messages

        def perform(effect: Effect) -> Any:
            if isinstance(effect, Send):
                return self._attempt(effect.decision.url, endpoint, body, sim_t is not None, known)
            if isinstance(effect, PollLoads):  # answered by the worker cores at the virtual time
                return [None if u in self.dead else self.workers[u].loads(effect.now) for u in effect.urls]
            if isinstance(effect, ProbeHealth):
                return [u not in self.dead and self.workers[u].health()[0] < 300 for u in effect.urls]
            return None  # Backoff: no wait in virtual time

        steps = request_path(self.core, endpoint, headers, body, now, sim_t is not None, self.jitter, known)
        outcome = run(steps, perform)
        if isinstance(outcome, Attempt):
            return outcome.response
        status, err = upstream.refusal(outcome)
        return UpstreamResponse(status, {"content-type": "application/json"}, data=err)

    def _attempt(self, url: str, endpoint: str, body: Any, virtual: bool, known_messages: int) -> Attempt:
        if url in self.dead:  # connection refused, as the app's httpx send fails
            err = upstream.error_body(CONNECTION_FAILED, f"Failed to call upstream {url}: connection refused",
                                      type_="server_error")
            return Attempt(None, UpstreamResponse(500, {"content-type": "application/json"}, data=err))
        payload = upstream.with_defaults(endpoint, body)  # a new top-level dict, as SMG re-serializes
        reply = self.workers[url].infer(endpoint, payload, known_messages=known_messages)
        if not virtual:
            vf = None
        else:  # what x-sim-finish says (repr round-trips a float exactly), without writing it out
            vf = reply.timing.finish if reply.timing is not None else vtime.finish_time(reply.headers)
        # read, never changed; a chat answer typed, its body built if somebody reads it (fastjson.ChatAnswer)
        resp = UpstreamResponse(reply.status, _ReplyHeaders(reply), answer=reply.answer,
                                data=reply.body if reply.answer is None else None)
        return Attempt(reply.status, resp, vf)

    def metrics_text(self) -> str:
        return self.core.metrics.render().decode()


class DirectTransport:
    """Every component's core in this process; a turn is one synchronous call chain."""

    def __init__(self, setup: Setup, urls: list[str] | None = None) -> None:
        self.setup = setup
        configs = worker_configs(setup.scenario)
        # the URLs http uses when their block is free; never probed here, so a run does not depend on what
        # else the machine has bound (the gateway hashes URLs: another block is another ring)
        urls = urls or worker_urls(stable_ports(port_salt(setup), len(configs), check=False))
        self.worker_cores = {url: WorkerCore(cfg, seed=setup.seed) for url, cfg in zip(urls, configs, strict=True)}
        self.workers = [c.name for c in self.worker_cores.values()]
        self.gateway = DirectGateway(gateway_argv(setup, urls), self.worker_cores)
        self.session = SessionCore(routing_key=setup.routing_key, session_id_seed=setup.seed)
        self.session_core = self.session
        self._urls = list(self.worker_cores)

    @staticmethod
    def _reply(result: Any) -> Reply:
        if isinstance(result.body, fastjson.ChatAnswer):
            return Reply(result.status, answer=result.body)
        if result.content is not None:
            try:
                body = json.loads(result.content) if result.content else {}
            except ValueError:
                body = {"error": result.content.decode(errors="replace")}
        else:
            body = result.body if result.body is not None else {}
        return Reply(result.status, body)

    def create_session(self) -> Reply:
        try:
            return Reply(200, {"session_id": self.session.create_session(self.gateway.core.clock)})
        except SessionError as e:
            return Reply(e.status, {"error": e.message})

    def chat(self, session_id: str, body: dict[str, Any]) -> Reply:
        now = _request_time(body) or 0.0
        result = self.session.run_turn(session_id, body, _CLIENT_HEADERS, self.gateway, now)
        return self._reply(result)

    def get_session(self, session_id: str) -> Reply:
        try:
            # records' answers stay deferred (fastjson.Deferred): agents count them, read them only to check a log
            return Reply(200, self.session.get_view(session_id))
        except SessionError as e:
            return Reply(e.status, {"error": e.message})

    def delete_session(self, session_id: str) -> Reply:
        try:
            self.session.delete(session_id)
            return Reply(204, {})
        except SessionError as e:
            return Reply(e.status, {"error": e.message})

    def gateway_metrics(self) -> str:
        return self.gateway.metrics_text()

    # sim.faults.FaultTarget
    def fault_cores(self) -> list[WorkerCore]:
        return list(self.worker_cores.values())

    def set_worker_dead(self, index: int, dead: bool) -> None:
        (self.gateway.dead.add if dead else self.gateway.dead.discard)(self._urls[index])

    def worker_stats(self) -> dict[str, dict[str, Any]]:
        return {c.name: engine_stats(c) for c in self.worker_cores.values()}

    def close(self) -> None:
        pass


def engine_stats(core: WorkerCore) -> dict[str, Any]:
    st = core.engine.stats
    cap = core.config.kv_capacity_tokens
    return {"peak_kv_tokens": st.peak_kv_tokens, "peak_kv_usage": (st.peak_kv_tokens / cap) if cap else None,
            "evicted_tokens": st.evicted_tokens, "busy_time": st.busy_time, "slowdown": core.config.slowdown}
