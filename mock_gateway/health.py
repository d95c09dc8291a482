"""Worker registration (SMG's workflow, reduced to what the mock needs) and the periodic health checker.

A PD prefill worker's registration ends with SMG's bootstrap probe: a TCP connect to its bootstrap host and port
(SGLang's default 8998 when none is registered); a refusal is logged and counted as
``smg_pd_rendezvous_failures_total{leg="prefill",phase="probe"}``, and the worker is registered anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from mock_gateway.config import GatewayConfig
from mock_gateway.core import GatewayCore
from mock_gateway.workers import DECODE, PREFILL, REGULAR, SGLANG_DEFAULT_BOOTSTRAP_PORT

BOOTSTRAP_PROBE_TIMEOUT = 2.0  # seconds a registration probe of a bootstrap port may take

log = logging.getLogger("mock_gateway")


async def discover_model(client: httpx.AsyncClient, url: str, timeout: float) -> str | None:
    """The worker's model id if it is registrable now (``/health`` 2xx and backend detected), else None.

    Model id: ``server_info.served_model_name`` > ``/v1/models data[0].id`` > ``model_path`` > ``"unknown"``.
    """
    try:
        r = await client.get(f"{url}/health", timeout=timeout)
        if not r.is_success:
            return None
        served = models_id = path = None
        detected = False
        r = await client.get(f"{url}/v1/models", timeout=timeout)
        if r.is_success:
            data = (r.json() or {}).get("data") or []
            if data and isinstance(data[0], dict):
                models_id = data[0].get("id")
                path = data[0].get("root")
                detected = data[0].get("owned_by") in ("sglang", "nvidia")
        r = await client.get(f"{url}/server_info", timeout=timeout)
        if r.status_code == 404:
            r = await client.get(f"{url}/get_server_info", timeout=timeout)
        if r.is_success:
            detected = True
            info = r.json() or {}
            served = info.get("served_model_name")
            path = info.get("model_path") or path
        if not detected:
            return None
        return served or models_id or path or "unknown"
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


@dataclass(frozen=True, slots=True)
class Role:
    """What a worker is registered as: SMG's worker type and, for a prefill worker, its bootstrap port."""

    worker_type: str = REGULAR
    bootstrap_port: int | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Role | str:
        """From a ``POST /workers`` body's ``worker_type`` and ``bootstrap_port``; a problem as a message."""
        worker_type = body.get("worker_type", REGULAR)
        port = body.get("bootstrap_port")
        if worker_type not in (REGULAR, PREFILL, DECODE):
            return f"'worker_type' must be one of {REGULAR}, {PREFILL}, {DECODE}"
        if port is not None and (type(port) is not int or not 0 < port < 65536 or worker_type != PREFILL):
            return "'bootstrap_port' must be a port number (1..65535) of a prefill worker, or null"
        return cls(worker_type, port)


async def probe_bootstrap(host: str, port: int, timeout: float = BOOTSTRAP_PROBE_TIMEOUT) -> bool:
    """Whether ``host:port`` accepts a TCP connection (SMG's registration probe of a prefill's bootstrap port)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def register_workers(
    core: GatewayCore,
    client: httpx.AsyncClient,
    roles: Mapping[str, Role],
    interval: float,
    timeout_secs: float,
    on_added: Callable[[str], None] | None = None,
) -> None:
    """Probe pending workers (URL -> role) in rounds (concurrently); add those ready in a round in the given order."""
    pending = list(roles)
    deadline = time.monotonic() + timeout_secs
    while pending and time.monotonic() < deadline:
        models = await asyncio.gather(*(discover_model(client, u, 5.0) for u in pending))
        for url, model in zip(pending, models, strict=True):
            if model is not None:
                role = roles[url]
                w = core.add_worker(url, model, worker_type=role.worker_type, bootstrap_port=role.bootstrap_port)
                if role.worker_type == PREFILL:
                    port = role.bootstrap_port or SGLANG_DEFAULT_BOOTSTRAP_PORT
                    if not await probe_bootstrap(w.bootstrap_host, port):
                        core.metrics.pd_rendezvous_failures.labels(leg=PREFILL, phase="probe").inc()
                        log.warning("Bootstrap port did not accept a connection at registration: %s (%s:%d)",
                                    url, w.bootstrap_host, port)
                if on_added:
                    on_added(url)
                log.info("worker %s registered (model %s, %s)", url, model, role.worker_type)
        pending = [u for u, m in zip(pending, models, strict=True) if m is None]
        if pending:
            await asyncio.sleep(interval)


async def probe(client: httpx.AsyncClient, cfg: GatewayConfig, urls: list[str]) -> list[bool]:
    """Probe ``urls``' ``--health-check-endpoint`` concurrently: whether each answered 2xx, in ``urls`` order."""

    async def one(u: str) -> bool:
        try:
            r = await client.get(f"{u}{cfg.health_check_endpoint}", timeout=cfg.health_check_timeout_secs)
            return r.is_success
        except httpx.HTTPError:
            return False

    return await asyncio.gather(*(one(u) for u in urls))


async def health_loop(
    core: GatewayCore, client: httpx.AsyncClient, clock: Callable[[], float], active: Callable[[], bool] = lambda: True
) -> None:
    """Probe every worker's ``--health-check-endpoint`` each ``--health-check-interval-secs`` of wall time,
    while ``active()`` (off in virtual time: there ``request_path`` runs the rounds ``GatewayCore.due_health``
    finds due); the results are recorded at ``clock()`` read once the probes are back."""
    cfg = core.config
    while True:
        await asyncio.sleep(max(cfg.health_check_interval_secs, 0.05))
        if not active():
            continue
        urls = core.registry.urls()
        results = await probe(client, cfg, urls)
        t = clock()
        for u, ok in zip(urls, results, strict=True):
            core.health_result(u, ok, t)
