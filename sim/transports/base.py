"""The small interface agents talk through; implementations hide HTTP, in-process cores or external URLs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class TransportError(RuntimeError):
    """The transport itself failed (connection refused, server crashed): not an HTTP status."""


@dataclass
class Reply:
    """An HTTP-like answer: status code and decoded JSON body (``{}`` when there is none)."""

    status: int
    body: Any = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


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
