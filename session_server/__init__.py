"""miles-compatible session server (shared/specs/miles-session-server.md).

- ``session_server.core``: the pure core (``SessionCore``): sessions, TITO merge, rollback rules, records,
  the rollback-retry rule, routing-key headers. No I/O; its docstring lists the API.
- ``session_server.app``: the FastAPI adapter (``create_app(ServerConfig(...), upstream=...)``, ``HttpUpstream``).
- ``session_server.direct``: ``DirectSessionServer``, the same routes in-process for the ``direct`` transport.
- ``session_server.cli``: ``smg-testbed session-server`` / ``python -m session_server``.
- ``session_server.testing``: ``FakeRouter`` (a recording SGLang-like test double) and the benchmark's no-op upstream.
"""
