"""In-process turns against a ``SessionCore`` and a ``FakeRouter``, shared by the session core's tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from session_server.core import SessionCore
from session_server.testing import FakeRouter
from session_server.upstream import UpstreamRequest, UpstreamResponse


def as_json(body: dict) -> dict:
    """The body an HTTP upstream would parse: the ``input_ids`` array becomes a list."""
    ids = body.get("input_ids")
    return {**body, "input_ids": ids.tolist()} if isinstance(ids, np.ndarray) else body


def ids_of(ids: np.ndarray) -> list[int]:
    """A core's token ids (a read-only 1-D int64 array, checked here) as a list."""
    assert isinstance(ids, np.ndarray) and ids.dtype == np.int64 and ids.ndim == 1 and not ids.flags.writeable
    return ids.tolist()


def upstream_of(router: FakeRouter, log: list[UpstreamRequest] | None = None):
    """An in-process upstream: the fake router's answer, or its queued failures."""

    def send(req: UpstreamRequest) -> UpstreamResponse:
        if log is not None:
            log.append(req)
        if router.failures:
            status, body = router.failures.popleft()
            return UpstreamResponse(status, {"content-type": "application/json"}, data=body)
        return UpstreamResponse(200, {"content-type": "application/json"}, data=router.answer(as_json(req.json)))

    return send


def chat(core: SessionCore, sid: str, messages, router: FakeRouter, headers=(), log=None, **extra):
    body = {"model": "fake-model", "messages": messages, "max_tokens": 5, **extra}
    return core.run_turn(sid, body, headers, upstream_of(router, log), now=1.0)


def reply_of(result) -> dict:
    return result.body["choices"][0]["message"]


def conversation(core, sid, router, tools: list[str], log=None):
    """Run a tool-calling conversation; return all its messages (last reply included) and the results."""
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "task alpha beta"}]
    results = []
    for i, tool_text in enumerate([*tools, None]):
        r = chat(core, sid, messages, router, log=log)
        assert r.status == 200, r.body
        results.append(r)
        messages = [*messages, reply_of(r)]
        if tool_text is None:
            break
        messages.append({"role": "tool", "content": tool_text, "tool_call_id": str(i)})
    return messages, results


tool_texts = st.lists(st.text(alphabet="abc xyz", max_size=30), min_size=0, max_size=5)
