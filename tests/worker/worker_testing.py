"""What the worker's HTTP tests share: a stand-in for the clock's owner."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from testbed_common.procs import ThreadServer


@contextlib.contextmanager
def recording_owner() -> Iterator[tuple[str, list[dict]]]:
    """A stand-in for the clock's owner: its arrivals endpoint keeps the reports."""
    reports: list[dict] = []

    async def arrivals(request: Request) -> Response:
        reports.append(json.loads(await request.body()))
        return Response(status_code=204)

    with ThreadServer(Starlette(routes=[Route("/arrivals", arrivals, methods=["POST"])])) as server:
        yield f"{server.url}/arrivals", reports
