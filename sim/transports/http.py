"""``http`` and ``external``: agents talk HTTP to a session server.

``HttpTransport`` starts the whole chain as real uvicorn servers on loopback (``testbed_common.procs.ThreadServer``):
one mock worker per ``WorkerConfig`` (built with the worker app, so per-worker speeds are possible),
the mock gateway from its ``smg launch``-style flags, and the session server from its CLI flags
(``--no-routing-key`` for the arm without the header). ``close()`` stops all of them. Worker URLs
come from ``sim.transports.pool.stable_ports`` so that a run repeats exactly (the gateway hashes them).

A dead worker (``sim.faults``) is a stopped worker server, started again on the same port when it recovers.

HiCache: when the pool's workers have a storage backend, the pool's L3 is a store service (``sim.storage_service``)
on loopback, started first and stopped first, and each such worker reaches it through its own ``RemoteStorage``.

A PD pool's prefill workers also listen on their bootstrap ports (``pool.bootstrap_ports``, the ports the gateway's
``--prefill URL PORT`` names): the gateway probes each at registration, as the real SMG does.

Workers on the iteration-level engine follow the agents' SimPy clock (``bind_clock``, ``chat_steps``): its owner
over HTTP is ``sim.transports.owner.ClockOwner``, which releases one request at a time and steps the workers through
their ``/sim`` control endpoints, so the servers see what ``direct``'s cores see, in the same order. The requests a
dying worker's engine holds are dropped one at a time (their connections reset) before its server stops.

``ExternalTransport`` talks to servers somebody else started: a session server URL, or a gateway URL
(then a local session server is started in front of it), or both. The gateway keeps running between runs, so
its counters are read before and after: ``gateway_metrics()`` is what this run added.
"""

from __future__ import annotations

import socket
import warnings
from collections.abc import Generator
from typing import Any

import httpx
import simpy

from sim.cosim import EngineClock
from sim.measures import counter_increase
from sim.real_smg import wait_ready
from sim.storage_service import store_app
from sim.transports.base import Reply, TransportError
from sim.transports.owner import ClockOwner
from sim.transports.pool import (
    Setup,
    bootstrap_ports,
    gateway_argv,
    port_holders,
    port_salt,
    session_server_argv,
    stable_ports,
    storage_capacity_pages,
    worker_configs,
)
from sim.transports.pool import worker_urls as urls_of
from sim.worker.remote_storage import RemoteStorage
from testbed_common import fastjson, http_client
from testbed_common.procs import LOOPBACK, ThreadServer, free_port, polling_client

CLIENT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)


def _dumps(obj: Any) -> bytes:
    return fastjson.dumps(obj)


_JSON = {"content-type": "application/json"}
CHAT_HOP, VIEW_HOP = "agent -> session server", "agent -> session server (records)"  # http_client hop labels


class SessionClient:
    """The agent side of the session server protocol over one pooled httpx transport (``http_client.Pool``)."""

    def __init__(self, session_url: str) -> None:
        self.session_url = session_url.rstrip("/")
        self.client = http_client.Pool(timeout=CLIENT_TIMEOUT, label=CHAT_HOP)
        self._chat_urls: dict[str, httpx.URL] = {}  # parsed once per session (httpx parses a str URL per request)

    def _call(self, method: str, path: str, body: Any = None, count: str | None = None,
              url: httpx.URL | None = None) -> Reply:
        try:
            r = self.client.fetch(method, url or self.session_url + path, _JSON if body is not None else None,
                                  _dumps(body) if body is not None else None)
        except httpx.HTTPError as e:
            raise TransportError(f"{method} {path}: {type(e).__name__}: {e}") from e
        if count:
            self.client.count(r, count)
        return self._reply_of(r)

    @staticmethod
    def _reply_of(r: httpx.Response) -> Reply:
        data: Any = {}
        if r.content:
            try:
                data = fastjson.loads(r.content)
            except ValueError:
                data = {"error": r.text[:500]}
        return Reply(r.status_code, data)

    def _chat_url(self, session_id: str) -> httpx.URL:
        url = self._chat_urls.get(session_id)
        if url is None:
            path = f"/sessions/{session_id}/v1/chat/completions"
            url = self._chat_urls[session_id] = httpx.URL(self.session_url + path)
        return url

    def create_session(self) -> Reply:
        return self._call("POST", "/sessions", {})

    def chat(self, session_id: str, body: dict[str, Any]) -> Reply:
        path = f"/sessions/{session_id}/v1/chat/completions"
        return self._call("POST", path, body, count=CHAT_HOP, url=self._chat_url(session_id))

    def get_session(self, session_id: str) -> Reply:
        return self._call("GET", f"/sessions/{session_id}", count=VIEW_HOP)

    def delete_session(self, session_id: str) -> Reply:
        self._chat_urls.pop(session_id, None)
        return self._call("DELETE", f"/sessions/{session_id}")

    def close(self) -> None:
        self.client.close()


