"""The pure core of a mock SGLang worker: request body in, response out; no I/O, time passed in.

The HTTP app (``sim.worker.app``) and the simulator's in-process ``direct`` transport both call the
same methods, so both paths give byte-identical bodies and timelines.

API (all methods are synchronous and take the current time as an argument):

``WorkerCore(config, *, model_name="mock-model", seed=0, default_max_tokens=64, faults=None, ...)``
    ``config`` is a ``sim.engine.WorkerConfig``; ``seed`` is the *pool* seed, which decides answers
    (``synth_answer(request_seed(seed, prompt_ids), n)``), so every worker of a pool gives the same
    answer to the same prompt. A separate per-worker fault RNG is seeded from ``(seed, name)``.
    ``token_arrays=True`` (for in-process callers such as the ``direct`` transport): ``prompt_token_ids``
    in answers is a read-only 1-D int64 numpy array instead of a list (same ids; ``testbed_common.fastjson``
    writes it as the same JSON list), so a prompt is never re-boxed into Python ints. HTTP adapters
    keep the default (lists). Either way the echo is the request's own ``input_ids`` object when it is
    of that kind (a list, or a read-only int64 array), so an in-process caller can recognise its ids by
    identity; answers, like requests, are read-only to everyone.

``core.infer(route, body, now=None) -> Reply``
    ``route`` is ``"chat"`` (``/v1/chat/completions``), ``"completions"`` (``/v1/completions``) or
    ``"generate"`` (``/generate``); ``body`` is the parsed JSON (any value; bad input gives a 4xx
    ``Reply``). The request time is the body's ``sim_time`` when present (virtual time), else
    ``now`` (live time: the adapter's scaled wall clock), else the core's last time. Times passed
    to the engine are made nondecreasing. A ``Reply`` has ``status``, ``headers`` (``x-sim-*``),
    ``body`` (a JSON object) or, for ``stream: true``, ``events`` (JSON objects, each sent as
    ``data: <json>\\n\\n``, followed by ``data: [DONE]``) with ``event_times`` (the virtual time each
    event is due), ``timing`` (the engine's ``RequestTiming``) and ``virtual`` (True when the body
    carried ``sim_time``: answer at once; False: the adapter holds the answer for
    ``timing.finish - timing.arrival`` model seconds, stream events likewise).

``core.loads(now, timestamp=None) -> dict``   SMG's ``WorkerLoadResponse`` (``GET /v1/loads``).
``core.metrics(now) -> bytes``         Prometheus text (``GET /metrics``), ``sglang:`` names.
``core.health() -> (status, dict)``    200, or 503 when the ``unhealthy`` fault is set.
``core.models()``, ``core.server_info()``, ``core.model_info()``   registration documents.
``core.flush_cache(now) -> (status, dict)``   empties the radix cache (400 while requests are in flight).
``core.update_faults(body) -> (status, dict)`` / ``core.faults``   fault knobs (``Faults``).

Response fields beyond OpenAI/SGLang: a top-level ``"sim"`` object (``arrival``, ``start``,
``first_token``, ``finish``, ``worker``, ``cached_tokens``, ``evicted_tokens``; see ``testbed_common.vtime``)
in JSON answers and in the last stream event; headers ``x-sim-arrival``, ``x-sim-start``,
``x-sim-first-token``, ``x-sim-finish`` on every served answer and ``x-sim-worker`` on every answer.
``meta_info`` (``output_token_logprobs`` as ``[logprob, token_id, null]``, ``prompt_tokens``,
``completion_tokens``, ``cached_tokens``) is always present, whatever ``return_meta_info`` says.
Mixing virtual-time and live-time requests on one worker is a misuse (the clock only moves forward).

Output length: ``max_tokens`` (chat, completions; ``max_completion_tokens`` also accepted) or
``sampling_params.max_new_tokens`` (generate) is the exact number of output tokens, the last one
being ``<|im_end|>`` (finish_reason ``"stop"``, as with ``ignore_eos``); absent, ``default_max_tokens``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import xxhash
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sim.engine.types import EngineLoad, RequestTiming, WorkerConfig
from testbed_common import fastjson, tokenizer, vtime

Route = Literal["chat", "completions", "generate"]
ROUTES: tuple[str, ...] = ("chat", "completions", "generate")
MAX_TOKEN_ID = (1 << 32) - 1
ROLLBACK_FAILED_MESSAGE = "rollback failed: injected prefix-cache state mismatch (mock worker fault)"
STREAM_CHUNKS = 16  # content events per streamed answer at most (tokens are grouped evenly)


class BadRequest(ValueError):
    """Invalid input; becomes a 4xx JSON error."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


