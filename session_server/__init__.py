"""miles-compatible session server (shared/specs/miles-session-server.md).

- ``session_server.core``: the pure core (``SessionCore``): sessions, turns, records, the rollback-retry rule,
  routing-key headers. No I/O; its docstring lists the API.
- ``session_server.messages``: miles' message rules (equality, append-only roles, the one-turn rollback).
- ``session_server.tokens``: token checkpoints (the TITO merge, the prefix invariant, ``TokenBuffer``).
- ``session_server.upstream``: the values exchanged with the router and the reading of its chat answer.
- ``session_server.errors``: ``SessionError`` and its kinds.
- ``session_server.app``: the FastAPI adapter (``create_app(ServerConfig(...), upstream=...)``, ``HttpUpstream``).
- ``session_server.direct``: ``DirectSessionServer``, the same routes in-process for the ``direct`` transport.
- ``session_server.cli``: ``smg-testbed session-server`` / ``python -m session_server``.
- ``session_server.testing``: ``FakeRouter`` (a recording SGLang-like test double) and the benchmark's no-op upstream.
"""
