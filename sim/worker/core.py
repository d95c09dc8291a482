"""The pure core of a mock SGLang worker: request body in, response out; no I/O, time passed in.

The HTTP app (``sim.worker.app``) and the simulator's in-process ``direct`` transport both call the
same methods, so both paths give byte-identical bodies and timelines. The core ties the worker's rooms
together: validation (``sim.worker.request``), the engine (``sim.engine``), answers and streams
(``sim.worker.answers``), replies and errors (``sim.worker.reply``), faults (``sim.worker.faults``),
registration documents (``sim.worker.documents``) and load reports (``sim.worker.metrics``).

API (all methods are synchronous and take the current time as an argument):

``WorkerCore(config, *, model_name="mock-model", seed=0, default_max_tokens=64, faults=None, ...)``
    ``config`` is a ``sim.engine.WorkerConfig``; ``seed`` is the *pool* seed, which decides answers
    (``synth_answer(request_seed(seed, prompt_ids), n)``), so every worker of a pool gives the same
    answer to the same prompt. A separate per-worker fault RNG is seeded from ``(seed, name)``.
    Token ids are read-only int64 arrays inside the core: ``input_ids`` (a JSON list, or an int64 array from
    an in-process caller) become one when parsed, and ``prompt_token_ids`` in answers is that array
    (``testbed_common.fastjson`` writes it as the JSON list), the caller's own object when it sent an int64
    array, so an in-process caller can recognise its ids by identity; answers, like requests, are read-only
    to everyone.

``core.infer(route, body, now=None) -> Reply``
    ``route`` is ``"chat"`` (``/v1/chat/completions``), ``"completions"`` (``/v1/completions``) or
    ``"generate"`` (``/generate``); ``body`` is the parsed JSON (any value; bad input gives a 4xx
    ``Reply``). The request time is the body's ``sim_time`` when present (virtual time), else
    ``now`` (live time: the adapter's scaled wall clock), else the core's last time. Times passed
    to the engine are made nondecreasing. A ``Reply`` (``sim.worker.reply``) carries the status, the
    ``x-sim-*`` headers, the body (a 200 chat answer echoing its prompt: typed, ``Reply.answer``) or the stream
    events with their due times, the engine's ``RequestTiming`` and whether the adapter answers at once
    (virtual time) or holds the answer (live time).

With the iteration-level engine (``sim.engine.IterationEngine``: ``WorkerConfig.engine == "iteration"``) a served
request's timeline depends on what arrives after it, so ``infer`` answers it *pending* (``Reply.pending``: the
worker's id of the request, no body yet) and the answer comes from ``advance``. A request reaches the engine's
scheduler ``WorkerConfig.request_overhead`` after it reaches the worker (tokenisation; a profile's overhead), and
its timeline counts from its arrival at the worker:

``core.next_event_time() -> float``   when the engine next decides something (``math.inf``: idle, or the
    arrival-time engine, which answers at once).
``core.advance(until) -> list[Reply]``   run the engine to ``until``; the answers of the requests it finished,
    in finish order, each with ``pending`` still set to its id. Whoever owns the clock calls it: the
    co-simulation (``sim.cosim``) in virtual time, the worker app's stepping task in live time.
``core.abort_pending() -> list[int]``   drop every request the worker holds (the server died): their ids.

PD disaggregation (``WorkerConfig.disaggregation_mode``; shared/specs/pd-hicache.md section 2): an inference
request needs an integer ``bootstrap_room`` in [0, 2**63 - 1] (400 otherwise; SMG injects it into both legs).

- A **prefill** worker runs the request with its output cut to ONE token, so its tree gets the prompt only (SGLang
  inserts ``owned_kv_len`` = the prompt at the transfer's end: ``mem_cache/common.py`` ``release_kv_cache``). When
  its engine finishes the prefill, ``notices()`` gives a ``PrefillDone``; its answer (a 200 of that one token,
  finish_reason "length") waits for ``transfer_ready(t)`` and comes out of ``advance`` at ``t.ready``.
- A **decode** worker's engine pre-allocates the request's KV (``notices()`` then gives a ``DecodeReady``), and
  once ``transfer_ready(t)`` says when the KV is complete, decodes it in its batch; its answer's ``sim`` object
  takes ``start`` and ``cached_tokens`` from the prefill (SGLang relays the prefill's ``cached_tokens``) and adds
  ``"pd"``: the prefill's worker, start, end and hit, the decode prefix, the transfer's tokens, bytes and ready time.

``core.notices() -> list[Notice]``   the notices the last ``advance`` calls produced (drained).
``core.transfer_ready(t)``           the transfer of a room this worker holds (ignored for a room it does not).
``core.fail_transfer(room, message)``  a decode worker's transfer failed: the request leaves its engine, and the
    error answer (a 500, as SGLang's) comes back at once (``Reply.pending``: its id); None for a room not waiting.

``core.loads(now, timestamp=None) -> dict``   SMG's ``WorkerLoadResponse`` (``GET /v1/loads``).
``core.metrics(now) -> bytes``         Prometheus text (``GET /metrics``), ``sglang:`` names.
``core.health() -> (status, dict)``    200, or 503 when the ``unhealthy`` fault is set.
``core.models()``, ``core.server_info()``, ``core.model_info()``   registration documents.
``core.flush_cache(now) -> (status, dict)``   empties the radix cache (400 while requests are in flight).
``core.update_faults(body) -> (status, dict)`` / ``core.faults``   fault knobs (``Faults``).

Mixing virtual-time and live-time requests on one worker is a misuse (the clock only moves forward).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from sim.engine.storage import StorageTier
from sim.engine.transfer import MAX_ROOM, DecodeReady, Notice, PrefillDone, Transfer
from sim.engine.types import EngineLoad, RequestTiming, WorkerConfig
from sim.worker import documents
from sim.worker.answers import Answer
from sim.worker.faults import FaultDraws, Faults, updated_faults
from sim.worker.metrics import (
    HiCacheAnswers,
    MetricsSample,
    PrometheusMetrics,
    disaggregation_section,
    loads_document,
)
from sim.worker.reply import Reply, error_body, error_reply
from sim.worker.request import ROUTES, BadRequest, parse_request
from testbed_common import tokenizer, vtime


class WorkerCore:
    """One mock SGLang worker: request parsing, the engine call, response building, faults."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        model_name: str = "mock-model",
        seed: int = 0,
        default_max_tokens: int = 64,
        context_length: int = 1 << 20,
        faults: Faults | None = None,
        engine: Any = None,
        storage: StorageTier | None = None,
    ) -> None:
        from sim.engine import Engine, IterationEngine  # late import: the engine modules are heavier than types

        self.config = config
        self.name = config.name
        self.model_name = model_name
        self.seed = seed
        self.default_max_tokens = default_max_tokens
        self.context_length = context_length
        self.faults = faults or Faults()
        self.storage = storage  # HiCache's L3, shared by the pool (``WorkerConfig.hicache.storage``)
        if engine is None:
            engine = IterationEngine(config, storage=storage) if config.engine == "iteration" else Engine(config)
        self.engine = engine
        self.iteration = isinstance(engine, IterationEngine)  # answers wait for ``advance``
        self._pending: dict[int, tuple[Any, ...]] = {}  # request id -> its arrival and what its answer needs
        self._arrivals: deque[tuple[float, int, np.ndarray, np.ndarray]] = deque()  # not yet at the scheduler
        self._by_handle: dict[int, int] = {}  # engine handle -> request id
        self._next_id = 0
        self._fault_draws = FaultDraws(seed, config.name)
        self._clock = 0.0
        self._count = 0  # requests served: with the worker's name, the answer ids of requests without a rid
        self.failed_requests = 0
        # PD: a request's room and bootstrap address, its engine handle (decode), the answers waiting for a transfer
        self.role = config.disaggregation_mode
        self._rooms: dict[int, tuple[int, str | None, int | None]] = {}  # request id -> room, host, port
        self._room_ids: dict[int, int] = {}  # room -> request id
        self._handles: dict[int, int] = {}  # decode: request id -> engine handle
        self._prefilled: dict[int, Any] = {}  # prefill: request id -> its engine timing, until its transfer is known
        self._held: list[tuple[float, int, Transfer, Any]] = []  # prefill: (ready, id, transfer, timing) by ready
        self._transfers: dict[int, Transfer] = {}  # decode: request id -> its transfer
        self._notices: list[Notice] = []
        self._last_transfer: Transfer | None = None
        self.hicache_answers = HiCacheAnswers()  # HiCache: the served answers' cached tokens by tier, load-backs
        self._metrics = PrometheusMetrics(model_name, self.name, self._metrics_sample)
        self._apply_slowdown()

    # ---- time -------------------------------------------------------------------------------

    def now(self, t: float | None = None) -> float:
        """Advance the core's clock to ``t`` (never backwards) and return it."""
        if t is not None and t > self._clock:
            self._clock = t
        return self._clock

    # ---- registration and control documents ---------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        if self.faults.unhealthy:
            return 503, {"status": "unhealthy", "worker": self.name}
        return 200, {"status": "ok", "worker": self.name}

    def models(self) -> dict[str, Any]:
        return documents.models(self.model_name, self.context_length)

    def server_info(self) -> dict[str, Any]:
        return documents.server_info(self.config, self.model_name, self.context_length)

    def model_info(self) -> dict[str, Any]:
        return documents.model_info(self.model_name)

    def flush_cache(self, now: float | None = None) -> tuple[int, dict[str, Any]]:
        """Empty the radix cache at ``now``; refused (400) while requests are in flight, as in SGLang."""
        t = self.now(now)
        if not self.iteration:
            self.engine.advance(t)
        in_flight = len(self._pending) if self.iteration else self.engine.in_flight
        if in_flight:
            return 400, {
                "success": False,
                "worker": self.name,
                "message": f"Cache not flushed because there are {in_flight} pending requests.",
            }
        flushed = self.engine.flush_cache()
        return 200, {"success": True, "message": "Cache flushed.", "flushed_tokens": flushed, "worker": self.name}

    def update_faults(self, body: Any) -> tuple[int, dict[str, Any]]:
        """Apply a partial fault update (``POST /admin/faults``); all-or-nothing on bad input."""
        try:
            self.faults = updated_faults(self.faults, body)
        except BadRequest as e:
            return e.status, error_body(str(e), e.status, e.param)
        self._apply_slowdown()
        return 200, self.faults.as_dict()

    def _apply_slowdown(self) -> None:
        """The ``slowdown`` fault multiplies the engine's own slowdown, so queueing feels it too."""
        want = self.config.slowdown * self.faults.slowdown
        if self.engine.config.slowdown != want:
            self.engine.config = dataclasses.replace(self.engine.config, slowdown=want)

    # ---- load reporting -----------------------------------------------------------------------

    def load(self, now: float | None = None) -> EngineLoad:
        """The engine's load at ``now``. The iteration-level engine is only read: the clock's owner advances it."""
        t = self.now(now)
        if not self.iteration:
            self.engine.advance(t)
        return self.engine.load(t)

    def loads(self, now: float | None = None, timestamp: str | None = None,
              include_disagg: bool = False) -> dict[str, Any]:
        """SMG's ``WorkerLoadResponse`` at ``now`` (``sim.worker.metrics.loads_document``); ``include_disagg``:
        with SGLang's ``disaggregation`` section (``/v1/loads?include=disagg``)."""
        ld = self.load(now)
        return loads_document(ld, self._clock, self.name, timestamp,
                              self._disaggregation() if include_disagg else None)

    def _disaggregation(self) -> dict[str, Any]:
        """The PD queues (prefill: bootstrap 0, inflight = prefills waiting for their transfer) and, on a prefill
        worker, its last transfer's latency and speed as SGLang measures them (``req_time_stats.py``
        ``compute_and_observe_kv_transfer_metrics``): from the prefill's end to the transfer's, and the bytes over
        that time."""
        if self.role == "decode":
            queues = (0, 0, *self.engine.disagg_queues())
        else:
            queues = (0, len(self._prefilled) + len(self._held), 0, 0, 0)
        speed = latency = 0.0
        t = self._last_transfer
        if t is not None:
            seconds = t.ready - t.prefill.end
            if seconds > 0:
                speed, latency = t.bytes / seconds / 1e9, seconds * 1e3
        return disaggregation_section(self.role, queues, speed, latency)

    def metrics(self, now: float | None = None) -> bytes:
        """Prometheus exposition text of this worker alone (its own registry)."""
        return self._metrics.exposition(self.now(now))

    def _metrics_sample(self, now: float) -> MetricsSample:
        hicache = self.hicache_answers if self.config.hicache is not None else None
        return self.load(now), self.engine.stats, self.failed_requests, hicache

    # ---- inference ----------------------------------------------------------------------------

    def generate_ids(self, now: float, prompt_ids: np.ndarray, max_tokens: int) -> tuple[RequestTiming, np.ndarray]:
        """What ``infer`` does for a token request once it is parsed, without a body: the answer's output ids and
        the engine's timeline, for an in-process caller that checked its ids itself (the trace replayer). Sizes
        are the caller's to check first (``request.admission_refusal``); raises ValueError when the engine cannot
        admit the request."""
        rseed = tokenizer.request_seed(self.seed, prompt_ids)
        _, output_ids, _ = tokenizer.synth_answer_array(rseed, max_tokens)
        timing = self.engine.submit(self.now(now), prompt_ids, output_ids)
        self._count += 1
        return timing, output_ids

    def infer(self, route: str, body: Any, now: float | None = None, *, known_messages: int = 0) -> Reply:
        """Serve one inference request (see the module docstring).

        A 200 chat answer that echoes ``prompt_token_ids`` (not streamed) comes typed, as a ``fastjson.ChatAnswer``
        (``Reply.answer``): most answers of a simulation are never read whole, so their per-token objects are made
        only when somebody reads ``Reply.body`` (the HTTP adapter does, to write it).

        ``known_messages`` (in-process callers only, never from JSON): the first that many chat ``messages`` are
        the very objects of a request a worker answered 200 before (they passed this same check then, and nobody
        changes them), so only the rest are checked (same answer, O(new messages)). Kept, a measured reason:
        without it a ``direct`` request on ``large`` costs 10.1 % more instructions (911 k, not 828 k)."""
        if route not in ROUTES:
            return error_reply(f"unknown route {route!r}", status=404)
        if type(body) is not dict and not isinstance(body, Mapping):
            return error_reply("request body must be a JSON object")
        sim_time = body.get(vtime.SIM_TIME_FIELD)
        if type(sim_time) is not float or not 0.0 <= sim_time < math.inf:  # else: what request_time gives
            sim_time = vtime.request_time(body)
            if body.get(vtime.SIM_TIME_FIELD) is not None and sim_time is None:
                return error_reply("sim_time must be a finite non-negative number", param=vtime.SIM_TIME_FIELD)
        try:
            req = parse_request(
                route,
                body,
                known_messages,
                default_max_tokens=self.default_max_tokens,
                context_length=self.context_length,
                kv_capacity=self.config.kv_capacity_tokens,
            )
        except BadRequest as e:
            return error_reply(str(e), e.param, e.status)
        if self.role is not None:
            room = body.get("bootstrap_room")
            if type(room) is not int or not 0 <= room <= MAX_ROOM:
                return error_reply(f"a {self.role} worker needs an integer bootstrap_room in [0, 2**63 - 1]",
                                   param="bootstrap_room")
            if room in self._room_ids:
                return error_reply(f"bootstrap_room {room} is already in flight on this worker",
                                   param="bootstrap_room")
        t = self.now(sim_time if sim_time is not None else now)
        virtual = sim_time is not None
        headers = {vtime.HEADER_WORKER: self.name}
        fault = self._fault_draws.injected(self.faults, req.has_input_ids)
        if fault is not None:
            self.failed_requests += 1
            return Reply(fault[0], fault[1], headers=headers, virtual=virtual)

        self._apply_slowdown()  # also when a caller set ``core.faults`` directly
        rseed = tokenizer.request_seed(self.seed, req.prompt_ids)
        text, output_arr, vocab_idx = tokenizer.synth_answer_array(rseed, req.max_tokens)
        if self.iteration:  # answered when the engine finishes it (``advance``); ``pending`` is the worker's id
            if self.role == "prefill":  # its one token: the prompt's KV and the first token, then the decode's
                text = text.split(" ", 1)[0] if len(output_arr) > 1 else ""
                output_arr, vocab_idx = output_arr[:1], None
            refused = self.engine.refusal(len(req.prompt_ids), len(output_arr))
            if refused is not None:
                return error_reply(f"the worker cannot admit this request: {refused}")
            self._count += 1
            rid = self._next_id
            self._next_id += 1
            self._pending[rid] = (t, req, text, output_arr, rseed, vocab_idx, self._count, headers, virtual)
            if self.role is not None:
                host, port = body.get("bootstrap_host"), body.get("bootstrap_port")
                self._rooms[rid] = (room, host if type(host) is str else None, port if type(port) is int else None)
                self._room_ids[room] = rid
            self._arrivals.append((t + self.config.request_overhead, rid, req.prompt_ids, output_arr))
            if not self.config.request_overhead:  # at the scheduler at once
                self._to_scheduler(t)
            return Reply(200, headers=headers, virtual=virtual, pending=rid)
        try:
            timing = self.engine.submit(t, req.prompt_ids, output_arr)
        except ValueError as e:
            return error_reply(f"the worker cannot admit this request: {e}")
        self._count += 1  # the timeline headers come with ``timing`` (``Reply.headers`` writes them when read)
        return self._answer(req, timing, text, output_arr, rseed, vocab_idx, self._count, headers, virtual)

    def _answer(self, req: Any, timing: Any, text: str, output_arr: np.ndarray, rseed: int,
                vocab_idx: np.ndarray | None, serial: int, headers: dict[str, str], virtual: bool,
                pending: int | None = None, finish_reason: str = "stop", pd: dict[str, Any] | None = None) -> Reply:
        hicache = self.config.hicache
        if hicache is not None:
            copy = None  # the load-back copy of a request this worker prefilled (a decode relays the prefill's hits)
            if timing.cached_host and self.role != "decode":
                copy = timing.cached_host * self.config.kv_bytes_per_token / hicache.pcie_bandwidth
            self.hicache_answers.observe(timing, copy)
        ctx = Answer(req, timing, text, output_arr, rseed, vocab_idx, worker=self.name, model_name=self.model_name,
                     serial=serial, finish_reason=finish_reason, pd=pd, hicache=hicache)
        if req.stream:
            events, times = ctx.events()
            return Reply(200, events=events, event_times=times, headers=headers, timing=timing, virtual=virtual,
                         pending=pending)
        if req.route == "chat" and req.return_prompt_token_ids:  # typed: what ChatAnswer's fields read is in the body
            return Reply(200, answer=ctx, headers=headers, timing=timing, virtual=virtual, pending=pending)
        return Reply(200, body=ctx.value(), headers=headers, timing=timing, virtual=virtual, pending=pending)

    # ---- the clock's owner (iteration-level engine) -------------------------------------------

    def next_event_time(self) -> float:
        if not self.iteration:
            return math.inf
        t = self.engine.next_event_time()
        if self._held and self._held[0][0] < t:
            t = self._held[0][0]
        return min(t, self._arrivals[0][0]) if self._arrivals else t

    def _to_scheduler(self, until: float) -> None:
        """Hand the engine the requests whose overhead has passed by ``until`` (in arrival order)."""
        arrivals, by_handle = self._arrivals, self._by_handle
        while arrivals and arrivals[0][0] <= until:
            ready, rid, prompt_ids, output_ids = arrivals.popleft()
            handle = self.engine.submit(ready, prompt_ids, output_ids)
            by_handle[handle] = rid
            if self.role == "decode":
                self._handles[rid] = handle

    def advance(self, until: float) -> list[Reply]:
        """Run the engine to ``until``; the answers of the requests it finished (``Reply.pending``: the id ``infer``
        gave). A finished request's timeline starts at its arrival at the worker (the overhead included)."""
        if not self.iteration:
            return []
        self._to_scheduler(until)
        out = []
        role = self.role
        for done in self.engine.advance(until):
            rid = self._by_handle.pop(done.handle)
            if role == "prefill":
                self._prefill_done(rid, done.timing)
                continue
            arrival, *args = self._pending.pop(rid)
            timing = done.timing if done.timing.arrival == arrival else dataclasses.replace(done.timing,
                                                                                          arrival=arrival)
            if role == "decode":
                out.append(self._decode_answer(rid, timing, args))
                continue
            out.append(self._answer(args[0], timing, *args[1:], pending=rid))
        if role == "decode":
            for handle, at, prefix in self.engine.take_preallocated():
                rid = self._by_handle[handle]
                room, host, port = self._rooms[rid]
                self._notices.append(DecodeReady(room=room, worker=self.name, at=at,
                                                 prompt_tokens=len(self._pending[rid][1].prompt_ids),
                                                 decode_prefix_tokens=prefix, bootstrap_host=host,
                                                 bootstrap_port=port))
        held = self._held
        while held and held[0][0] <= until:
            _, rid, t, timing = held.pop(0)
            out.append(self._prefill_answer(rid, t, timing))
        return out

    # ---- PD disaggregation ---------------------------------------------------------------------

    def notices(self) -> list[Notice]:
        """The PD notices ``advance`` produced since the last call (prefill: ``PrefillDone``; decode:
        ``DecodeReady``), in order."""
        out, self._notices = self._notices, []
        return out

    def transfer_ready(self, t: Transfer) -> None:
        """The transfer of room ``t.room``: a prefill worker answers the request at ``t.ready``; a decode worker's
        engine lets it run from then. A room this worker does not hold is ignored (its request was lost)."""
        rid = self._room_ids.get(t.room)
        if rid is None:
            return
        if self.role == "prefill":
            self._last_transfer = t
            timing = self._prefilled.pop(rid, None)
            if timing is None:
                return  # not prefilled yet: a transfer cannot be known before its PrefillDone
            entry = (t.ready, rid, t, timing)
            held = self._held
            i = len(held)
            while i and held[i - 1][0] > t.ready:
                i -= 1
            held.insert(i, entry)
        elif self.role == "decode" and rid in self._handles and rid not in self._transfers:
            self._transfers[rid] = t
            self.engine.transfer_ready(self._handles[rid], t.ready)

    def fail_transfer(self, room: int, message: str) -> Reply | None:
        """The KV transfer of room ``room`` failed (its prefill's bootstrap server unreachable, stopping or refusing):
        a decode worker drops the request from its engine, KV released (``IterationEngine.abort_transfer``), and
        answers it with SGLang's error, a 500 (``disaggregation/decode.py``: ``KVPoll.Failed`` -> ``prepare_abort(...,
        INTERNAL_SERVER_ERROR)``), given here: ``Reply.pending`` is the request's id. None when this worker holds no
        request of that room waiting for its KV."""
        rid = self._room_ids.get(room)
        if self.role != "decode" or rid is None or rid in self._transfers:
            return None
        handle = self._handles.get(rid)
        if handle is None or not self.engine.abort_transfer(handle):
            return None
        del self._by_handle[handle], self._handles[rid]
        *_, headers, virtual = self._pending.pop(rid)
        self._forget_room(rid)
        body = error_body(f"Decode transfer failed for request bootstrap_room={room}: {message}", 500)
        return Reply(500, body, headers=headers, virtual=virtual, pending=rid)

    def _prefill_done(self, rid: int, timing: Any) -> None:
        """A prefill finished in the engine: its notice; its answer waits for the transfer."""
        arrival = self._pending[rid][0]
        room = self._rooms[rid][0]
        self._prefilled[rid] = timing
        cfg = self.config
        self._notices.append(PrefillDone(room=room, worker=self.name, arrival=arrival, start=timing.start,
                                         end=timing.first_token, prompt_tokens=timing.prompt_tokens,
                                         cached_tokens=timing.cached_tokens,
                                         last_chunk_tokens=timing.last_extend_tokens,
                                         cached_device=timing.cached_device, cached_host=timing.cached_host,
                                         cached_storage=timing.cached_storage,
                                         load_back_seconds=timing.load_back_seconds,
                                         prefetch_seconds=timing.prefetch_seconds,
                                         kv_bytes_per_token=cfg.kv_bytes_per_token,
                                         bandwidth=cfg.transfer_bandwidth))

    def _prefill_answer(self, rid: int, t: Transfer, timing: Any) -> Reply:
        """The prefill leg's answer at the transfer's end: its one token, ``finish`` = ``t.ready``."""
        arrival, *args = self._pending.pop(rid)
        self._forget_room(rid)
        timing = dataclasses.replace(timing, arrival=arrival, finish=t.ready)
        return self._answer(args[0], timing, *args[1:], pending=rid, finish_reason="length",
                            pd={"role": "prefill", "transfer_ready": t.ready})

    def _decode_answer(self, rid: int, timing: Any, args: list[Any]) -> Reply:
        """The decode leg's answer: the decode engine's timeline from the prefill's start, the prefill's hit."""
        t = self._transfers.pop(rid)
        self._handles.pop(rid, None)
        self._forget_room(rid)
        p = t.prefill
        timing = dataclasses.replace(timing, start=p.start, cached_tokens=p.cached_tokens,
                                     cached_device=p.cached_device, cached_host=p.cached_host,
                                     cached_storage=p.cached_storage, load_back_seconds=p.load_back_seconds,
                                     prefetch_seconds=p.prefetch_seconds)
        pd = {"prefill_worker": p.worker, "prefill_start": p.start, "prefill_end": p.end,
              "prefill_cached_tokens": p.cached_tokens, "decode_prefix_tokens": t.decode.decode_prefix_tokens,
              "transfer_tokens": t.tokens, "transfer_bytes": t.bytes, "transfer_ready": t.ready}
        return self._answer(args[0], timing, *args[1:], pending=rid, pd=pd)

    def _forget_room(self, rid: int) -> None:
        room = self._rooms.pop(rid)[0]
        del self._room_ids[room]

    @property
    def pending(self) -> int:
        """Requests the engine holds (submitted, not yet answered)."""
        return len(self._pending)

    def abort_pending(self) -> list[int]:
        """Drop every request the engine holds, as a dying server loses them; their handles."""
        if not self.iteration or not self._pending:
            return []
        from sim.engine import IterationEngine

        handles = list(self._pending)
        stats = self.engine.stats  # the counters go on; the KV, the cache and the queues die with the server
        self.engine = IterationEngine(self.engine.config, storage=self.storage)  # L3 outlives the server: shared
        self.engine.stats = stats
        self._pending.clear()
        self._arrivals.clear()
        self._by_handle.clear()
        for pd_state in (self._rooms, self._room_ids, self._handles, self._prefilled, self._transfers):
            pd_state.clear()
        self._held.clear()
        self._notices.clear()
        return handles
