"""Polling ``/v1/loads`` (SMG's WorkerMonitor): when ``request_path`` finds a poll due before routing (the app
fetches with ``fetch_loads``), and every ``--load-monitor-interval`` on the wall clock in live time (``live_loop``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from mock_gateway.core import GatewayCore

LOADS_QUERY = {"include": "core,disagg,queues,memory"}


async def fetch_load(client: httpx.AsyncClient, url: str, sim_time: float | None) -> object | None:
    params = dict(LOADS_QUERY)
    if sim_time is not None:
        params["sim_time"] = repr(sim_time)
    try:
        r = await client.get(f"{url}/v1/loads", params=params, timeout=5.0)
        return r.json() if r.is_success else None
    except (httpx.HTTPError, ValueError):
        return None


async def fetch_loads(client: httpx.AsyncClient, urls: list[str], sim_time: float | None) -> list[object | None]:
    """Every URL's load answer, fetched concurrently, in ``urls`` order."""
    return await asyncio.gather(*(fetch_load(client, u, sim_time) for u in urls))


async def poll(core: GatewayCore, client: httpx.AsyncClient, urls: list[str], now: float) -> None:
    """Live time: fetch every URL's load and hand the answers to the core, in registration order."""
    for u, load in zip(urls, await fetch_loads(client, urls, None), strict=True):
        core.record_load(u, load, now)


async def live_loop(
    core: GatewayCore, client: httpx.AsyncClient, clock: Callable[[], float], is_live: Callable[[], bool]
) -> None:
    """In live time: advance the core's clock (eviction timers) and poll when due, once a second at most."""
    step = min(1.0, max(core.config.load_monitor_interval, 0.05))
    while True:
        await asyncio.sleep(step)
        if not is_live():
            continue
        now = clock()
        core.advance(now)
        urls = core.due_polls(now)
        if urls:
            await poll(core, client, urls, now)
