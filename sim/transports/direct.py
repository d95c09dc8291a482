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

HiCache: the workers with a storage backend share one ``L3Store`` (``DirectTransport.storage``), so a page one worker
wrote is found by all of them from its ready time on; ``http`` serves that store to its workers instead.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import simpy

from mock_gateway import pd, upstream
from mock_gateway.config import parse_args
from mock_gateway.core import GatewayCore
from mock_gateway.request_path import (
    CONNECTION_FAILED,
    Attempt,
    PollLoads,
    ProbeHealth,
    Send,
    SendPair,
    request_path,
)
from session_server.core import SessionCore
from session_server.errors import SessionError
from session_server.upstream import UpstreamRequest, UpstreamResponse
from sim.cosim import EngineClock
from sim.engine.storage import L3Store
from sim.engine.transfer import Notice, Transfer
from sim.engine.types import WorkerConfig
from sim.transports.base import Reply
from sim.transports.pool import (
    Setup,
    gateway_argv,
    port_salt,
    stable_ports,
    storage_capacity_pages,
    worker_configs,
    worker_urls,
)
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


@dataclass(frozen=True, slots=True)
class Hold:
    """A worker's engine holds the request (``WorkerCore.infer`` answered it pending): wait for its answer."""

    url: str
    handle: int


@dataclass(frozen=True, slots=True)
class HoldPair:
    """PD: both legs' engines hold the request: wait for both answers, sent back as ``(prefill, decode)``."""

    prefill: Hold
    decode: Hold


Held = Hold | HoldPair
PairReplies = tuple[WorkerReply | None, WorkerReply | None]


def _timeline(reply: WorkerReply) -> tuple[float | None, float | None]:
    """A served reply's (first token, finish) virtual times, from its timing or its headers."""
    if reply.timing is not None:
        return reply.timing.first_token, reply.timing.finish
    first = reply.headers.get(vtime.HEADER_FIRST_TOKEN)
    return (float(first) if first is not None else None), vtime.finish_time(reply.headers)


