"""The session server without HTTP: the same core, the same answers, for the simulator's ``direct`` transport.

``DirectSessionServer(core, upstream)`` mirrors the HTTP routes one for one and answers what the
HTTP adapter would answer, as ``DirectReply(status, body, headers)`` (``body`` is the JSON the adapter
writes, parsed back: token ids as lists, deferred answers built; None for 204). ``upstream`` is any
``Callable[[UpstreamRequest], UpstreamResponse]``, e.g. a mock worker core or an in-process gateway; set
``UpstreamResponse.data`` to skip JSON encoding.

    server = DirectSessionServer(SessionCore(session_id_seed=1), upstream)
    sid = server.create_session(now).body["session_id"]       # POST /sessions
    reply = server.chat(sid, body, headers={}, now=t)          # POST /sessions/{sid}/v1/chat/completions
    server.get_session(sid); server.delete_session(sid)        # GET / DELETE /sessions/{sid}
    server.passthrough(sid, "GET", "v1/models")                # /sessions/{sid}/{path}

There is no lock: callers are single-threaded (SimPy), where a turn is atomic.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from session_server.core import SessionCore
from session_server.errors import SessionError
from session_server.upstream import UpstreamRequest, UpstreamResponse, response_headers
from testbed_common import fastjson

Upstream = Callable[[UpstreamRequest], UpstreamResponse]


@dataclass
class DirectReply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return self.body


def _as_json(value: Any) -> Any:
    """``value`` as the HTTP adapter writes it and a client reads it back (fastjson writes arrays as lists)."""
    return fastjson.loads(fastjson.dumps(value))


def _error(exc: SessionError) -> DirectReply:
    return DirectReply(exc.status, {"error": exc.message})


class DirectSessionServer:
    def __init__(self, core: SessionCore, upstream: Upstream) -> None:
        self.core = core
        self.upstream = upstream

    def health(self) -> DirectReply:
        return DirectReply(200, self.core.health())

    def create_session(self, now: float = 0.0) -> DirectReply:
        try:
            return DirectReply(200, {"session_id": self.core.create_session(now)})
        except SessionError as e:
            return _error(e)

    def get_session(self, sid: str) -> DirectReply:
        try:
            return DirectReply(200, _as_json(self.core.get_view(sid)))
        except SessionError as e:
            return _error(e)

    def delete_session(self, sid: str) -> DirectReply:
        try:
            self.core.delete(sid)
        except SessionError as e:
            return _error(e)
        return DirectReply(204)

    def chat(
        self,
        sid: str,
        body: bytes | Mapping[str, Any],
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        now: float = 0.0,
    ) -> DirectReply:
        r = self.core.run_turn(sid, body, headers, self.upstream, now)
        data = r.body
        if data is not None:
            data = _as_json(data)
        elif r.content:
            try:
                data = json.loads(r.content)
            except ValueError:
                data = r.content
        return DirectReply(r.status, data, r.headers)

    def passthrough(
        self,
        sid: str,
        method: str,
        path: str,
        query: str = "",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        content: bytes = b"",
    ) -> DirectReply:
        try:
            req = self.core.passthrough_request(sid, method, path, query, headers, content)
        except SessionError as e:
            return _error(e)
        resp = self.upstream(req)
        data = resp.json()
        return DirectReply(resp.status, data if data is not None else resp.content, response_headers(resp.headers))
