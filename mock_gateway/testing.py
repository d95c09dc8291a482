"""Helpers for the gateway's tests and benchmarks: cores on fake URLs, request bodies, a fake SGLang worker app,
a pool of fake PD workers (``pd_workers``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from mock_gateway.config import parse_args
from mock_gateway.core import GatewayCore
from testbed_common.procs import LOOPBACK, ThreadServer

MODEL = "fake-model"


def urls(n: int, base: int = 18001) -> list[str]:
    return [f"http://127.0.0.1:{base + i}" for i in range(n)]


def make_core(
    *argv: str, workers: int | Sequence[str] = 3, seed: int = 0, model: str = MODEL, now: float = 0.0
) -> GatewayCore:
    """A core built from ``smg launch``-style flags with fake workers registered in order."""
    core = GatewayCore(parse_args(list(argv)), seed=seed, now=now)
    for u in urls(workers) if isinstance(workers, int) else workers:
        core.add_worker(u, model)
    return core


def make_pd_core(*argv: str, prefill: int = 2, decode: int = 2, seed: int = 0, model: str = MODEL,
                 ports: Sequence[int | None] | None = None) -> GatewayCore:
    """A PD core (``--pd-disaggregation``, more flags in ``argv``) with fake prefill workers (bootstrap ``ports``,
    default none) then fake decode workers registered in order."""
    p, d = urls(prefill, 18101), urls(decode, 18201)
    ports = list(ports) if ports is not None else [None] * prefill
    core = GatewayCore(parse_args(["--pd-disaggregation", *argv]), seed=seed)
    for u, port in zip(p, ports, strict=True):
        core.add_worker(u, model, worker_type="prefill", bootstrap_port=port)
    for u in d:
        core.add_worker(u, model, worker_type="decode")
    return core


def chat(text: str = "hello", model: str = MODEL, **extra: Any) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def sample(core: GatewayCore, name: str, **labels: str) -> float:
    """A metric sample's value (0 when the series does not exist yet)."""
    v = core.metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def fake_worker_app(name: str, model: str = MODEL, state: dict | None = None):
    """A tiny SGLang-like worker: registration endpoints, inference echo, /v1/loads; ``state`` controls
    failures (``health_status``, ``status``, ``delay``, ``loads``) and records ``requests`` (path, headers, body)."""
    st = state if state is not None else {}
    st.setdefault("requests", [])
    app = FastAPI()

    @app.get("/health")
    def health() -> Response:
        return Response(status_code=st.get("health_status", 200))

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "sglang", "root": model}]}

    @app.get("/server_info")
    def server_info() -> dict:
        return {"served_model_name": model, "model_path": model}

    @app.get("/v1/loads")
    def loads(request: Request) -> Response:
        st.setdefault("polls", []).append(dict(request.query_params))
        body = st.get("loads") or {
            "timestamp": "",
            "dp_rank_count": 1,
            "loads": [
                {"dp_rank": 0, "num_running_reqs": 0, "num_waiting_reqs": 0, "token_usage": 0.0, "gen_throughput": 0.0}
            ],
        }
        return JSONResponse(body)

    async def infer(request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw)
        st["requests"].append((request.url.path, dict(request.headers), body))
        if st.get("delay"):
            await asyncio.sleep(st["delay"])
        status = st.get("status", 200)
        headers = {"x-fake-worker": name}
        if "sim_time" in body:
            headers["x-sim-finish"] = str(body["sim_time"] + st.get("sim_duration", 1.0))
        if status != 200:
            return JSONResponse({"error": {"message": "fail"}}, status_code=status, headers=headers)
        if body.get("stream"):

            async def gen():
                for tok in ("a", "b"):
                    yield f"data: {json.dumps({'choices': [{'delta': {'content': tok}}]})}\n\n"
                    await asyncio.sleep(st.get("chunk_delay", 0))
                yield "data: [DONE]\n\n"

            return StreamingResponse(gen(), media_type="text/event-stream", headers=headers)
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "worker": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            },
            headers=headers,
        )

    for path in ("/v1/chat/completions", "/v1/completions", "/generate"):
        app.add_api_route(path, infer, methods=["POST"])
    return app


@dataclass
class PdWorkers:
    """Running fake PD workers: each prefill worker's URL and listening bootstrap port, the decode URLs, and every
    worker's ``fake_worker_app`` state by URL (its ``requests``)."""

    prefill: list[tuple[str, int]]
    decode: list[str]
    states: dict[str, dict] = field(default_factory=dict)

    def flags(self) -> list[str]:
        """The ``smg launch`` PD flags for these workers."""
        out = ["--pd-disaggregation"]
        for url, port in self.prefill:
            out += ["--prefill", url, str(port)]
        for url in self.decode:
            out += ["--decode", url]
        return out


@contextlib.contextmanager
def pd_workers(prefill: int = 2, decode: int = 2, model: str = MODEL) -> Iterator[PdWorkers]:
    """Fake PD workers on loopback (``fake_worker_app``s recording every request), each prefill worker with a
    listening bootstrap port (a TCP socket: SMG's registration probe only connects); all stopped on exit."""
    servers: list[ThreadServer] = []
    sockets: list[socket.socket] = []
    pool = PdWorkers([], [])
    try:
        for i in range(prefill + decode):
            state: dict = {}
            srv = ThreadServer(fake_worker_app(f"p{i}" if i < prefill else f"d{i - prefill}", model, state)).start()
            servers.append(srv)
            pool.states[srv.url] = state
            if i < prefill:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((LOOPBACK, 0))
                sock.listen(16)
                sockets.append(sock)
                pool.prefill.append((srv.url, sock.getsockname()[1]))
            else:
                pool.decode.append(srv.url)
        yield pool
    finally:
        for srv in servers:
            srv.stop()
        for sock in sockets:
            sock.close()