def error_body(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """SGLang's error shape (``ErrorResponse``), also understood by OpenAI clients via ``message``."""
    kind = {
        400: "BadRequestError",
        404: "NotFoundError",
        413: "PayloadTooLargeError",
        422: "UnprocessableEntityError",
    }.get(status, "InternalServerError" if status >= 500 else "BadRequestError")
    return {"object": "error", "message": message, "type": kind, "param": param, "code": status}


@dataclass
class Faults:
    """Fault knobs. Rates are shares of inference requests in [0, 1]; ``slowdown`` >= 1 multiplies
    every modelled duration from now on (a runtime knob on top of ``WorkerConfig.slowdown``)."""

    fail_rate: float = 0.0  # answer 500 without serving
    rollback_fail_rate: float = 0.0  # answer 400 "rollback failed" to requests that carry input_ids
    slowdown: float = 1.0
    unhealthy: bool = False  # /health answers 503
    exit: bool = False  # the adapter stops serving this worker

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Reply:
    """What an adapter sends back for one request.

    ``headers``: the worker's name and, for a served request, its virtual timeline (``vtime.HEADER_ARRIVAL``
    ...). The timeline's header strings are made on first read of ``headers``: an in-process caller that reads
    ``timing`` instead never pays for four float reprs per request."""

    __slots__ = ("_headers", "_timed", "answer", "body", "event_times", "events", "status", "timing", "virtual")

    def __init__(self, status: int, body: dict[str, Any] | None = None, answer: fastjson.ChatAnswer | None = None,
                 events: list[dict[str, Any]] | None = None, event_times: list[float] | None = None,
                 headers: dict[str, str] | None = None, timing: RequestTiming | None = None,
                 virtual: bool = True) -> None:
        self.status = status
        self.body = body
        self.answer = answer  # instead of ``body``: see ``WorkerCore.infer(deferred=True)``
        self.events = events
        self.event_times = [] if event_times is None else event_times
        self._headers = {} if headers is None else headers
        self.timing = timing
        self.virtual = virtual
        self._timed = timing is None or status != 200  # the timeline headers are written (or there are none)

    @property
    def headers(self) -> dict[str, str]:
        h = self._headers
        if not self._timed:
            self._timed = True
            t = self.timing
            assert t is not None
            h[vtime.HEADER_ARRIVAL] = repr(t.arrival)
            h[vtime.HEADER_START] = repr(t.start)
            h[vtime.HEADER_FIRST_TOKEN] = repr(t.first_token)
            h[vtime.HEADER_FINISH] = repr(t.finish)
        return h

    @headers.setter
    def headers(self, value: dict[str, str]) -> None:
        self._headers, self._timed = value, True

    @property
    def stream(self) -> bool:
        return self.events is not None

    def __repr__(self) -> str:
        return f"Reply(status={self.status!r}, headers={self.headers!r}, timing={self.timing!r})"


def _bad(message: str, param: str | None = None, status: int = 400) -> Reply:
    return Reply(status, error_body(message, status, param))


def _int_field(body: Mapping[str, Any], key: str, minimum: int, where: str | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    name = f"{where}.{key}" if where else key
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer", param=name)
    if value < minimum:
        raise BadRequest(f"{name} must be >= {minimum}", param=name)
    return value


def _bool_field(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be a boolean", param=key)
    return value


def _token_ids(value: Any, param: str) -> np.ndarray:
    """A non-empty list of ids in [0, MAX_TOKEN_ID] as an int64 array (in-process callers may pass one)."""
    return _checked_ids(value, param)[0]


_INT64 = np.dtype(np.int64)
_max_of = np.maximum.reduce


def _checked_ids(value: Any, param: str) -> tuple[np.ndarray, list[int] | None]:
    """``_token_ids``, plus ``value`` itself when it is a list of plain ``int``s (to echo without re-boxing)."""
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iu" and len(value):
        if value.dtype == _INT64:  # the in-process case; one reduction: negative ids read as huge uint64 ones
            if int(_max_of(value.view(np.uint64))) > MAX_TOKEN_ID:
                raise BadRequest(f"{param} must contain integers in [0, {MAX_TOKEN_ID}]", param=param)
            return value, None
        arr = value.astype(np.int64, copy=False) if value.dtype.kind == "i" else value
        if int(arr.view(np.uint64).max() if arr.dtype.itemsize == 8 else arr.max()) > MAX_TOKEN_ID:
            raise BadRequest(f"{param} must contain integers in [0, {MAX_TOKEN_ID}]", param=param)
        return value.astype(np.int64, copy=False), None
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{param} must be a non-empty list of token ids (batches are not supported)", param=param)
    if list(map(type, value)).count(int) == len(value):  # the JSON case, in C; anything else: the exact loop below
        try:
            arr = np.fromiter(value, dtype=np.int64, count=len(value))
        except OverflowError:
            arr = None
        if arr is not None and int(_max_of(arr.view(np.uint64))) <= MAX_TOKEN_ID:  # negatives read as huge
            return arr, value
        raise BadRequest(f"{param} must contain integers in [0, {MAX_TOKEN_ID}]", param=param)
    for t in value:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= MAX_TOKEN_ID:
            raise BadRequest(f"{param} must contain integers in [0, {MAX_TOKEN_ID}]", param=param)
    return np.array(value, dtype=np.int64), None


def _messages(value: Any, known: int = 0) -> list[Mapping[str, Any]]:
    """``value`` if it is a valid message list, else BadRequest. ``known``: the first that many messages are
    objects found valid before (read-only, so still valid): only the rest are looked at."""
    if not isinstance(value, list) or not value:
        raise BadRequest("messages must be a non-empty list", param="messages")
    for m in value[known:] if known else value:  # the common case, checked cheaply; any doubt: the loop below
        if type(m) is not dict or type(m.get("role")) is not str or type(m.get("content")) not in _CONTENT_TYPES:
            break
    else:
        return value
    for i, m in enumerate(value):
        if not isinstance(m, Mapping):
            raise BadRequest(f"messages[{i}] must be an object", param="messages")
        if not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}].role must be a string", param="messages")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequest(f"messages[{i}].content must be a string, a list of parts or null", param="messages")
    return value


_CONTENT_TYPES = (str, type(None), list)


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{param} must be a string (batches are not supported)", param=param)
    return value


@dataclass(slots=True)
class _Parsed:
    route: str
    prompt_ids: np.ndarray  # int64
    prompt_list: list[int] | None  # the same ids as a list of plain ints, when the request brought one
    max_tokens: int
    stream: bool
    include_usage: bool
    has_input_ids: bool
    return_prompt_token_ids: bool
    logprobs: bool
    rid: str | None

    def prompt_token_ids(self) -> list[int]:
        """The prompt ids for ``prompt_token_ids`` as a list: the request's own list when it sent one."""
        return self.prompt_list if self.prompt_list is not None else self.prompt_ids.tolist()


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
        token_arrays: bool = False,
    ) -> None:
        from sim.engine import Engine  # late import: the engine module is heavier than its types

        self.config = config
        self.name = config.name
        self.model_name = model_name
        self.seed = seed
        self.default_max_tokens = default_max_tokens
        self.context_length = context_length
        self.faults = faults or Faults()
        self.engine = engine if engine is not None else Engine(config)
        self.token_arrays = token_arrays
        self._fault_rng = random.Random(f"{seed}/{config.name}/faults")
        self._clock = 0.0
        self._count = 0
        self.failed_requests = 0
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self))
        self._scrape_now = 0.0
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
        return {
            "object": "list",
            "data": [
                {
                    "id": self.model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "sglang",
                    "root": self.model_name,
                    "max_model_len": self.context_length,
                }
            ],
        }

    def server_info(self) -> dict[str, Any]:
        return {
            "model_path": self.model_name,
            "served_model_name": self.model_name,
            "tokenizer_path": self.model_name,
            "tp_size": 1,
            "dp_size": 1,
            "pp_size": 1,
            "load_balance_method": "round_robin",
            "disaggregation_mode": "null",
            "version": "0.0.0-mock",
            "is_embedding": False,
            "context_length": self.context_length,
            "max_total_tokens": self._max_total_tokens(),
            "max_running_requests": self.config.max_running_requests,
            "page_size": self.config.page_size,
            "weight_version": "default",
            "worker_name": self.name,
            "mock": True,
        }

    def model_info(self) -> dict[str, Any]:
        return {
            "model_path": self.model_name,
            "tokenizer_path": self.model_name,
            "is_generation": True,
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "weight_version": "default",
        }

    def flush_cache(self, now: float | None = None) -> tuple[int, dict[str, Any]]:
        """Empty the radix cache at ``now``; refused (400) while requests are in flight, as in SGLang."""
        t = self.now(now)
        self.engine.advance(t)
        if self.engine.in_flight:
            return 400, {
                "success": False,
                "worker": self.name,
                "message": f"Cache not flushed because there are {self.engine.in_flight} pending requests.",
            }
        flushed = self.engine.flush_cache()
        return 200, {"success": True, "message": "Cache flushed.", "flushed_tokens": flushed, "worker": self.name}

    def update_faults(self, body: Any) -> tuple[int, dict[str, Any]]:
        """Apply a partial fault update (``POST /admin/faults``); all-or-nothing on bad input."""
        if not isinstance(body, Mapping):
            return 400, error_body("body must be a JSON object", 400)
        new = dataclasses.replace(self.faults)
        known = {f.name for f in dataclasses.fields(Faults)}
        for key, value in body.items():
            if key not in known:
                return 400, error_body(f"unknown fault {key!r}; known: {sorted(known)}", 400, key)
            if key in ("fail_rate", "rollback_fail_rate"):
                if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                    return 400, error_body(f"{key} must be a number in [0, 1]", 400, key)
                value = float(value)
            elif key == "slowdown":
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not math.isfinite(value)
                    or value < 1.0
                ):
                    return 400, error_body("slowdown must be a finite number >= 1", 400, key)
                value = float(value)
            elif not isinstance(value, bool):
                return 400, error_body(f"{key} must be a boolean", 400, key)
            setattr(new, key, value)
        self.faults = new
        self._apply_slowdown()
        return 200, new.as_dict()

    def _apply_slowdown(self) -> None:
        """The ``slowdown`` fault multiplies the engine's own slowdown, so queueing feels it too."""
        want = self.config.slowdown * self.faults.slowdown
        if self.engine.config.slowdown != want:
            self.engine.config = dataclasses.replace(self.engine.config, slowdown=want)

    # ---- load reporting -----------------------------------------------------------------------

    def _max_total_tokens(self) -> int:
        cap = self.config.kv_capacity_tokens
        return int(cap) if cap is not None else 0

    def load(self, now: float | None = None) -> EngineLoad:
        t = self.now(now)
        self.engine.advance(t)
        return self.engine.load(t)

    def loads(self, now: float | None = None, timestamp: str | None = None) -> dict[str, Any]:
        """SMG's ``WorkerLoadResponse``: ``{timestamp, dp_rank_count, loads: [one rank]}``.

        ``timestamp`` (RFC 3339) defaults to the model time read as seconds since the Unix epoch, so the
        core stays clock-free; the HTTP app passes the wall-clock time as SGLang does."""
        ld = self.load(now)
        if timestamp is None:
            timestamp = datetime.fromtimestamp(self._clock, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        total = ld.num_running_reqs + ld.num_waiting_reqs
        utilization = ld.num_running_reqs / ld.max_running_requests if ld.max_running_requests else 0.0
        return {
            "timestamp": timestamp,
            "dp_rank_count": 1,
            "loads": [
                {
                    "dp_rank": 0,
                    "num_running_reqs": ld.num_running_reqs,
                    "num_waiting_reqs": ld.num_waiting_reqs,
                    "num_waiting_uncached_tokens": ld.num_waiting_uncached_tokens,
                    "num_total_reqs": total,
                    "num_used_tokens": ld.num_used_tokens,
                    "max_total_num_tokens": ld.max_total_num_tokens,
                    "token_usage": ld.token_usage,
                    "gen_throughput": ld.gen_throughput,
                    "cache_hit_rate": ld.cache_hit_rate,
                    "utilization": utilization,
                    "max_running_requests": ld.max_running_requests,
                }
            ],
            "sim_time": self._clock,
            "worker": self.name,
        }

    def metrics(self, now: float | None = None) -> bytes:
        """Prometheus exposition text of this worker alone (its own registry)."""
        self._scrape_now = self.now(now)
        return generate_latest(self._registry)

    # ---- inference ----------------------------------------------------------------------------

    def _parse(self, route: str, body: Mapping[str, Any], known_messages: int = 0) -> _Parsed:
        get = body.get
        stream = get("stream")
        if stream is not True and stream is not False:  # the plain cases inline, the rest via the helper
            stream = _bool_field(body, "stream")
        stream_options = get("stream_options")
        if stream_options is not None and not isinstance(stream_options, Mapping):
            raise BadRequest("stream_options must be an object", param="stream_options")
        include_usage = bool(stream_options and stream_options.get("include_usage") is True)
        if get("n") is not None:
            n = _int_field(body, "n", 1)
            if n not in (None, 1):
                raise BadRequest("only n=1 is supported", param="n")
        prompt_list: list[int] | None = None
        input_ids = get("input_ids")
        has_input_ids = input_ids is not None
        if route == "chat":
            messages = get("messages")
            if has_input_ids:
                prompt_ids, prompt_list = _checked_ids(input_ids, "input_ids")
                if messages is not None:
                    _messages(messages, known_messages)
            elif self.token_arrays:  # an array is all an in-process caller is echoed: long texts tokenized in numpy
                prompt_ids = tokenizer.render_ids(_messages(messages, known_messages))
            else:
                prompt_ids = prompt_list = tokenizer.render(_messages(messages, known_messages), True)
            max_tokens = get("max_tokens")
            if type(max_tokens) is not int or max_tokens < 1:
                max_tokens = _int_field(body, "max_tokens", 1)
                if max_tokens is None:
                    max_tokens = _int_field(body, "max_completion_tokens", 1)
            logprobs = get("logprobs")
            if logprobs is not True and logprobs is not False:
                logprobs = _bool_field(body, "logprobs")
        elif route == "completions":
            prompt = body.get("prompt")
            if has_input_ids:
                prompt_ids = _token_ids(body["input_ids"], "input_ids")
            elif isinstance(prompt, list):
                prompt_ids = _token_ids(prompt, "prompt")
            else:
                prompt_ids = tokenizer.encode(_text(prompt, "prompt"))
            max_tokens = _int_field(body, "max_tokens", 1)
            lp = body.get("logprobs")
            if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int) or lp < 0):
                raise BadRequest("logprobs must be a non-negative integer", param="logprobs")
            logprobs = lp is not None
        else:  # generate
            if has_input_ids:
                prompt_ids = _token_ids(body["input_ids"], "input_ids")
            else:
                prompt_ids = tokenizer.encode(_text(body.get("text"), "text"))
            sp = body.get("sampling_params")
            if sp is None:
                sp = {}
            if not isinstance(sp, Mapping):
                raise BadRequest("sampling_params must be an object", param="sampling_params")
            max_tokens = _int_field(sp, "max_new_tokens", 1, where="sampling_params")
            logprobs = _bool_field(body, "return_logprob")
        if not len(prompt_ids):
            raise BadRequest("the prompt has no tokens", param="prompt")
        if max_tokens is None:
            max_tokens = self.default_max_tokens
        if len(prompt_ids) + max_tokens > self.context_length:
            raise BadRequest(
                f"Requested token count exceeds the model's maximum context length of {self.context_length} tokens. "
                f"You requested a total of {len(prompt_ids) + max_tokens} tokens: {len(prompt_ids)} tokens from "
                f"the input messages and {max_tokens} tokens for the completion.",
                param="max_tokens",
            )
        cap = self.config.kv_capacity_tokens
        if cap is not None and len(prompt_ids) + max_tokens > cap:
            raise BadRequest(
                f"request needs {len(prompt_ids) + max_tokens} KV tokens; the worker holds {cap}", param="max_tokens"
            )
        rid = get("rid")
        if type(prompt_ids) is not np.ndarray:
            prompt_ids = np.array(prompt_ids, dtype=np.int64)
        echo = get("return_prompt_token_ids")
        if echo is not True and echo is not False:
            echo = _bool_field(body, "return_prompt_token_ids")
        return _Parsed(
            route=route,
            prompt_ids=prompt_ids,
            prompt_list=prompt_list,
            max_tokens=max_tokens,
            stream=stream,
            include_usage=include_usage,
            has_input_ids=has_input_ids,
            return_prompt_token_ids=echo,
            logprobs=logprobs,
            rid=rid if isinstance(rid, str) else None,
        )

    def infer(self, route: str, body: Any, now: float | None = None, *, deferred: bool = False,
              known_messages: int = 0) -> Reply:
        """Serve one inference request (see the module docstring).

        In-process callers only: ``deferred``: the caller takes a 200 chat answer as a ``fastjson.ChatAnswer``
        (``Reply.answer``, no ``body``) where it can (not streamed, echoing ``prompt_token_ids``, a
        ``token_arrays`` core); anything else comes as usual. ``known_messages``: the first that many chat
        ``messages`` are the very objects of a request a worker answered 200 before (they passed this same
        check then, and nobody changes them), so only the rest are checked (same answer, O(new messages))."""
        if route not in ROUTES:
            return _bad(f"unknown route {route!r}", status=404)
        if type(body) is not dict and not isinstance(body, Mapping):
            return _bad("request body must be a JSON object")
        sim_time = body.get(vtime.SIM_TIME_FIELD)
        if type(sim_time) is not float or not 0.0 <= sim_time < math.inf:  # else: what request_time gives
            sim_time = vtime.request_time(body)
            if body.get(vtime.SIM_TIME_FIELD) is not None and sim_time is None:
                return _bad("sim_time must be a finite non-negative number", param=vtime.SIM_TIME_FIELD)
        try:
            req = self._parse(route, body, known_messages)
        except BadRequest as e:
            return _bad(str(e), e.param, e.status)
        t = self.now(sim_time if sim_time is not None else now)
        virtual = sim_time is not None
        u_fail, u_rollback = self._fault_rng.random(), self._fault_rng.random()
        headers = {vtime.HEADER_WORKER: self.name}
        if u_fail < self.faults.fail_rate:
            self.failed_requests += 1
            return Reply(500, error_body("injected failure (mock worker fault)", 500), headers=headers, virtual=virtual)
        if req.has_input_ids and u_rollback < self.faults.rollback_fail_rate:
            self.failed_requests += 1
            return Reply(400, error_body(ROLLBACK_FAILED_MESSAGE, 400, "input_ids"), headers=headers, virtual=virtual)

        self._apply_slowdown()  # also when a caller set ``core.faults`` directly
        rseed = tokenizer.request_seed(self.seed, req.prompt_ids)
        text, output_arr, vocab_idx = tokenizer.synth_answer_array(rseed, req.max_tokens)
        try:
            timing = self.engine.submit(t, req.prompt_ids, output_arr)
        except ValueError as e:
            return _bad(f"the worker cannot admit this request: {e}")
        self._count += 1  # the timeline headers come with ``timing`` (``Reply.headers`` writes them when read)
        ctx = _Answer(self, req, timing, text, output_arr, rseed, vocab_idx)
        if req.stream:
            events, times = ctx.events()
            return Reply(200, events=events, event_times=times, headers=headers, timing=timing, virtual=virtual)
        if deferred and req.route == "chat" and req.return_prompt_token_ids and self.token_arrays:
            return Reply(200, answer=ctx, headers=headers, timing=timing, virtual=virtual)
        return Reply(200, body=ctx.value(), headers=headers, timing=timing, virtual=virtual)

    def sim_object(self, timing: RequestTiming) -> dict[str, Any]:
        return {
            "arrival": timing.arrival,
            "start": timing.start,
            "first_token": timing.first_token,
            "finish": timing.finish,
            "worker": self.name,
            "cached_tokens": timing.cached_tokens,
            "evicted_tokens": timing.evicted_tokens,
        }


