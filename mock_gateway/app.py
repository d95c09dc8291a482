"""The FastAPI adapter of the mock gateway: parse, ask ``GatewayCore``, proxy with httpx, relay.

Routes: ``POST /v1/chat/completions``, ``/v1/completions``, ``/generate`` (streams relayed);
``GET /health``, ``/liveness``, ``/readiness``, ``/v1/models``, ``/workers``; ``POST /workers``,
``DELETE /workers/{id}``. Prometheus metrics are served on ``--prometheus-host:--prometheus-port``.

A request runs ``request_path.request_path`` (the gateway's one request loop), this adapter performing its
effects: load polls and health probes over httpx, sends to the workers (streams relayed, released at their
end), the retry backoff as a real ``asyncio.sleep``. In PD mode (``--pd-disaggregation``) an attempt is a pair:
both legs are sent at once (the bootstrap fields in both bodies), the prefill's answer is drained, the decode's
relayed with ``x-smg-routed-worker-id`` = the decode URL, and both legs stay in flight until the decode's answer
ends (a stream: its last chunk; virtual time: the decode's ``x-sim-finish``); a leg's transport error cancels the
other and answers 502 (``pd.pair_failure``). Registration probes each prefill worker's bootstrap port as SMG does
(``health.probe_bootstrap``).

Time: a body with ``sim_time`` puts the request on the virtual clock (DESIGN.md): the core's clock
moves to it, due load polls are fetched with ``?sim_time=`` before routing, and the request stays in
flight until the worker's ``x-sim-finish``; health rounds are due every ``--health-check-interval-secs``
of virtual time and run in the request that reaches them (``GatewayCore.due_health``). Otherwise the
wall clock (seconds since start) is used, in-flight ends with the response, and background loops run the
timers, load polls and health rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from mock_gateway import health, load_monitor, pd, upstream
from mock_gateway.config import GatewayConfig
from mock_gateway.core import Decision, GatewayCore, Ticket
from mock_gateway.request_path import (
    CONNECTION_FAILED,
    Attempt,
    PollLoads,
    ProbeHealth,
    RequestPath,
    Send,
    SendPair,
    request_path,
)
from testbed_common import fastjson, http_client, vtime
from testbed_common.asgi_fastpath import FastPathApp

log = logging.getLogger("mock_gateway")
ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/generate": "generate"}


def error(
    status: int, code: str, message: str, param: str | None = None, type_: str = "invalid_request_error"
) -> JSONResponse:
    return JSONResponse(upstream.error_body(code, message, param, type_), status_code=status)


def worker_id(url: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, url))


class Gateway:
    """Runtime state around the core: HTTP client, clocks, background tasks."""

    def __init__(self, config: GatewayConfig, core: GatewayCore | None = None) -> None:
        self.config = config
        self.core = core or GatewayCore(config, now=0.0)
        self.t0 = time.monotonic()
        self.mode: str | None = None  # "live" or "virtual", set by the first inference request
        self.jitter = random.Random(config.seed)  # retry jitter, apart from the routing RNG
        self.client: httpx.AsyncClient | None = None
        self.worker_clients: dict[str, http_client.AsyncPool] = {}  # inference traffic: one pool per worker
        self.urls: dict[tuple[str, str], httpx.URL] = {}  # (worker, route) parsed once
        self.tasks: list[asyncio.Task] = []
        self.stopping = False  # stop() is closing the worker clients under requests still being sent
        self.metrics_server: Any = None

    def live_now(self) -> float:
        return time.monotonic() - self.t0

    def now(self, virtual: bool | None = None) -> float:
        """The gateway's clock: the virtual clock, or (live) seconds since start, advancing the core to it.
        Before the first inference request the mode is unknown and the clock is left where it is."""
        live = (self.mode == "live") if virtual is None else not virtual
        if live:
            self.core.advance(self.live_now())
        return self.core.clock

    def _new_client(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            trust_env=False,
            timeout=self.config.request_timeout_secs,
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
        )
        client._headers = httpx.Headers({})  # the setter re-adds httpx defaults; SMG sends no user-agent
        return client

    def worker_client(self, url: str) -> http_client.AsyncPool:
        """The pool for one worker's inference requests: httpcore scans a whole pool (O(n^2) in its
        connections) on every request, so one pool over all workers costs ~2 ms per request at 16 workers.
        No client default headers: SMG sends no user-agent."""
        client = self.worker_clients.get(url)
        if client is None:
            client = self.worker_clients[url] = http_client.AsyncPool(
                timeout=self.config.request_timeout_secs,
                limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
                headers=httpx.Headers(),
                label="gateway -> worker",
            )
        return client

    def worker_url(self, url: str, path: str) -> httpx.URL:
        u = self.urls.get((url, path))
        if u is None:
            u = self.urls[url, path] = httpx.URL(f"{url}{path}")
        return u

    async def start(self, serve_metrics: bool) -> None:
        cfg = self.config
        self.client = self._new_client()
        if serve_metrics:
            from prometheus_client import start_http_server

            self.metrics_server, _ = start_http_server(
                cfg.prometheus_port, addr=cfg.prometheus_host, registry=self.core.metrics.registry
            )
        self.spawn(self.register(self.startup_workers()))
        if not cfg.disable_health_check:
            # wall-clock rounds once the first inference request showed live time: before it the mode is
            # unknown, and a virtual-time run must not see a probe the direct transport cannot repeat
            self.spawn(health.health_loop(self.core, self.client, self.now, lambda: self.mode == "live"))
        self.spawn(load_monitor.live_loop(self.core, self.client, self.live_now, lambda: self.mode == "live"))

    def spawn(self, coro) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    def startup_workers(self) -> dict[str, health.Role]:
        """The command line's workers in registration order (``GatewayConfig.startup_workers``)."""
        return {url: health.Role(kind, port) for url, kind, port in self.config.startup_workers()}

    async def register(self, workers: dict[str, health.Role]) -> None:
        assert self.client is not None
        await health.register_workers(
            self.core,
            self.client,
            workers,
            max(self.config.worker_startup_check_interval, 0.05),
            self.config.worker_startup_timeout_secs,
        )

    async def stop(self) -> None:
        self.stopping = True
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.client is not None:
            await self.client.aclose()
        for client in self.worker_clients.values():
            await client.aclose()
        self.worker_clients.clear()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()

    # -- inference -------------------------------------------------------------------------------
    async def proxy(self, request: Request, path: str) -> Response:
        endpoint = ROUTES[path]
        m = self.core.metrics
        m.http_requests.labels(method="POST", path=path).inc()
        started = time.perf_counter()
        resp = await self._proxy(request, path, endpoint)
        m.router_duration.labels(
            router_type="http",
            backend_type="pd" if self.config.pd_disaggregation else "regular",
            connection_mode="http",
            model=getattr(request.state, "model", "unknown"),
            endpoint=endpoint,
        ).observe(time.perf_counter() - started)
        code = ""
        if resp.status_code >= 400 and isinstance(resp, JSONResponse):
            with contextlib.suppress(Exception):
                code = json.loads(bytes(resp.body)).get("error", {}).get("code") or ""
        m.http_responses.labels(path=path, status_code=str(resp.status_code), error_code=code).inc()
        return resp

    async def _proxy(self, request: Request, path: str, endpoint: str) -> Response:
        core, cfg = self.core, self.config
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_payload_size:
            return error(413, "payload_too_large", f"Request body exceeds {cfg.max_payload_size} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():  # count while streaming: an over-cap chunked body is never held whole
            size += len(chunk)
            if size > cfg.max_payload_size:
                return error(413, "payload_too_large", f"Request body exceeds {cfg.max_payload_size} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if "json" not in request.headers.get("content-type", ""):
            return error(400, "json_parse_error", "Missing Content-Type: application/json header")
        try:
            body = fastjson.loads(raw)
        except (ValueError, RecursionError) as e:  # also UnicodeDecodeError; RecursionError: deep nesting
            return error(400, "invalid_json", f"JSON syntax error: Failed to parse the request body as JSON: {e}")
        raw_headers = {k.lower(): v for k, v in request.headers.items()}  # latin-1 decoded by the server
        headers = {k: upstream.utf8_header(v) for k, v in raw_headers.items()}
        sim_t = vtime.request_time(body) if isinstance(body, dict) else None
        virtual = sim_t is not None
        if self.mode is None:
            self.mode = "virtual" if virtual else "live"
        model = body.get("model") if isinstance(body, dict) else None
        request.state.model = model if isinstance(model, str) else "unknown"
        now = sim_t if sim_t is not None else self.live_now()
        rid = upstream.request_id(raw_headers, endpoint)
        steps = request_path(core, endpoint, headers, body, now, virtual, self.jitter)
        with contextlib.closing(steps):  # a send that raises leaves nothing in flight (request_path)
            outcome = await self._drive(steps, path, endpoint, raw_headers, body, rid, virtual)
        if isinstance(outcome, Decision):
            status, err = upstream.refusal(outcome)
            return JSONResponse(err, status_code=status)
        return outcome.response

    async def _drive(
        self, steps: RequestPath, path: str, endpoint: str, headers: dict[str, str], body: dict, rid: str,
        virtual: bool,
    ) -> Decision | Attempt:
        """Run the request path, performing its effects over HTTP; its outcome."""
        assert self.client is not None
        try:
            effect = next(steps)
            while True:
                if isinstance(effect, Send):
                    result: Any = await self._attempt(effect, path, endpoint, headers, body, rid, virtual)
                elif isinstance(effect, SendPair):
                    result = await self._pair(effect, path, endpoint, headers, body, rid, virtual)
                elif isinstance(effect, PollLoads):
                    result = await load_monitor.fetch_loads(self.client, effect.urls,
                                                            effect.now if effect.virtual else None)
                elif isinstance(effect, ProbeHealth):
                    result = await health.probe(self.client, self.config, effect.urls)
                else:  # Backoff: the real wait, in either time
                    result = await asyncio.sleep(effect.seconds)
                effect = steps.send(result)
        except StopIteration as done:
            return done.value

    async def _attempt(
        self, send: Send, path: str, endpoint: str, headers: dict[str, str], body: dict, rid: str, virtual: bool
    ) -> Attempt:
        """One send to the selected worker. A 200 stream is relayed after the response is returned, and its
        ticket finished at the stream's end."""
        d, ticket = send.decision, send.ticket
        assert d.url is not None
        payload = fastjson.dumps(upstream.with_defaults(endpoint, body), ensure_ascii=True)
        client = self.worker_client(d.url)
        req = client.request(
            "POST", self.worker_url(d.url, path), upstream.forward_headers(headers, self.config.api_key), payload
        )
        try:
            resp = await client.send(req, stream=True)
        except Exception as e:  # closing a client mid-connect (stop()) raises what httpx does not wrap
            if not isinstance(e, httpx.HTTPError) and not self.stopping:
                raise
            failure = error(500, CONNECTION_FAILED, f"Failed to call upstream {d.url}: {e}", type_="server_error")
            return Attempt(None, failure, now=self.settled_at(virtual))
        vf = vtime.finish_time(resp.headers) if virtual else None
        out_headers = upstream.response_headers(resp.headers, d.url, rid)
        status = resp.status_code
        if d.stream and status == 200:
            media_type = resp.headers.get("content-type", "text/event-stream")
            relay = StreamingResponse(self._relay(resp, (ticket,), vf), status, out_headers, media_type)
            return Attempt(status, relay, vf, self.settled_at(virtual), relayed=True)
        try:
            content = await resp.aread()
        finally:
            await resp.aclose()
        if status not in upstream.RETRYABLE_STATUSES:
            client.count(resp)
        return Attempt(status, Response(content, status_code=status, headers=out_headers), vf, self.settled_at(virtual))

    def settled_at(self, virtual: bool) -> float | None:
        """The clock an attempt settles on: the core's (None) in virtual time, the wall clock in live time."""
        return None if virtual else self.live_now()

    async def _pair(
        self, send: SendPair, path: str, endpoint: str, headers: dict[str, str], body: dict, rid: str, virtual: bool
    ) -> Attempt:
        """One PD attempt: both legs sent at once; the prefill's answer drained, then the decode's relayed (a 200
        stream after the response is returned, both tickets finished at its end)."""
        prefill_url, decode_url = send.prefill.url, send.decode.url
        assert prefill_url is not None and decode_url is not None
        payload = upstream.with_defaults(endpoint, body)
        forwarded = upstream.forward_headers(headers, self.config.api_key)
        started = time.perf_counter()

        async def head(url: str) -> tuple[httpx.Response, float]:
            client = self.worker_client(url)
            data = fastjson.dumps(pd.leg_body(payload, send.bootstrap), ensure_ascii=True)
            resp = await client.send(client.request("POST", self.worker_url(url, path), forwarded, data), stream=True)
            return resp, time.perf_counter() - started

        legs = [asyncio.ensure_future(head(prefill_url)), asyncio.ensure_future(head(decode_url))]
        await asyncio.wait(legs, return_when=asyncio.FIRST_EXCEPTION)
        failed = next((leg.exception() for leg in legs if leg.done() and leg.exception() is not None), None)
        if failed is not None:  # SMG's try_join: a transport error on either leg cancels the other
            for leg in legs:
                leg.cancel()
            await asyncio.gather(*legs, return_exceptions=True)
            for leg in legs:
                if not leg.cancelled() and leg.exception() is None:
                    await leg.result()[0].aclose()
            status, err = pd.pair_failure(None, None, str(failed))  # type: ignore[misc]
            return Attempt(status, JSONResponse(err, status_code=status), now=self.settled_at(virtual))
        (prefill, _), (decode, decode_head) = (leg.result() for leg in legs)
        try:
            prefill_body = await prefill.aread()
        finally:
            await prefill.aclose()
        prefill_seconds = time.perf_counter() - started
        if not 200 <= decode.status_code < 300:
            detail = (await decode.aread()).decode(errors="replace")
            await decode.aclose()
        else:
            detail = prefill_body.decode(errors="replace")
        failure = pd.pair_failure(prefill.status_code, decode.status_code, detail)
        vf = vtime.finish_time(decode.headers) if virtual else None
        if failure is not None:
            await decode.aclose()
            return Attempt(failure[0], JSONResponse(failure[1], status_code=failure[0]), vf, self.settled_at(virtual))
        if virtual:
            first = decode.headers.get(vtime.HEADER_FIRST_TOKEN)
            times = pd.virtual_times(vtime.request_time(body) or 0.0, vtime.finish_time(prefill.headers),
                                     float(first) if first is not None else None, vf, send.prefill.stream)
        else:
            times = pd.PdTimes(prefill_seconds, decode_head)
        out_headers = upstream.response_headers(decode.headers, decode_url, rid)
        tickets = (send.prefill_ticket, send.decode_ticket)
        if send.prefill.stream:
            media_type = decode.headers.get("content-type", "text/event-stream")
            relay = StreamingResponse(self._relay(decode, tickets, vf), decode.status_code, out_headers, media_type)
            return Attempt(decode.status_code, relay, vf, self.settled_at(virtual), relayed=True, pd_times=times)
        try:
            content = await decode.aread()
        finally:
            await decode.aclose()
        return Attempt(decode.status_code, Response(content, status_code=decode.status_code, headers=out_headers), vf,
                       self.settled_at(virtual), pd_times=times)

    async def _relay(self, resp: httpx.Response, tickets: tuple[Ticket, ...], vf: float | None
                     ) -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        finally:
            await resp.aclose()
            for ticket in tickets:
                self.core.finish(ticket, virtual_finish=vf)

    # -- control plane ---------------------------------------------------------------------------
    def workers_json(self) -> dict:
        out = []
        for w in self.core.registry:
            out.append(
                {
                    "id": worker_id(w.url),
                    "url": w.url,
                    "model_id": w.model,
                    "worker_type": w.worker_type,
                    **({"bootstrap_port": w.bootstrap_port} if w.bootstrap_port is not None else {}),
                    "connection_mode": "http",
                    "is_healthy": w.ready,
                    "status": w.status,
                    "load": w.load,
                    "circuit_breaker": w.breaker.state,
                }
            )
        return {"workers": out, "total": len(out)}


def create_app(config: GatewayConfig, core: GatewayCore | None = None, serve_metrics: bool = False) -> FastAPI:
    """The gateway app; background registration, health checks and the live ticker run in its lifespan."""
    gw = Gateway(config, core)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gw.start(serve_metrics)
        try:
            yield
        finally:
            await gw.stop()

    app = FastPathApp(title="mock SMG gateway", lifespan=lifespan)
    app.state.gateway = gw

    for path in ROUTES:

        async def handler(request: Request, _path: str = path) -> Response:
            return await gw.proxy(request, _path)

        app.add_api_route(path, handler, methods=["POST"])
        app.fast_route("POST", path, handler)

    @app.get("/health")
    @app.get("/liveness")
    async def alive() -> Response:
        return PlainTextResponse("OK")

    @app.get("/readiness")
    async def readiness() -> Response:
        total = len(gw.core.registry)
        healthy = sum(1 for w in gw.core.registry if w.ready)
        if healthy:
            return JSONResponse({"status": "ready", "healthy_workers": healthy, "total_workers": total})
        return JSONResponse({"status": "not ready", "reason": "insufficient healthy workers"}, status_code=503)

    @app.get("/v1/models")
    async def models() -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": mid, "object": "model", "created": 0, "owned_by": "self_hosted"} for mid in gw.core.models()
                ],
            }
        )

    @app.get("/workers")
    async def list_workers() -> Response:
        return JSONResponse(gw.workers_json())

    @app.post("/workers")
    async def add_worker(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):
            return error(400, "invalid_json", "JSON syntax error")
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return error(400, "invalid_type", "'url' must be an http(s) URL", "url")
        url = url.rstrip("/")
        role = health.Role.from_json(body)
        if isinstance(role, str):
            return error(400, "invalid_type", role, "worker_type")
        gw.spawn(gw.register({url: role}))
        return JSONResponse({"status": "accepted", "worker_id": worker_id(url), "url": url}, status_code=202)

    @app.delete("/workers/{wid:path}")
    async def delete_worker(wid: str) -> Response:
        for w in gw.core.registry:
            if wid in (worker_id(w.url), w.url):
                gw.core.remove_worker(w.url)
                return JSONResponse({"status": "accepted", "worker_id": worker_id(w.url)}, status_code=202)
        return error(404, "worker_not_found", f"Worker {wid} not found")

    return app