def _get_text(url: str) -> str:
    try:
        with polling_client(CLIENT_TIMEOUT) as c:
            r = c.get(url)
            return r.text if r.status_code == 200 else ""
    except httpx.HTTPError:
        return ""


def session_server_app(argv: list[str]):
    from session_server.app import create_app
    from session_server.cli import build_parser, config_from_args

    return create_app(config_from_args(build_parser().parse_args(argv)))


def gateway_app(argv: list[str], metrics_port: int):
    """The mock gateway from its flags, with its Prometheus endpoint on loopback (as ``smg launch`` serves it)."""
    from mock_gateway.app import create_app
    from mock_gateway.config import parse_args

    argv = [*argv, "--host", LOOPBACK, "--prometheus-host", LOOPBACK, "--prometheus-port", str(metrics_port)]
    return create_app(parse_args(argv), serve_metrics=True)


class HttpTransport(SessionClient):
    """Workers, gateway and session server as uvicorn servers on loopback, stopped by ``close()``."""

    def __init__(self, setup: Setup, urls: list[str] | None = None) -> None:
        from sim.transports.direct import engine_stats, shared_storage, uses_storage
        from sim.worker.app import create_app as worker_app
        from sim.worker.core import WorkerCore

        self.setup = setup
        self._engine_stats = engine_stats
        self.servers: list[ThreadServer] = []
        configs = worker_configs(setup.scenario)
        ports = ([int(u.rsplit(":", 1)[1]) for u in urls] if urls
                 else stable_ports(port_salt(setup), len(configs)))
        usual = stable_ports(port_salt(setup), len(configs), check=False)
        if not urls and ports != usual:
            held = port_holders(usual)  # a client's TIME_WAIT counts: it blocks the bind (sim.transports.pool)
            warnings.warn(f"{setup.label}: the workers' usual ports are taken ({held or 'holder unknown'}), so they "
                          f"run on {ports[0]}..; hash-based policies see other URLs and this run may differ from "
                          "direct", RuntimeWarning, stacklevel=2)
        self._storages: list[RemoteStorage] = []  # HiCache: each worker's client of the pool's L3 store service
        self.store_url: str | None = None
        self._bootstrap_sockets: list[socket.socket] = []
        try:
            store = shared_storage(configs, storage_capacity_pages(setup.scenario))
            if store is not None:  # started first, so stopped first: it closes the workers' connections to it
                self.store_url = self._start(store_app(store)).url
            self.worker_cores = [WorkerCore(cfg, seed=setup.seed,
                                            storage=self._storage() if uses_storage(cfg) else None)
                                 for cfg in configs]
        except BaseException:
            self._stop_all()
            raise
        self.workers = [c.name for c in self.worker_cores]
        self.bootstrap_ports = bootstrap_ports(setup.scenario, urls_of(ports))  # the prefill workers', in order
        self._worker_servers: list[ThreadServer] = []
        self.session_core: Any = None
        self.owner: ClockOwner | None = None  # the co-simulated clock's owner, for iteration-level engines
        try:
            if any(c.iteration for c in self.worker_cores):
                self.owner = ClockOwner(self.workers, label=CHAT_HOP)
            owner_url = self.owner.arrivals_url if self.owner is not None else None
            self._worker_app = lambda core, sock: worker_app(core, owner_url=owner_url, bootstrap=sock)
            for i, port in enumerate(ports):
                self._worker_servers.append(self._start_worker(i, port))
            self.worker_urls = urls_of(ports)
            if self.owner is not None:
                self.owner.worker_urls = self.worker_urls
            metrics_port = free_port()
            self.metrics_url = f"http://{LOOPBACK}:{metrics_port}/metrics"
            gw = self._start(gateway_app(gateway_argv(setup, self.worker_urls), metrics_port))
            self.gateway_url = gw.url
            # the gateway registers its workers in the background: a first request before that finds none
            # (a 404 that the direct transport never gives, seen when the machine is busy)
            wait_ready(gw.url, len(configs))
            ss_app = session_server_app(session_server_argv(setup, gw.url))
            self.session_core = ss_app.state.core
            ss = self._start(ss_app)
            super().__init__(ss.url)
        except BaseException:
            self._stop_all()
            if self.owner is not None:
                self.owner.close()
            raise

    def _storage(self) -> RemoteStorage:
        """A worker's own client of the pool's L3 store service."""
        assert self.store_url is not None
        self._storages.append(RemoteStorage(self.store_url))
        return self._storages[-1]

    def _start(self, app: Any, port: int | None = None) -> ThreadServer:
        server = ThreadServer(app, port=port)
        self.servers.append(server)
        server.start()
        return server

    def _start_worker(self, index: int, port: int) -> ThreadServer:
        """Worker ``index``'s server on ``port``; a prefill worker's with its bootstrap socket (a new one each start:
        its server closes it when it stops)."""
        sock = None
        if self.worker_cores[index].config.disaggregation_mode == "prefill":
            sock = socket.create_server((LOOPBACK, self.bootstrap_ports[index]))
            self._bootstrap_sockets.append(sock)
        return self._start(self._worker_app(self.worker_cores[index], sock), port)

    def _stop_all(self) -> None:
        # back to front, workers first: each server then closes its kept-alive connections before their client
        # does, so the closing side's TIME_WAIT (60 s on Linux) sits on the server's own port, where it does not
        # block binding again. A client that closes first leaves it on its ephemeral port instead, which blocks
        # any bind there for 60 s, even with SO_REUSEADDR: ~20 such ports per run, each a possible port of a
        # later run's usual worker block (sim.transports.pool.stable_ports).
        for s in self.servers:
            s.stop()
        self.servers.clear()
        for sock in self._bootstrap_sockets:
            sock.close()
        self._bootstrap_sockets.clear()
        for storage in self._storages:  # after the store's server closed their connections
            storage.close()
        self._storages.clear()

    def gateway_metrics(self) -> str:
        return _get_text(self.metrics_url)

    # ---- the co-simulated clock (sim.cosim, sim.transports.owner) ------------------------------

    def bind_clock(self, env: simpy.Environment) -> EngineClock | None:
        """Put the iteration-level engines under ``env``'s clock; None when every worker answers at arrival (the
        agents then call ``chat``, which is answered at once)."""
        return self.owner.bind(env) if self.owner is not None else None

    def chat_steps(self, session_id: str, body: dict[str, Any]) -> Generator[simpy.Event, Any, Reply]:
        """One turn as SimPy steps (``DirectTransport.chat_steps``'s contract): none when it is answered at once,
        else a wait until the engine holding it finished it and its answer came back."""
        if self.owner is None:
            return self.chat(session_id, body)
        return (yield from self.owner.steps(self._post_chat(self._chat_url(session_id), _dumps(body))))

    async def _post_chat(self, url: httpx.URL, content: bytes) -> Reply:
        assert self.owner is not None
        pool = self.owner.pool
        try:
            r = await pool.fetch("POST", url, _JSON, content)
        except httpx.HTTPError as e:
            raise TransportError(f"POST {url.path}: {type(e).__name__}: {e}") from e
        pool.count(r)
        return self._reply_of(r)

    def chat(self, session_id: str, body: dict[str, Any]) -> Reply:
        """A turn answered at once; with iteration-level engines only if no engine holds it (else TransportError:
        run the agents under the co-simulated clock, ``chat_steps``)."""
        if self.owner is None:
            return super().chat(session_id, body)
        steps = self.chat_steps(session_id, body)
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        steps.close()
        raise TransportError("an engine holds the request: with iteration-level engines drive chat_steps")

    # sim.faults.FaultTarget
    def fault_cores(self) -> list[Any]:
        return list(self.worker_cores)

    def set_worker_dead(self, index: int, dead: bool) -> None:
        """Stop the worker's server (its port then refuses connections) or start it again on the same port. The
        requests its engine holds die with it first: each connection dropped, each request released again (the
        gateway retries it elsewhere or fails the turn), as ``direct`` does."""
        old = self._worker_servers[index]
        if dead:
            if self.owner is not None:
                self.owner.worker_died(index)
            old.stop()
            self.servers.remove(old)
        else:
            self._worker_servers[index] = self._start_worker(index, old.port)
            if self.owner is not None:
                self.owner.worker_restarted(index)

    def worker_stats(self) -> dict[str, dict[str, Any]]:
        return {c.name: self._engine_stats(c) for c in self.worker_cores}

    def close(self) -> None:
        try:
            if self.owner is not None:
                self.owner.abort_all()  # a held request would keep its worker's server from stopping
            self._stop_all()
        finally:
            if self.owner is not None:
                self.owner.close()  # after the servers: they closed its connections first
            if hasattr(self, "client"):
                super().close()  # after the session server: it closed the agent's connection first