def _logprobs(rseed: int, n: int) -> list[float]:
    """Deterministic plausible log-probabilities for an answer's tokens."""
    return _neg_round6(tokenizer.keyed_generator(rseed, 0x5EED_10C9).exponential(0.3, size=n))  # the words: stream 0


def _neg_round6(x: np.ndarray) -> list[float]:
    """``[round(-v, 6) for v in x.tolist()]``, bit for bit, vectorised for longer arrays.

    ``k / -1e6`` is the double nearest ``-k / 10**6`` (an exact quotient, correctly rounded), which is what
    ``round`` returns for the correctly rounded ``k = x * 10**6``. ``rint`` of the rounded product gives that
    ``k`` unless the product lies near a half-integer: below 2**32 the product is off by at most 2**-21, so
    anything within 1e-5 of a half-integer is recomputed with ``round`` (and larger values all are).
    """
    if len(x) < 16:
        return [round(-v, 6) for v in x.tolist()]
    z = x * 1e6
    k = _rint(z)
    if not _max_of(_abs(k)) < 2.0**32:  # also NaN
        return [round(-v, 6) for v in x.tolist()]
    out: list[float] = (k / -1e6).tolist()
    z -= k
    off = _abs(z, out=z)  # <= 0.5
    if _max_of(off) > 0.5 - 1e-5:
        xs = x.tolist()
        for i in np.flatnonzero(off > 0.5 - 1e-5).tolist():
            out[i] = round(-xs[i], 6)
    return out


