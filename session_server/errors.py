"""The session server's errors: each is answered as ``{"error": message}`` with its HTTP ``status``."""

from __future__ import annotations


class SessionError(Exception):
    """An error the server answers as ``{"error": message}`` with ``status``."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self)


class BadRequestError(SessionError):
    status = 400


class MessageValidationError(BadRequestError):
    """Not append-only, a disallowed appended role, or a rollback that is not allowed."""


class BodyTooLargeError(SessionError):
    status = 413


class SessionNotFoundError(SessionError):
    status = 404

    def __init__(self, sid: str) -> None:
        super().__init__(f"session not found: session_id={sid}")


class SessionLimitError(SessionError):
    status = 503


class UpstreamResponseError(SessionError):
    """The upstream answered 200 with something a turn cannot be committed from."""

    status = 502