class ExternalTransport(SessionClient):
    """Servers started elsewhere: a session server, a gateway (a local session server is put in front), or both."""

    def __init__(self, setup: Setup, session_url: str | None = None, gateway_url: str | None = None,
                 worker_urls: list[str] | None = None, metrics_url: str | None = None) -> None:
        if not session_url and not gateway_url:
            raise ValueError("the external transport needs --session-url and/or --gateway-url")
        self.setup = setup
        self.gateway_url = gateway_url.rstrip("/") if gateway_url else None
        # SMG serves Prometheus on its own port (--prometheus-port, default 29000); the mock on /metrics too
        self.metrics_url = metrics_url or (f"{self.gateway_url}/metrics" if self.gateway_url else None)
        self.worker_urls = worker_urls or []
        self.workers: list[str] = []  # unknown up front: taken from the answers' x-sim-worker names
        self._metrics_before = self._read_metrics()  # the gateway's running totals before this run
        self._server: ThreadServer | None = None
        if session_url is None:
            assert self.gateway_url is not None
            self._server = ThreadServer(session_server_app(session_server_argv(setup, self.gateway_url))).start()
            session_url = self._server.url
        super().__init__(session_url)

    def _read_metrics(self) -> str:
        return _get_text(self.metrics_url) if self.metrics_url else ""

    def gateway_metrics(self) -> str:
        """The gateway's metrics as this run changed them: counters less their values when the run began."""
        return counter_increase(self._metrics_before, self._read_metrics())

    def worker_stats(self) -> dict[str, dict[str, Any]]:
        return {}

    def close(self) -> None:
        try:
            if self._server is not None:  # first, so that it closes the agent's connection (see _stop_all)
                self._server.stop()
                self._server = None
        finally:
            super().close()