_rint, _abs = np.rint, np.absolute


@functools.cache
def _logprob_columns() -> tuple[tuple[str, ...], tuple[list[int], ...], list[Any]]:
    """The ``token`` and ``bytes`` of an OpenAI ``logprobs.content`` entry per vocabulary word, then for
    ``<|im_end|>`` (index ``VOCAB_SIZE``), and the empty ``top_logprobs`` list. Answers share these lists
    (fewer objects to build and free per token): they are read-only, as is every answer body."""
    tokens = (*tokenizer.vocabulary(), _IM_END_TEXT)
    return tokens, tuple(list(t.encode()) for t in tokens), []


_IM_END_TEXT = "<|im_end|>"


class _Answer(fastjson.ChatAnswer):
    """Builds the JSON body or the stream events of one served request.

    Only what every caller needs is made up front (the timing, the text, the output ids as an array); the
    per-token objects of a body (logprobs, ``[logprob, id, None]`` entries), its id and the body itself wait for
    the first call that needs them, and give the same values whenever that is: everything they depend on is
    fixed here. As a ``fastjson.ChatAnswer`` (``infer(..., deferred=True)``) a chat answer is handed to an
    in-process session server typed, its body built only if somebody reads it."""

    def __init__(
        self,
        core: WorkerCore,
        req: _Parsed,
        timing: RequestTiming,
        text: str,
        output_arr: np.ndarray,
        rseed: int,
        vocab_idx: np.ndarray | None = None,
    ) -> None:
        self.core, self.req, self.timing = core, req, timing
        self.text, self.output_ids = text, output_arr
        self.output_ids.flags.writeable = False
        self.vocab_idx = vocab_idx  # the content words' vocabulary indices (synth_answer_array)
        self._rseed, self._serial = rseed, core._count
        self._words: list[str] | None = None
        self._body: dict[str, Any] | None = None
        self._id: str | None = None
        self._lps: list[float] | None = None
        self._output_list: list[int] | None = None
        self._prompt: np.ndarray | list[int] | None = None
        self.created = int(timing.arrival)
        self.message = {"role": "assistant", "content": text, "reasoning_content": None, "tool_calls": None}
        self.sim = core.sim_object(timing)

    # built on first use (plain properties: functools.cached_property takes a lock per read on Python 3.11)
    @property
    def id(self) -> str:
        if self._id is None:
            req = self.req
            if req.rid:
                self._id = req.rid
            else:
                prefix = {"chat": "chatcmpl", "completions": "cmpl", "generate": "gen"}[req.route]
                key = f"{self.core.name}/{self._serial}/{self._rseed}".encode()
                self._id = f"{prefix}-{xxhash.xxh64_hexdigest(key)}"
        return self._id

    @property
    def lps(self) -> list[float]:
        if self._lps is None:
            self._lps = _logprobs(self._rseed, len(self.output_ids))
        return self._lps

    @property
    def output_list(self) -> list[int]:
        if self._output_list is None:
            self._output_list = self.output_ids.tolist()
        return self._output_list

    @property
    def prompt_ids(self) -> np.ndarray:  # type: ignore[override]
        """``prompt_token_ids`` (an array for a ``token_arrays`` core, as deferred answers always are)."""
        if self._prompt is None:
            self._prompt = self._prompt_token_ids()
        return self._prompt  # type: ignore[return-value]

    def value(self) -> dict[str, Any]:
        if self._body is None:
            self._body = self.body()
        return self._body

    def usage(self) -> dict[str, Any]:
        p, c = self.timing.prompt_tokens, self.timing.output_tokens
        return {
            "prompt_tokens": p,
            "completion_tokens": c,
            "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": self.timing.cached_tokens},
        }

    def meta_info(self, upto: int | None = None) -> dict[str, Any]:
        n = len(self.output_ids) if upto is None else upto
        t = self.timing
        return {
            "id": self.id,
            "finish_reason": {"type": "stop", "matched": tokenizer.IM_END} if n == len(self.output_ids) else None,
            "prompt_tokens": t.prompt_tokens,
            "completion_tokens": n,
            "cached_tokens": t.cached_tokens,
            "output_token_logprobs": [
                [lp, tid, None] for lp, tid in zip(self.lps[:n], self.output_list[:n], strict=True)
            ],
            "e2e_latency": t.finish - t.arrival,
            "queue_time": t.start - t.arrival,
            "weight_version": "default",
        }

    @property
    def words(self) -> list[str]:
        if self._words is None:
            self._words = self.text.split() if self.text else []
        return self._words

    def _openai_logprobs(self) -> dict[str, Any]:
        n = len(self.output_ids)
        assert len(self.lps) == n
        if self.vocab_idx is not None and len(self.vocab_idx) == n - 1:
            tokens, nbytes, no_top = _logprob_columns()
            idx = self.vocab_idx.tolist()
            idx.append(len(tokens) - 1)  # <|im_end|>
            entries = [
                {"token": tokens[i], "logprob": lp, "bytes": nbytes[i], "top_logprobs": no_top}
                for i, lp in zip(idx, self.lps, strict=True)
            ]
        else:
            words = self.words[:n] + [_IM_END_TEXT] * (n - len(self.words))
            entries = [
                {"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": []}
                for tok, lp in zip(words, self.lps, strict=True)
            ]
        return {"content": entries}

    def _prompt_token_ids(self) -> list[int] | np.ndarray:
        if self.core.token_arrays:
            ids = self.req.prompt_ids  # the caller's own int64 array when it sent one
            if ids.flags.writeable:
                ids = ids.view()
                ids.flags.writeable = False
            return ids
        return self.req.prompt_token_ids()

    def body(self) -> dict[str, Any]:
        r, core = self.req, self.core
        if r.route == "generate":
            out: dict[str, Any] = {
                "text": self.text,
                "output_ids": list(self.output_list),
                "meta_info": self.meta_info(),
            }
        elif r.route == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": self.message,
                "logprobs": self._openai_logprobs() if r.logprobs else None,
                "finish_reason": "stop",
                "matched_stop": tokenizer.IM_END,
            }
            if r.return_prompt_token_ids:
                choice["prompt_token_ids"] = self._prompt_token_ids()
            choice["meta_info"] = self.meta_info()
            out = {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": core.model_name,
                "choices": [choice],
                "usage": self.usage(),
            }
        else:
            choice = {
                "index": 0,
                "text": self.text,
                "logprobs": None,
                "finish_reason": "stop",
                "matched_stop": tokenizer.IM_END,
                "meta_info": self.meta_info(),
            }
            if r.return_prompt_token_ids:
                choice["prompt_token_ids"] = self._prompt_token_ids()
            out = {
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": core.model_name,
                "choices": [choice],
                "usage": self.usage(),
            }
        out[vtime.SIM_RESPONSE_FIELD] = self.sim
        return out

    def _pieces(self) -> list[int]:
        """Token end indices of the content events (tokens grouped evenly into <= STREAM_CHUNKS events)."""
        n = len(self.output_ids)
        k = min(n, STREAM_CHUNKS)
        return [round(n * (i + 1) / k) for i in range(k)]

    def _time_of(self, end: int) -> float:
        t, n = self.timing, len(self.output_ids)
        if n <= 1 or end >= n:
            return t.finish
        return min(t.finish, t.first_token + (t.finish - t.first_token) * (end - 1) / (n - 1))

    def events(self) -> tuple[list[dict[str, Any]], list[float]]:
        r, core, t = self.req, self.core, self.timing
        events: list[dict[str, Any]] = []
        times: list[float] = []
        ends = self._pieces()
        nw = len(self.words)

        def text_upto(end: int) -> str:
            return " ".join(self.words[: min(end, nw)])

        if r.route == "generate":
            for end in ends:
                events.append(
                    {"text": text_upto(end), "output_ids": self.output_list[:end], "meta_info": self.meta_info(end)}
                )
                times.append(self._time_of(end))
            events[-1][vtime.SIM_RESPONSE_FIELD] = self.sim
            return events, times
        obj = "chat.completion.chunk" if r.route == "chat" else "text_completion"
        base = {"id": self.id, "object": obj, "created": self.created, "model": core.model_name}
        if r.route == "chat":
            events.append(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
            )
            times.append(t.first_token)
        prev = ""
        for i, end in enumerate(ends):
            cur = text_upto(end)
            delta, prev = cur[len(prev) :], cur
            last = i == len(ends) - 1
            finish = "stop" if last else None
            if r.route == "chat":
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": {"content": delta},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            else:
                choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
            if last:
                choice["matched_stop"] = tokenizer.IM_END
                if r.return_prompt_token_ids:
                    choice["prompt_token_ids"] = self._prompt_token_ids()
                choice["meta_info"] = self.meta_info()
            events.append({**base, "choices": [choice]})
            times.append(self._time_of(end))
        if r.include_usage:
            events.append({**base, "choices": [], "usage": self.usage()})
            times.append(t.finish)
        events[-1][vtime.SIM_RESPONSE_FIELD] = self.sim
        return events, times


