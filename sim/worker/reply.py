"""What a mock worker sends back for one request: the ``Reply`` an adapter renders, and SGLang's error body.

Headers: ``x-sim-worker`` on every answer; ``x-sim-arrival``, ``x-sim-start``, ``x-sim-first-token``,
``x-sim-finish`` on every served one (``testbed_common.vtime``).
"""

from __future__ import annotations

from typing import Any

from sim.engine.types import RequestTiming
from testbed_common import fastjson, vtime


def error_body(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """SGLang's error shape (``ErrorResponse``), also understood by OpenAI clients via ``message``."""
    kind = {
        400: "BadRequestError",
        404: "NotFoundError",
        413: "PayloadTooLargeError",
        422: "UnprocessableEntityError",
    }.get(status, "InternalServerError" if status >= 500 else "BadRequestError")
    return {"object": "error", "message": message, "type": kind, "param": param, "code": status}


class Reply:
    """What an adapter sends back for one request.

    ``status``; ``body`` (a JSON object; for a 200 chat answer that echoes its prompt built on first read from
    ``answer``, a ``fastjson.ChatAnswer`` an in-process caller reads typed) or, for ``stream: true``, ``events``
    (JSON objects, each sent as ``data: <json>\\n\\n``, followed by ``data: [DONE]``) with ``event_times`` (the
    virtual time each event is due); ``timing`` (the engine's ``RequestTiming``, served requests only); ``virtual``
    (True when the body carried ``sim_time``: answer at once; False: the adapter holds the answer for
    ``timing.finish - timing.arrival`` model seconds, stream events likewise); ``pending`` (the iteration-level
    engine's handle: with no ``timing`` the request waits in the engine and ``WorkerCore.advance`` gives its answer,
    a ``Reply`` with the same ``pending``).

    ``headers``: the worker's name and, for a served request, its virtual timeline (``vtime.HEADER_ARRIVAL``
    ...). The timeline's header strings are made on first read of ``headers``: an in-process caller that reads
    ``timing`` instead never pays for four float reprs per request."""

    __slots__ = ("_body", "_headers", "_timed", "answer", "event_times", "events", "pending", "status", "timing",
                 "virtual")

    def __init__(self, status: int, body: dict[str, Any] | None = None, answer: fastjson.ChatAnswer | None = None,
                 events: list[dict[str, Any]] | None = None, event_times: list[float] | None = None,
                 headers: dict[str, str] | None = None, timing: RequestTiming | None = None,
                 virtual: bool = True, pending: int | None = None) -> None:
        self.status = status
        self.pending = pending  # the engine's handle of a request answered when the engine finishes it
        self._body = body
        self.answer = answer
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
    def body(self) -> dict[str, Any] | None:
        return self.answer.value() if self.answer is not None else self._body

    @property
    def stream(self) -> bool:
        return self.events is not None

    def __repr__(self) -> str:
        return f"Reply(status={self.status!r}, headers={self.headers!r}, timing={self.timing!r})"


def error_reply(message: str, param: str | None = None, status: int = 400) -> Reply:
    """A refusal before anything is served: the error body alone, no headers."""
    return Reply(status, error_body(message, status, param))
