"""A tiny in-process stand-in for gateway + worker (tests only): agents and measures without the real cores."""

from __future__ import annotations

from typing import Any

from session_server.core import SessionCore
from session_server.upstream import UpstreamRequest, UpstreamResponse
from sim.engine import Engine, WorkerConfig
from sim.transports.base import Reply
from testbed_common import tokenizer


class FakePool:
    """``n`` real engines (unbounded KV); sessions go to ``int(key, 16) % n``, or round robin without a key."""

    def __init__(self, n: int = 1, sticky: bool = True, seed: int = 0) -> None:
        self.engines = [Engine(WorkerConfig(name=f"w{i}", kv_capacity_tokens=None)) for i in range(n)]
        self.sticky, self.seed = sticky, seed
        self.rr = 0

    def __call__(self, req: UpstreamRequest) -> UpstreamResponse:
        body: dict[str, Any] = req.json
        now = float(body["sim_time"])
        key = req.headers.get("X-SMG-Routing-Key")
        if self.sticky and key:
            w = int(key, 16) % len(self.engines)
        else:
            w, self.rr = self.rr % len(self.engines), self.rr + 1
        ids = body.get("input_ids")  # the session's int64 array; the fake answers with plain lists, as JSON does
        prompt = ids.tolist() if ids is not None else tokenizer.render(body["messages"], True)
        text, out = tokenizer.synth_answer(tokenizer.request_seed(self.seed, prompt), body["max_tokens"])
        t = self.engines[w].submit(now, prompt, out)
        data = {"choices": [{"message": {"role": "assistant", "content": text}, "prompt_token_ids": list(prompt),
                             "meta_info": {"output_token_logprobs": [[0.0, t, None] for t in out],
                                           "completion_tokens": len(out)}}],
                "sim": {"arrival": t.arrival, "start": t.start, "first_token": t.first_token, "finish": t.finish,
                        "worker": f"w{w}", "cached_tokens": t.cached_tokens, "evicted_tokens": t.evicted_tokens}}
        return UpstreamResponse(200, {}, data=data)


class FakeTransport:
    def __init__(self, n: int = 1, sticky: bool = True, routing_key: bool = True) -> None:
        self.core = SessionCore(routing_key=routing_key, session_id_seed=1)
        self.pool = FakePool(n, sticky)
        self.workers = [f"w{i}" for i in range(n)]

    def create_session(self) -> Reply:
        return Reply(200, {"session_id": self.core.create_session(0.0)})

    def chat(self, sid: str, body: dict) -> Reply:
        r = self.core.run_turn(sid, body, {}, self.pool, float(body["sim_time"]))
        return Reply(r.status, r.body if r.body is not None else {})

    def get_session(self, sid: str) -> Reply:
        return Reply(200, self.core.get_view(sid))

    def delete_session(self, sid: str) -> Reply:
        self.core.delete(sid)
        return Reply(204, {})

    def gateway_metrics(self) -> str:
        return ""

    def worker_stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass
