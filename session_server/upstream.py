"""Values exchanged with the router (requests, answers), the headers that pass, and the reading of a chat answer.

``UpstreamRequest``/``UpstreamResponse`` are plain values: the HTTP adapter turns them into HTTP, an
in-process upstream (the simulator's ``direct`` wiring) takes and gives them as they are, and may set
the fields only it can use (``known_messages``, ``UpstreamResponse.data``/``answer``). Token ids are int64
arrays in a request (written as JSON lists) and come out of ``chat_parts`` as int64 arrays whatever the answer
held (the session's edge: JSON lists from HTTP, arrays from an in-process upstream).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np

from session_server.errors import UpstreamResponseError
from testbed_common import fastjson

# never forwarded upstream (hop-by-hop, or recomputed by the HTTP client)
DROP_REQUEST_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "accept-encoding",
    }  # the HTTP client asks for encodings it can decode; the answer is relayed decoded
)
# never copied from an upstream answer back to the client
DROP_RESPONSE_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "content-encoding", "connection", "keep-alive", "server", "date"}
)
_second = itemgetter(1)


@dataclass
class UpstreamRequest:
    """One request to the router: ``{router}/{path}?{query}``. Exactly one of ``json``/``content`` is used."""

    method: str
    path: str  # relative to the router URL, e.g. "v1/chat/completions"
    headers: dict[str, str]
    json: Any = None
    content: bytes | None = None
    query: str = ""
    # in-process upstreams only (an HTTP adapter sends nothing of it): the first that many ``json["messages"]`` are
    # the very objects of a request this upstream answered 200 before, so it may skip re-validating them. Kept, a
    # measured reason: without it a ``direct`` request on ``large`` costs 10.1 % more instructions (911 k, not 828 k)
    known_messages: int = 0


@dataclass
class UpstreamResponse:
    """The router's answer. An in-process upstream may set ``data`` (parsed JSON) instead of ``content``, or for
    a 200 chat answer ``answer`` (a ``fastjson.ChatAnswer``: read typed, recorded as is, its body built only when
    somebody reads it)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes = b""
    data: Any = None
    answer: fastjson.ChatAnswer | None = None

    def json(self) -> Any:
        """The parsed JSON body, or None when there is none or it does not parse."""
        if self.data is not None:
            return self.data
        if self.answer is not None:
            return self.answer.value()
        if not self.content:
            return None
        try:
            return fastjson.loads(self.content)
        except (ValueError, UnicodeDecodeError):
            return None

    def text(self) -> str:
        if self.content:
            return self.content.decode("utf-8", errors="replace")
        if self.data is not None or self.answer is not None:
            return json.dumps(self.json())
        return ""


def response_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Upstream response headers worth relaying (``x-sim-*``, ``x-smg-routed-worker-id``, content-type...)."""
    return {k: v for k, v in headers.items() if k.lower() not in DROP_RESPONSE_HEADERS}


def chat_parts(data: Any, sent_ids: np.ndarray | None = None) -> tuple[dict[str, Any], np.ndarray, np.ndarray, bool]:
    """``choices[0]``, ``prompt_token_ids`` and the output ids of a 200 chat answer as int64 arrays, and whether
    the prompt is ``sent_ids`` itself (an in-process upstream's echo of the very array sent: no per-id work, and
    its prefix holds by construction); 502 when malformed, or for ids beyond int64.

    ``prompt_token_ids`` is a JSON list, or a 1-D int64 array from an in-process upstream (taken as is).
    """
    if not isinstance(data, dict):
        raise UpstreamResponseError("upstream returned a non-JSON or non-object body with status 200")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamResponseError("upstream response has no choices[0]")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise UpstreamResponseError("upstream response has no choices[0].message")
    if message.get("content") is None:
        raise UpstreamResponseError("upstream response has choices[0].message.content = null")
    meta = choice.get("meta_info")
    if not isinstance(meta, dict) or not isinstance(meta.get("output_token_logprobs"), list):
        raise UpstreamResponseError("upstream response lacks choices[0].meta_info.output_token_logprobs")
    logprobs = meta["output_token_logprobs"]
    if len(logprobs) != meta.get("completion_tokens"):
        raise UpstreamResponseError(
            f"upstream response has {len(logprobs)} output_token_logprobs but "
            f"completion_tokens={meta.get('completion_tokens')!r}"
        )
    try:  # the usual case (plain int ids), in C; anything else takes the exact per-item rule below
        output = list(map(_second, logprobs))
        plain = list(map(type, output)).count(int) == len(output)
    except Exception:
        plain = False
    if not plain:
        try:
            output = [int(t[1]) for t in logprobs]
        except (TypeError, ValueError, IndexError):
            raise UpstreamResponseError(
                "malformed output_token_logprobs entries (want [logprob, token_id, ...])"
            ) from None
    prompt = choice.get("prompt_token_ids")
    if isinstance(prompt, np.ndarray) and prompt.dtype == np.int64 and prompt.ndim == 1:
        return choice, prompt, _int64(output), prompt is sent_ids
    if not isinstance(prompt, list) or not (
        list(map(type, prompt)).count(int) == len(prompt)  # the JSON case, checked in C; else the exact check
        or all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        raise UpstreamResponseError("upstream response lacks choices[0].prompt_token_ids (a list of ints)")
    return choice, _int64(prompt), _int64(output), False


def _int64(ids: list[int]) -> np.ndarray:
    """Validated int ids as a read-only int64 array; 502 for an id beyond int64 (no model has such a vocabulary)."""
    try:
        arr = np.fromiter(ids, np.int64, len(ids))
    except OverflowError:
        raise UpstreamResponseError("upstream response has token ids beyond the int64 range") from None
    arr.flags.writeable = False
    return arr
