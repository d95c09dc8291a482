"""Values exchanged with the router (requests, answers), the headers that pass, and the reading of a chat answer.

``UpstreamRequest``/``UpstreamResponse`` are plain values: the HTTP adapter turns them into HTTP, an
in-process upstream (the simulator's ``direct`` wiring) takes and gives them as they are, and may set
the fields only it can use (``known_messages``, ``UpstreamResponse.data``/``answer``, int64 id arrays).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import is_, itemgetter
from typing import Any

import numpy as np

from session_server.errors import UpstreamResponseError
from session_server.tokens import as_list
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
    # the very objects of a request this upstream answered 200 before, so it may skip re-validating them
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


def _parse_chat_response(data: Any) -> tuple[dict[str, Any], list[int]]:
    """``choices[0]`` and ``prompt_token_ids + output ids`` of a 200 chat answer; 502 when malformed."""
    choice, prompt, output, _ = chat_parts(data)
    return choice, [*as_list(prompt), *output]


def chat_parts(
    data: Any, sent_ids: list[int] | np.ndarray | None = None
) -> tuple[dict[str, Any], list[int] | np.ndarray, list[int], bool]:
    """``choices[0]``, ``prompt_token_ids``, the output ids of a 200 chat answer and whether the prompt is
    ``sent_ids`` echoed object for object (see below); 502 when malformed.

    ``prompt_token_ids`` may be a 1-D int64 array from an in-process upstream: already typed, taken as is.
    It may also hold the very objects of ``sent_ids`` (the ``input_ids`` list this core built from ids it had
    checked), echoed by an in-process upstream: then it passes the check by construction (one pointer compare
    per id instead of a type check).
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
        return choice, prompt, output, prompt is sent_ids
    if (
        sent_ids is not None
        and type(prompt) is list
        and len(prompt) == len(sent_ids)
        and (prompt is sent_ids or all(map(is_, prompt, sent_ids)))
    ):
        return choice, prompt, output, True
    if not isinstance(prompt, list) or not (
        list(map(type, prompt)).count(int) == len(prompt)  # the JSON case, checked in C; else the exact check
        or all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        raise UpstreamResponseError("upstream response lacks choices[0].prompt_token_ids (a list of ints)")
    return choice, prompt, output, False