def _held(reply: WorkerReply | None) -> bool:
    """The worker's engine holds the request (answered pending, no timeline yet)."""
    return reply is not None and reply.pending is not None and reply.timing is None


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
        roles = {url: (kind, port) for url, kind, port in self.config.startup_workers()}  # PD: worker types
        for url, w in workers.items():  # registration: all ready in the first round, in the given order
            kind, port = roles.get(url, ("regular", None))
            self.core.add_worker(url, w.model_name, worker_type=kind, bootstrap_port=port)

    def __call__(self, req: UpstreamRequest) -> UpstreamResponse:
        """The request's answer at once: for workers that answer at arrival (the arrival-time engine)."""
        steps = self.steps(req)
        try:
            held = next(steps)
        except StopIteration as done:
            return done.value
        steps.close()
        raise RuntimeError(f"worker {held.url} holds the request until its engine finishes it: drive "
                           "DirectGateway.steps under the co-simulated clock (sim.cosim)")

    def steps(self, req: UpstreamRequest) -> Generator[Held, WorkerReply | PairReplies | None, UpstreamResponse]:
        """The gateway's request path for one upstream request, as a generator: it yields ``Hold(url, handle)``
        while a worker's engine holds the request and expects that worker's answer back (None: the worker died
        with the request, a dropped connection). A PD pair is sent to the prefill worker first, then to the decode
        worker; while both engines hold it, one ``HoldPair`` is yielded and both answers are expected back."""
        endpoint = ENDPOINTS.get(req.path.strip("/"))
        if endpoint is None:
            return UpstreamResponse(404, {"content-type": "application/json"},
                                    data={"error": {"message": f"no route {req.path}", "code": "not_found"}})
        body = req.json if req.json is not None else json.loads(req.content or b"null")
        headers = {k.lower(): v for k, v in req.headers.items()}
        sim_t = _request_time(body) if isinstance(body, dict) else None
        now = sim_t if sim_t is not None else self.core.clock
        known = req.known_messages
        path = request_path(self.core, endpoint, headers, body, now, sim_t is not None, self.jitter, known)
        try:
            effect = next(path)
            while True:
                if isinstance(effect, Send):
                    url = effect.decision.url
                    reply = self._attempt(url, endpoint, body, known)
                    if reply is not None and reply.pending is not None and reply.timing is None:
                        reply = yield Hold(url, reply.pending)
                    result: Any = self._settle(url, reply, sim_t is not None)
                elif isinstance(effect, SendPair):
                    result = yield from self._pair(effect, endpoint, body, known, sim_t)
                elif isinstance(effect, PollLoads):  # answered by the worker cores at the virtual time
                    result = [None if u in self.dead else self.workers[u].loads(effect.now) for u in effect.urls]
                elif isinstance(effect, ProbeHealth):
                    result = [u not in self.dead and self.workers[u].health()[0] < 300 for u in effect.urls]
                else:
                    result = None  # Backoff: no wait in virtual time
                effect = path.send(result)
        except StopIteration as done:
            outcome = done.value
        except BaseException:  # closed while held, or a failure: nothing stays in flight in the gateway
            path.close()
            raise
        if isinstance(outcome, Attempt):
            return outcome.response
        status, err = upstream.refusal(outcome)
        return UpstreamResponse(status, {"content-type": "application/json"}, data=err)

    def _attempt(self, url: str, endpoint: str, body: Any, known_messages: int) -> WorkerReply | None:
        """The worker's reply (None: connection refused, a dead worker)."""
        if url in self.dead:
            return None
        payload = upstream.with_defaults(endpoint, body)  # a new top-level dict, as SMG re-serializes
        return self.workers[url].infer(endpoint, payload, known_messages=known_messages)

    def _pair(self, send: SendPair, endpoint: str, body: Any, known_messages: int, sim_t: float | None
              ) -> Generator[Held, Any, Attempt]:
        """One PD attempt: infer on the prefill worker, then on the decode worker (the same bootstrap fields in both
        bodies); the pair's outcome once both answered. A dead worker of either leg fails the pair before anything
        is sent (SMG's 502; PD with dead workers is not modelled further)."""
        p_url, d_url = send.prefill.url, send.decode.url
        assert p_url is not None and d_url is not None
        if p_url in self.dead or d_url in self.dead:
            status, err = pd.pair_failure(None, None, "connection refused")  # type: ignore[misc]
            return Attempt(status, UpstreamResponse(status, {"content-type": "application/json"}, data=err))
        payload = upstream.with_defaults(endpoint, body)
        p = self.workers[p_url].infer(endpoint, pd.leg_body(payload, send.bootstrap), known_messages=known_messages)
        d = self.workers[d_url].infer(endpoint, pd.leg_body(payload, send.bootstrap), known_messages=known_messages)
        if _held(p) and _held(d):
            p, d = yield HoldPair(Hold(p_url, p.pending), Hold(d_url, d.pending))  # type: ignore[arg-type]
        elif _held(p):
            p = yield Hold(p_url, p.pending)  # type: ignore[union-attr]
        elif _held(d):
            d = yield Hold(d_url, d.pending)  # type: ignore[union-attr]
        if p is None or d is None:  # the connection dropped: the worker died with the request
            status, err = pd.pair_failure(None, None, "connection closed")  # type: ignore[misc]
            return Attempt(status, UpstreamResponse(status, {"content-type": "application/json"}, data=err))
        attempt = self._settle(d_url, d, sim_t is not None)
        if not (200 <= p.status < 300 and 200 <= d.status < 300):
            detail = json.dumps(d.body if not 200 <= d.status < 300 else p.body)
            status, err = pd.pair_failure(p.status, d.status, detail)  # type: ignore[misc]
            return Attempt(status, UpstreamResponse(status, {"content-type": "application/json"}, data=err),
                           attempt.virtual_finish)
        if sim_t is not None:
            first, finish = _timeline(d)
            attempt.pd_times = pd.virtual_times(sim_t, _timeline(p)[1], first, finish, send.prefill.stream)
        return attempt

    @staticmethod
    def _settle(url: str, reply: WorkerReply | None, virtual: bool) -> Attempt:
        if reply is None:  # connection refused (or dropped), as the app's httpx send fails
            err = upstream.error_body(CONNECTION_FAILED, f"Failed to call upstream {url}: connection refused",
                                      type_="server_error")
            return Attempt(None, UpstreamResponse(500, {"content-type": "application/json"}, data=err))
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
        self.storage = shared_storage(configs, storage_capacity_pages(setup.scenario))  # HiCache's L3, or None
        self.worker_cores = {url: WorkerCore(cfg, seed=setup.seed, storage=self.storage if uses_storage(cfg) else None)
                             for url, cfg in zip(urls, configs, strict=True)}
        self.workers = [c.name for c in self.worker_cores.values()]
        self.gateway = DirectGateway(gateway_argv(setup, urls), self.worker_cores)
        self.session = SessionCore(routing_key=setup.routing_key, session_id_seed=setup.seed)
        self.session_core = self.session
        self._urls = list(self.worker_cores)
        self._index = {u: i for i, u in enumerate(self._urls)}
        self.clock: EngineClock | None = None

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
        """A turn answered at once (workers on the arrival-time engine); see ``chat_steps`` for the others."""
        now = _request_time(body) or 0.0
        result = self.session.run_turn(session_id, body, _CLIENT_HEADERS, self.gateway, now)
        return self._reply(result)

    # ---- the co-simulated clock (sim.cosim) ---------------------------------------------------

    def bind_clock(self, env: simpy.Environment) -> EngineClock:
        """Put the worker engines under ``env``'s clock; ``chat_steps`` then waits for them in virtual time."""
        self.clock = EngineClock(env, [_CorePort(c) for c in self.worker_cores.values()])
        self._env = env
        return self.clock

    def chat_steps(self, session_id: str, body: dict[str, Any]) -> Generator[simpy.Event, Any, Reply]:
        """One turn as SimPy steps: the session core's turn over the gateway's request path, suspended while an
        engine holds the request. The rest of the turn (the gateway's bookkeeping, the session's commit) runs
        inside the engine's wake-up that finished it, before any agent moves again (``sim.cosim``)."""
        now = _request_time(body) or 0.0
        chain = self._turn(session_id, body, now)
        done: simpy.Event = self._env.event()

        def resume(answer: WorkerReply | PairReplies | None) -> None:
            try:
                held = chain.send(answer)
            except StopIteration as end:
                done.succeed(self._reply(end.value))
                return
            self._hold(held, resume)

        try:
            held = next(chain)
        except StopIteration as end:
            return self._reply(end.value)
        self._hold(held, resume)
        return (yield done)

    def _turn(self, session_id: str, body: dict[str, Any], now: float) -> Generator[Held, Any, Any]:
        turn = self.session.turn_steps(session_id, body, _CLIENT_HEADERS, now)
        try:
            req = next(turn)
            while True:
                try:
                    resp = yield from self.gateway.steps(req)
                except BaseException:
                    turn.close()
                    raise
                req = turn.send(resp)
        except StopIteration as end:
            return end.value

    def _hold(self, held: Held, resume: Callable[[Any], None]) -> None:
        """Register the holder(s) with the clock and wake the engine(s): a PD pair's prefill engine first, then the
        decode's; the pair resumes with ``(prefill, decode)`` once both answered."""
        if isinstance(held, Hold):
            i = self._index[held.url]
            self.clock.hold(i, held.handle, resume)
            self.clock.touched(i)
            return
        answers: dict[str, WorkerReply | None] = {}

        def answered(leg: str) -> Callable[[WorkerReply | None], None]:
            def on_answer(answer: WorkerReply | None) -> None:
                answers[leg] = answer
                if len(answers) == 2:
                    resume((answers["prefill"], answers["decode"]))
            return on_answer

        legs = (("prefill", held.prefill), ("decode", held.decode))
        for leg, h in legs:
            self.clock.hold(self._index[h.url], h.handle, answered(leg))
        for _, h in legs:
            self.clock.touched(self._index[h.url])

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
        """A dead worker refuses connections; the requests its engine held die with it (dropped connections)."""
        url = self._urls[index]
        if not dead:
            self.gateway.dead.discard(url)
            return
        self.gateway.dead.add(url)
        lost = self.worker_cores[url].abort_pending()
        if self.clock is not None and lost:
            for resume in self.clock.drop(index, lost):
                resume(None)

    def worker_stats(self) -> dict[str, dict[str, Any]]:
        return {c.name: engine_stats(c) for c in self.worker_cores.values()}

    def close(self) -> None:
        pass


