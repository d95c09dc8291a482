"""The session server's pure core: the sessions store and its turns (prepare, retry, commit, record).

No I/O, no clock, no locks: every call takes what it needs (bytes, headers, ``now``) and returns
plain values. The FastAPI adapter (``session_server.app``) adds HTTP, the per-session lock and the
upstream call; the simulator's ``direct`` transport calls the same functions in-process with an
in-process upstream, so both transports give bit-identical results for a seed.

The rules a turn applies live with their concept: miles' message rules (equality, append-only roles,
the one-turn rollback) in ``session_server.messages``; token checkpoints (the TITO merge, the prefix
invariant) in ``session_server.tokens``; the values exchanged with the router and the reading of its
chat answer in ``session_server.upstream``; the errors (``SessionError`` and its 4xx/5xx kinds) in
``session_server.errors``.

Public API (``SessionCore``)::

    core = SessionCore(
        allowed_append_roles=("tool",),      # --tito-allowed-append-roles
        routing_key=True,                    # False: add no routing header (the "without header" arm)
        routing_key_header="X-SMG-Routing-Key",
        session_id_seed=None,                # int: session ids drawn from random.Random(seed), uuid4 hex format
        max_sessions=None,                   # int: POST /sessions answers 503 when this many are held
        idle_ttl=None,                       # seconds: sessions idle longer are dropped on the next create
        max_body_bytes=DEFAULT_MAX_BODY_BYTES,
        instance_id=None,                    # default uuid4().hex, stable for the core's lifetime
    )
    core.health() -> dict                                      # {"status": "ok", "session_server_instance_id": ...}
    core.create_session(now: float) -> str                     # raises SessionLimitError (503)
    core.get_view(sid: str) -> dict                            # {"session_id", "records", "metadata"}; 404
    core.session(sid: str) -> Session                          # raises SessionNotFoundError (404) when unknown
    core.open_session(sid: str) -> Session                     # same, and 404 while the session is closing
    core.begin_delete(sid: str) -> Session                     # marks closing; 404 if unknown or already closing
    core.finish_delete(sid: str) -> None                       # removes it (call once the session's lock is held)
    core.delete(sid: str) -> None                              # begin + finish (single-threaded callers)
    core.upstream_headers(sid, client_headers) -> dict         # client headers minus hop-by-hop + the routing key
    core.prepare_turn(sid, body: bytes | Mapping, client_headers, now) -> TurnPlan    # raises SessionError (4xx)
    core.retry_request(plan: TurnPlan, resp: UpstreamResponse) -> UpstreamRequest | None  # the rollback retry
    core.rollback_retries -> int                               # rollback retries sent so far
    core.commit_turn(plan: TurnPlan, resp: UpstreamResponse, now: float) -> TurnResult
    core.run_turn(sid, body, client_headers, upstream: Callable[[UpstreamRequest], UpstreamResponse],
                  now: float) -> TurnResult                    # the whole turn, synchronously (direct)
    core.passthrough_request(sid, method, path, query, client_headers, content) -> UpstreamRequest  # catch-all

A turn is ``prepare_turn`` (under the session lock) -> ``plan.request`` sent upstream (no lock) ->
optionally ``retry_request`` sent once -> ``commit_turn`` (under the lock). ``commit_turn`` always
finishes the plan; if the caller abandons a plan (cancellation) it calls ``core.abandon(plan)``.
``error_result(exc)`` turns a ``SessionError`` into the ``TurnResult`` the HTTP adapter would answer.

Semantics (miles ``deploy`` baseline, shared/specs/miles-session-server.md, with the issue's changes):

- Token ids are read-only int64 arrays (checkpoints, ``input_ids`` sent, views): the JSON edge writes them as
  lists, and ``upstream.chat_parts`` reads an answer's ids into arrays (ids beyond int64: 502, as malformed).
- Each turn forces ``logprobs``, ``return_prompt_token_ids``, ``return_meta_info`` and
  ``no_stop_trim=False``. From the second turn ``input_ids`` = the checkpoint the turn continues merged
  with the appended messages (``TokenBuffer.merge``); a client-sent ``input_ids`` is dropped (the
  session owns them).
- The request's messages follow miles' message rules (``messages``: 400 otherwise), with the
  ``allowed_append_roles``. A rollback is applied at commit, so a failed turn leaves the session
  exactly as it was (miles truncates before proxying).
- Upstream 400 whose body contains "rollback failed" (any case), when ``input_ids`` were sent: retried
  exactly once without ``input_ids`` and with the same headers.
- After a 200, ``prompt_ids + output_ids`` must start with the checkpoint the turn built on (the prefix
  invariant, ``tokens.prefix_mismatch``); a violation is an upstream fault: 502, nothing recorded
  (miles: 500 TokenizationError).
- Exactly one record per committed turn; a stale turn (another turn of the session committed
  meanwhile) or a turn that finished after DELETE started is answered but not recorded.
- A record's ``timestamp`` is the request's virtual time (``sim_time``) when it has one, else ``now``.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from session_server.errors import (
    BadRequestError,
    BodyTooLargeError,
    SessionError,
    SessionLimitError,
    SessionNotFoundError,
    UpstreamResponseError,
)
from session_server.messages import (
    append_roles,
    appended_messages,
    check_messages,
    identical_prefix_len,
    rollback_point,
)
from session_server.tokens import EMPTY_IDS, MAX_TRIM_TOKENS, TokenBuffer, prefix_mismatch
from session_server.upstream import (
    DROP_REQUEST_HEADERS,
    UpstreamRequest,
    UpstreamResponse,
    chat_parts,
    response_headers,
)
from testbed_common import fastjson
from testbed_common.vtime import request_time

CHAT_PATH = "/v1/chat/completions"
DEFAULT_ROUTING_KEY_HEADER = "X-SMG-Routing-Key"
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
FORCED_FIELDS: dict[str, Any] = {
    "logprobs": True,
    "return_prompt_token_ids": True,
    "return_meta_info": True,
    "no_stop_trim": False,
}


def seeded_uuid4_hex(rng: random.Random) -> str:
    """A uuid4-formatted hex id drawn from ``rng`` (reproducible session ids)."""
    return uuid.UUID(int=rng.getrandbits(128), version=4).hex


# --- turn results -------------------------------------------------------------------------------


@dataclass
class TurnResult:
    """What the client gets for a turn. ``content`` (raw bytes) wins over ``body`` (JSON) when set.

    ``headers``: the upstream's answer headers worth relaying (``upstream.response_headers``), filtered on first
    read: an in-process caller that reads none (the ``direct`` transport) never renders the worker's timeline
    headers nor filters them."""

    status: int
    body: Any = None
    content: bytes | None = None
    upstream_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    recorded: bool = False
    retried: bool = False
    outcome: str = ""  # recorded | upstream_error | stale | closing | invalid_upstream | rejected
    _headers: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = response_headers(self.upstream_headers)
        return self._headers


def error_result(exc: SessionError) -> TurnResult:
    return TurnResult(status=exc.status, body={"error": exc.message}, outcome="rejected")


# --- sessions ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Session:
    """One session's state. ``eq=False``: hashable by identity, so an adapter can key a lock on it."""

    session_id: str
    created: float
    last_access: float
    messages: list[dict[str, Any]] = field(default_factory=list)  # last request's messages + the reply
    # prompt + output ids, one per model turn: read-only int64 views of ``tokens``
    checkpoints: list[np.ndarray] = field(default_factory=list)
    reply_positions: list[int] = field(default_factory=list)  # index in ``messages`` of each model reply
    records: list[dict[str, Any]] = field(default_factory=list)  # one per committed turn
    version: int = 0  # bumped by every commit: the stale-update guard
    closing: bool = False
    inflight: int = 0
    tokens: TokenBuffer = field(default_factory=TokenBuffer, repr=False)  # the ids checkpoints view

    @property
    def num_assistant(self) -> int:
        return len(self.checkpoints)

    @property
    def token_ids(self) -> list[int]:
        return self.checkpoints[-1].tolist() if self.checkpoints else []


