"""The small interface agents talk through; implementations hide HTTP, in-process cores or external URLs."""

from __future__ import annotations

from typing import Any, Protocol

from testbed_common.fastjson import ChatAnswer


class TransportError(RuntimeError):
    """The transport itself failed (connection refused, server crashed): not an HTTP status."""


class Reply:
    """An HTTP-like answer: status code and decoded JSON body (``{}`` when there is none).

    An in-process transport may give a chat answer as ``answer`` (a ``fastjson.ChatAnswer``) instead: ``body``
    is then built from it on first read."""

    __slots__ = ("_body", "answer", "status")

    def __init__(self, status: int, body: Any = None, answer: ChatAnswer | None = None) -> None:
        self.status = status
        self._body = {} if body is None and answer is None else body
        self.answer = answer

    @property
    def body(self) -> Any:
        if self._body is None:
            self._body = self.answer.value() if self.answer is not None else {}
        return self._body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reply) and (self.status, self.body) == (other.status, other.body)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Reply(status={self.status!r}, body={self.body!r})"


class Transport(Protocol):
    """What an agent needs from the session server, plus what the runner reads after a run."""

    workers: list[str]  # worker names (w0, w1...), in pool order

    def create_session(self) -> Reply: ...

    def chat(self, session_id: str, body: dict[str, Any]) -> Reply: ...

    def get_session(self, session_id: str) -> Reply: ...

    def delete_session(self, session_id: str) -> Reply: ...

    def gateway_metrics(self) -> str:
        """The gateway's Prometheus exposition text ('' if there is no gateway to ask)."""
        ...

    def worker_stats(self) -> dict[str, dict[str, Any]]:
        """Per worker name: whatever the worker reports (at least ``peak_kv_tokens`` when known)."""
        ...

    def close(self) -> None: ...