class _Collector:
    """Reads the engine at scrape time, so the metrics always match ``/v1/loads``."""

    def __init__(self, core: WorkerCore) -> None:
        self.core = core

    def collect(self):
        core = self.core
        ld = core.load(core._scrape_now)
        labels = ["model_name", "worker"]
        values = [core.model_name, core.name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(values, value)
            return c

        yield gauge("sglang:num_running_reqs", "The number of running requests.", ld.num_running_reqs)
        yield gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.", ld.num_waiting_reqs)
        yield gauge("sglang:num_used_tokens", "The number of used KV tokens.", ld.num_used_tokens)
        yield gauge("sglang:max_total_num_tokens", "KV capacity in tokens.", ld.max_total_num_tokens)
        yield gauge("sglang:token_usage", "The token usage (KV used / capacity).", ld.token_usage)
        yield gauge("sglang:cache_hit_rate", "The prefix cache hit rate (cached / prompt tokens).", ld.cache_hit_rate)
        yield gauge("sglang:gen_throughput", "The generation throughput (token/s).", ld.gen_throughput)
        st = core.engine.stats
        yield counter("sglang:num_requests", "Number of requests served.", st.requests)
        yield counter("sglang:prompt_tokens", "Number of prefill tokens processed.", st.prompt_tokens)
        yield counter("sglang:cached_tokens", "Number of prompt tokens served from the prefix cache.", st.cached_tokens)
        yield counter("sglang:generation_tokens", "Number of generation tokens processed.", st.output_tokens)
        yield counter("sglang:evicted_tokens", "Number of KV tokens evicted from the prefix cache.", st.evicted_tokens)
        yield counter("sglang:failed_requests", "Requests answered with an injected fault.", core.failed_requests)