class _CorePort:
    """An in-process worker core as the clock's engine port."""

    __slots__ = ("core",)

    def __init__(self, core: WorkerCore) -> None:
        self.core = core

    def next_event_time(self) -> float:
        return self.core.next_event_time()

    def advance(self, until: float) -> list[tuple[int, WorkerReply]]:
        return [(r.pending, r) for r in self.core.advance(until)]  # type: ignore[misc]

    def notices(self) -> list[Notice]:
        return self.core.notices()

    def transfer_ready(self, t: Transfer) -> None:
        self.core.transfer_ready(t)


def uses_storage(config: WorkerConfig) -> bool:
    """The worker reads and writes the pool's L3 (``--hicache-storage-backend``)."""
    return config.hicache is not None and config.hicache.storage


def shared_storage(configs: list[WorkerConfig], capacity_pages: int | None) -> L3Store | None:
    """One L3 for every worker of the pool that has a storage backend (None when none has): pages of their page
    size, LRU beyond ``capacity_pages`` (None: unbounded)."""
    sizes = {c.page_size for c in configs if uses_storage(c)}
    if not sizes:
        return None
    if len(sizes) > 1:
        raise ValueError(f"the workers sharing an L3 need one page size, got {sorted(sizes)}")
    return L3Store(sizes.pop(), capacity_pages)


HICACHE_STATS = ("load_back_tokens", "load_back_seconds", "backup_tokens", "storage_prefetch_hit_tokens",
                 "storage_prefetch_unfulfilled_tokens", "storage_read_bytes", "storage_write_bytes")


def engine_stats(core: WorkerCore) -> dict[str, Any]:
    """A worker's row figures from its engine's counters (``sim.measures``: ``workers``, the engine totals); with
    HiCache also its counters (``HICACHE_STATS``) and its host pool's use at the end."""
    st = core.engine.stats
    cap = core.config.kv_capacity_tokens
    out = {"peak_kv_tokens": st.peak_kv_tokens, "peak_kv_usage": (st.peak_kv_tokens / cap) if cap else None,
           "evicted_tokens": st.evicted_tokens, "busy_time": st.busy_time, "slowdown": core.config.slowdown,
           "retractions": st.retractions, "recomputed_tokens": st.recomputed_tokens,
           "decode_stall_seconds": st.decode_stall_seconds, "queue_seconds": st.queue_time}
    if core.config.hicache is not None:
        out.update({name: getattr(st, name) for name in HICACHE_STATS})
        out["host_used_tokens"], out["host_total_tokens"] = st.host_used_tokens, st.host_total_tokens
    return out
