"""``direct``: the session server, gateway and worker cores wired in-process, without HTTP.

The wiring follows the HTTP adapters step by step (session_server.app, mock_gateway.app,
sim.worker.app) so that, for a seed, ``direct`` and ``http`` give identical results: the session
core runs each turn with a synchronous upstream; the upstream is the gateway core (advance the
virtual clock, take due load polls from the worker cores, select, count in flight, forward,
record the outcome, keep the request in flight until the worker's virtual finish); the worker
core answers with its modelled timeline. A worker marked dead (``sim.faults``) fails its attempts, load
polls and health probes as a refused connection does in ``http``.

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
from collections.abc import Iterator, Mapping
from typing import Any

from mock_gateway import retry, upstream
from mock_gateway.config import parse_args
from mock_gateway.core import GatewayCore
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
    """``mock_gateway.app``'s request path (``Gateway._proxy``/``_attempt``) over a ``GatewayCore`` and
    in-process ``WorkerCore``s, step for step, minus HTTP and the wall-clock retry backoff."""

    def __init__(self, argv: list[str], workers: dict[str, WorkerCore]) -> None:
        self.config = parse_args(argv)
        self.core = GatewayCore(self.config, now=0.0)
        self.workers = workers
        self.dead: set[str] = set()  # workers whose server is down (sim.faults): attempts, polls, probes fail
        for url, w in workers.items():  # registration: all ready in the first round, in the given order
            self.core.add_worker(url, w.model_name)

    def __call__(self, req: UpstreamRequest) -> UpstreamResponse:
        core, cfg = self.core, self.config
        endpoint = ENDPOINTS.get(req.path.strip("/"))
        if endpoint is None:
            return UpstreamResponse(404, {"content-type": "application/json"},
                                    data={"error": {"message": f"no route {req.path}", "code": "not_found"}})
        body = req.json if req.json is not None else json.loads(req.content or b"null")
        headers = {k.lower(): v for k, v in req.headers.items()}
        sim_t = _request_time(body) if isinstance(body, dict) else None
        now = sim_t if sim_t is not None else core.clock
        core.advance(now)
        for url in core.due_polls(core.clock):  # load polls answered by the worker cores at the virtual time
            core.record_load(url, None if url in self.dead else self.workers[url].loads(core.clock), core.clock)
        if sim_t is not None:  # health rounds on the virtual clock, as the app probes them (sim.faults)
            for url in core.due_health(core.clock):
                core.health_result(url, url not in self.dead and self.workers[url].health()[0] < 300, core.clock)
        core.breaker_tick(core.clock)
        resp: UpstreamResponse | None = None
        failed: list[str] = []  # a retry re-runs selection without the workers that failed this request
        m = core.metrics
        for attempt in range(cfg.max_attempts):
            d = core.select(endpoint, headers, body, now=core.clock, exclude=failed, attempt=attempt,
                            known_messages=req.known_messages)
            if d.url is None:
                if resp is not None:
                    break
                status, err = upstream.refusal(d)
                return UpstreamResponse(status, {"content-type": "application/json"}, data=err)
            ticket = core.begin(d)
            if d.url in self.dead:  # connection refused, as the app's httpx send fails
                core.finish(ticket)
                retryable = retry.settle_attempt(core, d.url, None, core.clock)
                err = upstream.error_body("call_upstream_connection_failed",
                                          f"Failed to call upstream {d.url}: connection refused", type_="server_error")
                resp = UpstreamResponse(500, {"content-type": "application/json"}, data=err)
            else:
                payload = upstream.with_defaults(endpoint, body)  # a new top-level dict, as SMG re-serializes
                reply = self.workers[d.url].infer(endpoint, payload, known_messages=req.known_messages)
                if sim_t is None:
                    vf = None
                else:  # what x-sim-finish says (repr round-trips a float exactly), without writing it out
                    vf = reply.timing.finish if reply.timing is not None else vtime.finish_time(reply.headers)
                # read, never changed; a chat answer typed, its body built if somebody reads it (fastjson.ChatAnswer)
                resp = UpstreamResponse(reply.status, _ReplyHeaders(reply), answer=reply.answer,
                                        data=reply.body if reply.answer is None else None)
                core.finish(ticket, virtual_finish=vf)
                retryable = retry.settle_attempt(core, d.url, reply.status, core.clock)
            failed.append(d.url)
            if not retry.retry_next(m, endpoint, attempt, cfg.max_attempts, retryable):
                break
        assert resp is not None
        return resp

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
