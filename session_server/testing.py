"""A small SGLang-like fake router for the session server's tests and benchmark.

``FakeRouter`` answers ``/v1/chat/completions`` the way a token-in/token-out SGLang worker does:
the prompt is ``input_ids`` when sent, else the rendered messages; the answer comes from
``testbed_common.tokenizer.synth_answer``; ``meta_info`` carries ``output_token_logprobs``,
``completion_tokens`` and ``cached_tokens`` (longest prefix shared with an earlier request). It
records the headers and bodies it receives, can be told to fail the next requests (e.g. with a
"rollback failed" 400), to break the prefix invariant, or to hold each request for a while, and
echoes any other path. It is a test double, not a model of a worker (``sim/worker/`` is that).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from testbed_common import tokenizer as tok

ROLLBACK_FAILED_BODY = {"error": {"message": "Rollback failed: prefix cache state mismatch", "code": 400}}


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]  # raw (lower-cased) pairs, duplicates kept
    body: Any

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class FakeRouter:
    seed: int = 0
    default_max_tokens: int = 8
    delay: float = 0.0  # seconds each chat request is held (to make turns overlap)
    corrupt_prefix: bool = False  # answer prompt_token_ids that do not continue the stored tokens
    received: list[Received] = field(default_factory=list)
    failures: deque = field(default_factory=deque)  # (status, json body) answered to the next chat requests
    active: int = 0
    max_active: int = 0
    _seqs: list[list[int]] = field(default_factory=list)
    _mutex: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, status: int = 400, body: Any = None, times: int = 1) -> None:
        for _ in range(times):
            self.failures.append((status, ROLLBACK_FAILED_BODY if body is None else body))

    def chats(self) -> list[Received]:
        return [r for r in self.received if r.path == "/v1/chat/completions"]

    def _cached(self, prompt: list[int]) -> int:
        best = 0
        for seq in self._seqs:
            n = 0
            for a, b in zip(seq, prompt, strict=False):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        return best

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        """The chat completion for a body (pure apart from the prefix memory)."""
        prompt = body.get("input_ids")
        if not isinstance(prompt, list):
            prompt = tok.render(body.get("messages") or [])
        if self.corrupt_prefix:
            prompt = [7, *prompt]
        n = int(body.get("max_tokens") or self.default_max_tokens)
        text, out = tok.synth_answer(tok.request_seed(self.seed, prompt), n)
        with self._mutex:
            cached = self._cached(prompt)
            self._seqs.append([*prompt, *out])
        return {
            "id": f"chatcmpl-{len(self._seqs)}",
            "object": "chat.completion",
            "model": body.get("model", "fake-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "tool_calls": None},
                    "finish_reason": "stop",
                    "prompt_token_ids": prompt,
                    "meta_info": {
                        "output_token_logprobs": [[-0.5, t, None] for t in out],
                        "completion_tokens": len(out),
                        "prompt_tokens": len(prompt),
                        "cached_tokens": cached,
                    },
                }
            ],
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(out),
                "total_tokens": len(prompt) + len(out),
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }

    def app(self) -> FastAPI:
        app = FastAPI()

        async def record(request: Request) -> Any:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            self.received.append(
                Received(request.method, request.url.path, request.url.query, list(request.headers.items()), body)
            )
            return body

        @app.get("/health")
        async def health() -> dict:
            return {}

        @app.get("/v1/models")
        async def models() -> dict:
            return {"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "sglang"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> JSONResponse:
            body = await record(request)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            try:
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self.failures:
                    status, err = self.failures.popleft()
                    return JSONResponse(err, status_code=status)
                return JSONResponse(self.answer(body), headers={"x-fake-router": "1"})
            finally:
                self.active -= 1

        @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
        async def echo(path: str, request: Request) -> JSONResponse:
            body = await record(request)
            return JSONResponse(
                {"echo": path, "method": request.method, "query": request.url.query, "body": body}, status_code=200
            )

        return app


def noop_answer(body: Any) -> dict[str, Any]:
    """The cheapest valid chat answer: prompt = ``input_ids`` (or the rendered messages), one ``<|im_end|>``."""
    prompt = body.get("input_ids") if isinstance(body, dict) else None
    if not isinstance(prompt, list):
        prompt = tok.render(body.get("messages") or []) if isinstance(body, dict) else []
    return {
        "id": "chatcmpl-noop",
        "object": "chat.completion",
        "model": "noop",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ""},
                "finish_reason": "stop",
                "prompt_token_ids": prompt,
                "meta_info": {"output_token_logprobs": [[0.0, tok.IM_END, None]], "completion_tokens": 1},
            }
        ],
        "usage": {"prompt_tokens": len(prompt), "completion_tokens": 1, "total_tokens": len(prompt) + 1},
    }


def noop_app() -> FastAPI:
    """A no-op upstream for the benchmark (``uvicorn --factory session_server.testing:noop_app``)."""
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        return JSONResponse(noop_answer(json.loads(await request.body())))

    return app
