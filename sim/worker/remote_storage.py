"""A worker's client of the pool's shared L3 store service (``sim.storage_service``): ``RemoteStorage``, a
``StorageTier`` (``sim.engine.storage``) over HTTP, so the engine's ``match`` and ``write`` calls give what the
in-process ``L3Store`` gives. Wire forms: ``sim.storage_service``'s docstring."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import httpx

from sim.engine.storage import match_request, write_request
from testbed_common import fastjson

CLIENT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class StoreUnavailable(RuntimeError):
    """The L3 store service did not answer (a worker cannot go on without its storage tier)."""


class RemoteStorage:
    """A ``StorageTier`` over the store service at ``url`` (one kept-alive synchronous connection): the engine's
    ``match`` and ``write`` calls, one HTTP call each. ``page_size`` is the store's. ``close()`` when done."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT, trust_env=False)
        info = self._call("GET", "/info")
        self.page_size: int = info["page_size"]
        self.capacity_pages: int | None = info["capacity_pages"]

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            r = self._client.request(method, path, content=fastjson.dumps(body) if body is not None else None,
                                     headers={"content-type": "application/json"} if body is not None else None)
        except httpx.HTTPError as e:
            raise StoreUnavailable(f"the L3 store at {self.url}: {type(e).__name__}: {e}") from e
        if r.status_code != 200:
            raise StoreUnavailable(f"the L3 store at {self.url} answered {r.status_code} to {path}: {r.text[:200]}")
        return fastjson.loads(r.content)

    def match(self, keys: Sequence[bytes], now: float) -> int:
        """``L3Store.match``; ``now`` = inf (held at all, SGLang's ``batch_exists``) goes over the wire as the largest
        float: JSON has no infinity, and every write is ready at a finite time."""
        if not keys:
            return 0
        return self._call("POST", "/match", match_request(keys, min(now, sys.float_info.max)))["matched"]

    def write(self, keys: Sequence[bytes], ready: float) -> int:
        if not keys:
            return 0
        return self._call("POST", "/write", write_request(keys, ready))["new"]

    def close(self) -> None:
        self._client.close()
