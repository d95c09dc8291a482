"""Helpers for the gateway's tests and benchmarks: cores on fake URLs, request bodies, a fake SGLang worker app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from mock_gateway.config import parse_args
from mock_gateway.core import GatewayCore

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