@dataclass
class TurnPlan:
    """A prepared turn: what to send upstream and what to commit against."""

    session: Session
    client_body: dict[str, Any]  # the client's body after forcing fields, before input_ids
    sent_body: dict[str, Any]  # the body actually sent (last attempt); recorded on success
    messages: list[dict[str, Any]]
    keep: int  # model turns kept (< num_assistant when the turn rolls one back)
    base_checkpoint: np.ndarray  # the stored tokens the turn continues (empty on the first turn)
    expected_version: int
    request: UpstreamRequest
    attempts: int = 1
    done: bool = False

    @property
    def retried(self) -> bool:
        return self.attempts > 1


class SessionCore:
    """Session store and per-turn logic (see the module docstring for the API)."""

    def __init__(
        self,
        *,
        allowed_append_roles: Iterable[str] = ("tool",),
        routing_key: bool = True,
        routing_key_header: str = DEFAULT_ROUTING_KEY_HEADER,
        session_id_seed: int | None = None,
        max_sessions: int | None = None,
        idle_ttl: float | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        instance_id: str | None = None,
    ) -> None:
        roles = append_roles(allowed_append_roles)
        if not routing_key_header or any(c.isspace() or c == ":" for c in routing_key_header):
            raise ValueError(f"invalid header name {routing_key_header!r}")
        if max_sessions is not None and max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        if idle_ttl is not None and idle_ttl <= 0:
            raise ValueError("idle_ttl must be positive")
        self.allowed_append_roles = roles
        self.routing_key = routing_key
        self.routing_key_header = routing_key_header
        self.max_sessions = max_sessions
        self.idle_ttl = idle_ttl
        self.max_body_bytes = max_body_bytes
        self.instance_id = instance_id or uuid.uuid4().hex
        self._rng = random.Random(session_id_seed) if session_id_seed is not None else None
        self.sessions: dict[str, Session] = {}
        self.rollback_retries = 0  # upstream "rollback failed" answers retried without input_ids

    # --- store ---------------------------------------------------------------------------------

    def health(self) -> dict[str, str]:
        return {"status": "ok", "session_server_instance_id": self.instance_id}

    def _new_id(self) -> str:
        while True:
            sid = seeded_uuid4_hex(self._rng) if self._rng is not None else uuid.uuid4().hex
            if sid not in self.sessions:
                return sid

    def evict_idle(self, now: float) -> list[str]:
        """Drop sessions idle for longer than ``idle_ttl`` (never one with a turn in flight)."""
        if self.idle_ttl is None:
            return []
        gone = [sid for sid, s in self.sessions.items() if s.inflight == 0 and now - s.last_access > self.idle_ttl]
        for sid in gone:
            self.sessions[sid].closing = True
            del self.sessions[sid]
        return gone

    def create_session(self, now: float) -> str:
        self.evict_idle(now)
        if self.max_sessions is not None and len(self.sessions) >= self.max_sessions:
            raise SessionLimitError(
                f"session limit reached: {len(self.sessions)} sessions held "
                f"(max_sessions={self.max_sessions}); delete finished sessions"
            )
        sid = self._new_id()
        self.sessions[sid] = Session(sid, created=now, last_access=now)
        return sid

    def session(self, sid: str) -> Session:
        s = self.sessions.get(sid)
        if s is None:
            raise SessionNotFoundError(sid)
        return s

    def get_view(self, sid: str) -> dict[str, Any]:
        """The session as ``GET /sessions/{sid}`` answers it, once written with ``fastjson.dumps``: records as kept
        (a response that came as bytes is ``fastjson.RawJSON``, an in-process upstream's typed answer a
        ``fastjson.ChatAnswer``: ``Deferred`` values, parsed or built only by whoever reads them) and
        ``accumulated_token_ids`` the last checkpoint's read-only int64 array."""
        s = self.session(sid)
        return {
            "session_id": sid,
            "records": list(s.records),
            "metadata": {
                "accumulated_token_ids": s.checkpoints[-1] if s.checkpoints else EMPTY_IDS,
                "max_trim_tokens": MAX_TRIM_TOKENS,
            },
        }

    def begin_delete(self, sid: str) -> Session:
        s = self.sessions.get(sid)
        if s is None or s.closing:
            raise SessionNotFoundError(sid)
        s.closing = True
        return s

    def finish_delete(self, sid: str) -> None:
        self.sessions.pop(sid, None)

    def delete(self, sid: str) -> None:
        self.begin_delete(sid)
        self.finish_delete(sid)

    def open_session(self, sid: str) -> Session:
        s = self.sessions.get(sid)
        if s is None or s.closing:
            raise SessionNotFoundError(sid)
        return s

    # --- headers -------------------------------------------------------------------------------

    def upstream_headers(self, sid: str, client_headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict:
        """Client headers minus hop-by-hop ones; with the routing key on, exactly one key header = ``sid``.

        A key the client sent under the configured name, in any letter case, is replaced. With the
        routing key off, client headers pass through untouched (miles before the header existed).
        """
        mapping = type(client_headers) is dict or isinstance(client_headers, Mapping)  # dict first: no ABC check
        items = client_headers.items() if mapping else client_headers
        key_lower = self.routing_key_header.lower()
        out: dict[str, str] = {}
        for name, value in items:
            low = name.lower()
            if low in DROP_REQUEST_HEADERS or (self.routing_key and low == key_lower):
                continue
            out[low] = value
        if self.routing_key:
            out[self.routing_key_header] = sid
        return out

    def passthrough_request(
        self,
        sid: str,
        method: str,
        path: str,
        query: str,
        client_headers: Mapping[str, str] | Iterable[tuple[str, str]],
        content: bytes,
    ) -> UpstreamRequest:
        """The catch-all ``/sessions/{sid}/{path}``: forwarded as is to ``{router}/{path}``, not recorded.

        A path that would change the shape of the router URL (dot segments, a decoded ``?`` or ``#``)
        is refused: the request must stay a path on the router.
        """
        self.open_session(sid)
        if "?" in path or "#" in path or any(seg in (".", "..") for seg in path.split("/")):
            raise BadRequestError(f"invalid passthrough path {path[:200]!r}: dot segments, '?' and '#' are not allowed")
        return UpstreamRequest(
            method=method.upper(),
            path=path.lstrip("/"),
            query=query,
            headers=self.upstream_headers(sid, client_headers),
            content=content,
        )

    # --- turns ---------------------------------------------------------------------------------

    def parse_body(self, body: bytes | Mapping[str, Any] | None) -> dict[str, Any]:
        """A chat body as a dict; 400 for invalid JSON or a non-object, 413 when too large."""
        if body is None:
            return {}
        if type(body) is dict or isinstance(body, Mapping):  # dict first: no ABC check
            return dict(body)
        if len(body) > self.max_body_bytes:
            raise BodyTooLargeError(f"request body too large: {len(body)} bytes (limit {self.max_body_bytes})")
        if not body.strip():
            return {}
        try:
            parsed = fastjson.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequestError(f"invalid JSON body: {e}") from None
        except RecursionError:
            raise BadRequestError("invalid JSON body: nested too deeply") from None
        if not isinstance(parsed, dict):
            raise BadRequestError(f"request body must be a JSON object, got {type(parsed).__name__}")
        return parsed

    def prepare_turn(
        self,
        sid: str,
        body: bytes | Mapping[str, Any] | None,
        client_headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        now: float = 0.0,
    ) -> TurnPlan:
        """Validate a chat request and build the upstream request. Changes nothing but bookkeeping."""
        s = self.open_session(sid)
        data = self.parse_body(body)
        raw = data.get("messages")
        # An in-process caller resends the very message objects of its previous request: those were checked
        # (and matched) when that request was prepared, so only the rest is looked at (O(new messages)).
        # The stored reply (last message) is the upstream's, never checked, so it does not count. Told upstream
        # (``UpstreamRequest.known_messages``), kept for a measured reason: without it a ``direct`` request on
        # ``large`` costs 10.1 % more instructions (911 k, not 828 k).
        known = 0
        if s.messages and isinstance(raw, list):
            known = min(identical_prefix_len(s.messages, raw), len(s.messages) - 1)
        # a copy of the list: an in-process caller appending to its own list must not change the records
        messages = data["messages"] = list(check_messages(raw, known))
        if data.get("stream") is True:
            raise BadRequestError("stream=true is not supported by the session server")
        data.update(FORCED_FIELDS)
        data.pop("input_ids", None)
        sent = dict(data)
        keep = 0
        base = EMPTY_IDS
        if s.num_assistant:
            keep = rollback_point(s.messages, s.reply_positions, messages, known)
            stored_len = s.reply_positions[keep - 1] + 1 if keep < s.num_assistant else len(s.messages)
            appended = appended_messages(stored_len, messages, self.allowed_append_roles)
            base = s.checkpoints[keep - 1]
            sent["input_ids"] = s.tokens.merge(base, appended)
        headers = self.upstream_headers(sid, client_headers)
        # s.messages[:-1] are the previous committed turn's request messages, which the upstream answered 200
        request = UpstreamRequest(method="POST", path=CHAT_PATH.lstrip("/"), headers=headers, json=sent,
                                  known_messages=known)
        s.inflight += 1
        s.last_access = now
        return TurnPlan(
            session=s,
            client_body=data,
            sent_body=sent,
            messages=messages,
            keep=keep,
            base_checkpoint=base,
            expected_version=s.version,
            request=request,
        )

    def retry_request(self, plan: TurnPlan, resp: UpstreamResponse) -> UpstreamRequest | None:
        """The upstream rollback retry: once, on a 400 saying "rollback failed", if input_ids were sent."""
        if plan.attempts > 1 or resp.status != 400 or "input_ids" not in plan.sent_body:
            return None
        if "rollback failed" not in resp.text().lower():
            return None
        body = {k: v for k, v in plan.sent_body.items() if k != "input_ids"}
        plan.sent_body = body
        plan.attempts += 1
        self.rollback_retries += 1
        plan.request = UpstreamRequest(
            method="POST", path=plan.request.path, headers=plan.request.headers, json=body, query=plan.request.query,
            known_messages=plan.request.known_messages,
        )
        return plan.request

    def abandon(self, plan: TurnPlan) -> None:
        """Release a plan that will never be committed (the caller was cancelled)."""
        if not plan.done:
            plan.done = True
            plan.session.inflight -= 1

    def commit_turn(self, plan: TurnPlan, resp: UpstreamResponse, now: float = 0.0) -> TurnResult:
        """Record a successful turn (or decide not to) and say what the client gets."""
        self.abandon(plan)
        s = plan.session
        headers = resp.headers
        if resp.status != 200:
            return TurnResult(
                status=resp.status,
                content=resp.content or None,
                body=resp.data,
                upstream_headers=headers,
                retried=plan.retried,
                outcome="upstream_error",
            )
        sent_ids = plan.sent_body.get("input_ids")
        answer = resp.answer
        data: Any
        if answer is not None and resp.data is None and not resp.content:  # typed, well-formed by its type
            data, message, prompt, output = answer, answer.message, answer.prompt_ids, answer.output_ids
            echoed = prompt is sent_ids
        else:
            data = resp.json()
            try:
                choice, prompt, output, echoed = chat_parts(data, sent_ids)
            except UpstreamResponseError as e:
                return TurnResult(
                    status=e.status, body={"error": e.message}, retried=plan.retried, outcome="invalid_upstream"
                )
            message = choice["message"]
        content = resp.content or None
        if s.closing or self.sessions.get(s.session_id) is not s:
            return TurnResult(200, data, content, headers, retried=plan.retried, outcome="closing")
        if s.version != plan.expected_version:
            return TurnResult(200, data, content, headers, retried=plan.retried, outcome="stale")
        base = plan.base_checkpoint
        all_ids = s.tokens.extend(prompt, output)
        # an echo is the very array sent, which starts with the base's ids (merged from them)
        first = None if echoed else prefix_mismatch(all_ids, base)
        if first is not None:
            return TurnResult(
                502,
                body={
                    "error": (
                        f"upstream broke the token prefix invariant: prompt_token_ids + output ids do not start with "
                        f"the session's {len(base)} stored tokens (first mismatch at index {first}); turn not recorded"
                    )
                },
                retried=plan.retried,
                outcome="invalid_upstream",
            )
        keep = plan.keep
        del s.checkpoints[keep:], s.records[keep:], s.reply_positions[keep:]
        reply = dict(message)
        reply.setdefault("role", "assistant")
        s.messages = [*plan.messages, reply]
        s.reply_positions.append(len(plan.messages))
        s.checkpoints.append(all_ids)
        vt = _request_time(plan.sent_body)
        s.records.append(
            {
                "timestamp": vt if vt is not None else now,
                "method": "POST",
                "path": CHAT_PATH,
                "request": plan.sent_body,
                # an answer that came as bytes is kept as those bytes, a typed one as is: records are written out,
                # not read (the JSON edge writes them; ``fastjson.Deferred.value()`` for a caller that reads one)
                "response": fastjson.RawJSON(resp.content) if resp.content and resp.data is None else data,
                "status_code": 200,
            }
        )
        s.version += 1
        s.last_access = now
        return TurnResult(
            200, data, content, headers, recorded=True, retried=plan.retried, outcome="recorded"
        )

    def turn_steps(
        self,
        sid: str,
        body: bytes | Mapping[str, Any] | None,
        client_headers: Mapping[str, str] | Iterable[tuple[str, str]],
        now: float = 0.0,
    ) -> Generator[UpstreamRequest, UpstreamResponse, TurnResult]:
        """A whole turn as a sans-IO step machine: yields each upstream request (the first try, then the rollback
        retry if one is due) and expects its response back through ``.send()``; returns the client's result. What
        the HTTP adapter does, minus HTTP and locks; an in-process driver may suspend it between the steps."""
        try:
            plan = self.prepare_turn(sid, body, client_headers, now)
        except SessionError as e:
            return error_result(e)
        try:
            resp = yield plan.request
            retry = self.retry_request(plan, resp)
            if retry is not None:
                resp = yield retry
        except BaseException:  # the driver failed or closed the turn: the plan is released
            self.abandon(plan)
            raise
        return self.commit_turn(plan, resp, now)

    def run_turn(
        self,
        sid: str,
        body: bytes | Mapping[str, Any] | None,
        client_headers: Mapping[str, str] | Iterable[tuple[str, str]],
        upstream: Callable[[UpstreamRequest], UpstreamResponse],
        now: float = 0.0,
    ) -> TurnResult:
        """A whole turn with a synchronous upstream (``turn_steps`` driven to its end)."""
        steps = self.turn_steps(sid, body, client_headers, now)
        try:
            req = next(steps)
            while True:
                try:
                    resp = upstream(req)
                except BaseException:
                    steps.close()  # releases the plan now, not when the traceback lets the generator go
                    raise
                req = steps.send(resp)
        except StopIteration as done:
            return done.value


def _request_time(body: Mapping[str, Any]) -> float | None:
    """``vtime.request_time``, with the common case (a plain finite float) first."""
    v = body.get("sim_time")
    if type(v) is float and 0.0 <= v < math.inf:
        return v
    return request_time(body)
