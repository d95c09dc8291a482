"""HTTP client pools: httpx without its ``Client`` layer, for the hops every simulated request crosses.

``httpx.Client.send`` merges URLs, copies headers, runs auth and redirect generators, logs, and feeds a
cookie jar on every request: ~0.3 ms of CPU per request on top of the transport. The adapters need none of
it (they send absolute URLs, set their own headers, follow no redirects, and no server here sets cookies),
so ``Pool``/``AsyncPool`` hand an ``httpx.Request`` straight to httpx's own transport: the same connection
pool (httpcore), the same ``httpx`` exceptions, the same ``httpx.Response`` (case-insensitive headers, bodies
decoded per ``content-encoding``), the same bytes on the wire (the client's default headers, then the
request's, as ``httpx.Client`` merges them; ``Host`` and ``Content-Length`` as ``httpx.Request`` adds them).

A pool may carry a hop label; ``count`` hands a read exchange of that hop to the traffic observer a
benchmark installs (``set_traffic_observer``). Without one, counting costs a single ``None`` check.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import httpx

HeaderValues = Mapping[str, str] | Mapping[str, bytes] | Mapping[str, str | bytes]
TrafficObserver = Callable[[str, bytes, bytes], None]
"""Called with a hop label, a request body and its response body for each exchange a pool counts."""

_observer: TrafficObserver | None = None


def set_traffic_observer(observer: TrafficObserver | None) -> None:
    """Install ``observer`` for every pool's counted exchanges in this process (``None``: count nothing)."""
    global _observer
    _observer = observer


@functools.cache
def client_headers() -> httpx.Headers:
    """The default headers of an ``httpx.Client`` (accept, accept-encoding, connection, user-agent)."""
    with httpx.Client(trust_env=False) as c:
        return c.headers.copy()


class _PoolBase:
    """What both pools share: the timeout, the default headers, the hop label; building and counting requests."""

    def __init__(self, timeout: httpx.Timeout | float | None, headers: httpx.Headers | None, label: str | None
                 ) -> None:
        self.timeout = {"timeout": httpx.Timeout(timeout).as_dict()}
        self.headers = client_headers() if headers is None else headers
        self.label = label

    def count(self, response: httpx.Response, label: str | None = None) -> None:
        """Hand a read response and its request to the traffic observer under ``label`` (by default the pool's
        own label, if it has one); nothing without an observer or a label."""
        observer = _observer
        if observer is not None and (label := label or self.label):
            observer(label, response.request.content, response.content)

    def request(self, method: str, url: httpx.URL | str, headers: HeaderValues | None, content: bytes | None
                ) -> httpx.Request:
        """An ``httpx.Request`` as ``httpx.Client.build_request`` makes it (``InvalidURL`` for a bad URL)."""
        merged = self.headers.copy()
        if headers:
            merged.update(headers)
        return httpx.Request(method, url, headers=merged, content=content, extensions=self.timeout)


class AsyncPool(_PoolBase):
    """Requests to any URL through one ``httpx.AsyncHTTPTransport`` (one httpcore pool).

    ``headers=httpx.Headers()`` sends only what each request sets (no user-agent)."""

    def __init__(self, *, timeout: httpx.Timeout | float | None = None, limits: httpx.Limits | None = None,
                 headers: httpx.Headers | None = None, label: str | None = None) -> None:
        super().__init__(timeout, headers, label)
        self.transport = httpx.AsyncHTTPTransport(trust_env=False, **({"limits": limits} if limits else {}))

    async def send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """The response, its body read (and the connection released) unless ``stream``."""
        response = await self.transport.handle_async_request(request)
        response.request = request
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response

    async def fetch(self, method: str, url: httpx.URL | str, headers: HeaderValues | None = None,
                    content: bytes | None = None) -> httpx.Response:
        return await self.send(self.request(method, url, headers, content))

    async def aclose(self) -> None:
        await self.transport.aclose()


class Pool(_PoolBase):
    """The blocking twin of ``AsyncPool`` over one ``httpx.HTTPTransport``."""

    def __init__(self, *, timeout: httpx.Timeout | float | None = None, limits: httpx.Limits | None = None,
                 headers: httpx.Headers | None = None, label: str | None = None) -> None:
        super().__init__(timeout, headers, label)
        self.transport = httpx.HTTPTransport(trust_env=False, **({"limits": limits} if limits else {}))

    def fetch(self, method: str, url: httpx.URL | str, headers: HeaderValues | None = None,
              content: bytes | None = None) -> httpx.Response:
        request = self.request(method, url, headers, content)
        response = self.transport.handle_request(request)
        response.request = request
        try:
            response.read()
        except BaseException:
            response.close()
            raise
        return response

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
