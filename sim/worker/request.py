"""What a mock worker accepts: an inference request's validation and parsing into a ``ParsedRequest``.

Bad input raises ``BadRequest`` (the core answers it as a 4xx JSON error). The prompt is ``input_ids`` when
present (chat: ``messages`` are still checked), else the rendered ``messages`` (chat), ``prompt`` (completions:
text or ids) or ``text`` (generate). Output length: ``max_tokens`` (chat, completions;
``max_completion_tokens`` also accepted) or ``sampling_params.max_new_tokens`` (generate) is the exact number
of output tokens, the last one being ``<|im_end|>`` (finish_reason ``"stop"``, as with ``ignore_eos``); absent,
the worker's ``default_max_tokens``. A request that cannot fit the context or the KV capacity is refused here,
before the engine sees it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from testbed_common import tokenizer

Route = Literal["chat", "completions", "generate"]
ROUTES: tuple[str, ...] = ("chat", "completions", "generate")
MAX_TOKEN_ID = (1 << 32) - 1


class BadRequest(ValueError):
    """Invalid input; becomes a 4xx JSON error."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass(slots=True)
class ParsedRequest:
    """One valid inference request, as the core serves it."""

    route: str
    prompt_ids: np.ndarray  # read-only int64: the caller's own array when it sent one (echoed as is)
    max_tokens: int
    stream: bool
    include_usage: bool
    has_input_ids: bool
    return_prompt_token_ids: bool
    logprobs: bool
    rid: str | None


def parse_request(
    route: str,
    body: Mapping[str, Any],
    known_messages: int = 0,
    *,
    default_max_tokens: int,
    context_length: int,
    kv_capacity: int | None,
) -> ParsedRequest:
    """``body`` for ``route`` (one of ``ROUTES``) as a ``ParsedRequest``, else ``BadRequest``.

    This is the worker's JSON edge: token ids come as JSON lists (HTTP) or int64 arrays (in-process callers),
    and leave as one read-only int64 array. ``known_messages``: see ``WorkerCore.infer``."""
    get = body.get
    stream = get("stream")
    if stream is not True and stream is not False:  # the plain cases inline, the rest via the helper
        stream = _bool_field(body, "stream")
    stream_options = get("stream_options")
    if stream_options is not None and not isinstance(stream_options, Mapping):
        raise BadRequest("stream_options must be an object", param="stream_options")
    include_usage = bool(stream_options and stream_options.get("include_usage") is True)
    if get("n") is not None:
        n = _int_field(body, "n", 1)
        if n not in (None, 1):
            raise BadRequest("only n=1 is supported", param="n")
    input_ids = get("input_ids")
    has_input_ids = input_ids is not None
    if route == "chat":
        messages = get("messages")
        if has_input_ids:
            prompt_ids = _token_ids(input_ids, "input_ids")
            if messages is not None:
                _messages(messages, known_messages)
        else:  # long texts tokenized straight into an array
            prompt_ids = tokenizer.render_ids(_messages(messages, known_messages))
        max_tokens = get("max_tokens")
        if type(max_tokens) is not int or max_tokens < 1:
            max_tokens = _int_field(body, "max_tokens", 1)
            if max_tokens is None:
                max_tokens = _int_field(body, "max_completion_tokens", 1)
        logprobs = get("logprobs")
        if logprobs is not True and logprobs is not False:
            logprobs = _bool_field(body, "logprobs")
    elif route == "completions":
        prompt = body.get("prompt")
        if has_input_ids:
            prompt_ids = _token_ids(body["input_ids"], "input_ids")
        elif isinstance(prompt, list):
            prompt_ids = _token_ids(prompt, "prompt")
        else:
            prompt_ids = tokenizer.encode(_text(prompt, "prompt"))
        max_tokens = _int_field(body, "max_tokens", 1)
        lp = body.get("logprobs")
        if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int) or lp < 0):
            raise BadRequest("logprobs must be a non-negative integer", param="logprobs")
        logprobs = lp is not None
    else:  # generate
        if has_input_ids:
            prompt_ids = _token_ids(body["input_ids"], "input_ids")
        else:
            prompt_ids = tokenizer.encode(_text(body.get("text"), "text"))
        sp = body.get("sampling_params")
        if sp is None:
            sp = {}
        if not isinstance(sp, Mapping):
            raise BadRequest("sampling_params must be an object", param="sampling_params")
        max_tokens = _int_field(sp, "max_new_tokens", 1, where="sampling_params")
        logprobs = _bool_field(body, "return_logprob")
    if not len(prompt_ids):
        raise BadRequest("the prompt has no tokens", param="prompt")
    if max_tokens is None:
        max_tokens = default_max_tokens
    refusal = admission_refusal(len(prompt_ids), max_tokens, context_length, kv_capacity)
    if refusal is not None:
        raise BadRequest(refusal, param="max_tokens")
    rid = get("rid")
    if type(prompt_ids) is not np.ndarray:
        prompt_ids = np.array(prompt_ids, dtype=np.int64)
    if prompt_ids.flags.writeable:  # read-only to everyone, as the caller's own array is; a view leaves it as it was
        prompt_ids = prompt_ids.view()
        prompt_ids.flags.writeable = False
    echo = get("return_prompt_token_ids")
    if echo is not True and echo is not False:
        echo = _bool_field(body, "return_prompt_token_ids")
    return ParsedRequest(
        route=route,
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=include_usage,
        has_input_ids=has_input_ids,
        return_prompt_token_ids=echo,
        logprobs=logprobs,
        rid=rid if isinstance(rid, str) else None,
    )


def admission_refusal(prompt_tokens: int, max_tokens: int, context_length: int, kv_capacity: int | None) -> str | None:
    """Why a worker refuses a request of this size (its context, then its KV capacity), or None: it fits."""
    total = prompt_tokens + max_tokens
    if total > context_length:
        return (
            f"Requested token count exceeds the model's maximum context length of {context_length} tokens. "
            f"You requested a total of {total} tokens: {prompt_tokens} tokens from "
            f"the input messages and {max_tokens} tokens for the completion."
        )
    if kv_capacity is not None and total > kv_capacity:
        return f"request needs {total} KV tokens; the worker holds {kv_capacity}"
    return None


def _int_field(body: Mapping[str, Any], key: str, minimum: int, where: str | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    name = f"{where}.{key}" if where else key
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer", param=name)
    if value < minimum:
        raise BadRequest(f"{name} must be >= {minimum}", param=name)
    return value


def _bool_field(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be a boolean", param=key)
    return value


_INT64 = np.dtype(np.int64)
_max_of = np.maximum.reduce


def _token_ids(value: Any, param: str) -> np.ndarray:
    """A non-empty list of ids in [0, MAX_TOKEN_ID] (JSON) or 1-D integer array of them (in-process callers) as
    an int64 array, else BadRequest (the same one for either)."""
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iu" and len(value):
        if value.dtype == _INT64:  # the in-process case; one reduction: negative ids read as huge uint64 ones
            if int(_max_of(value.view(np.uint64))) > MAX_TOKEN_ID:
                raise BadRequest(f"{param} must contain integers in [0, {MAX_TOKEN_ID}]", param=param)
            return value
        arr = value.astype(np.int64, copy=False) if value.dtype.kind == "i" else value
        if int(arr.view(np.uint64).max() if arr.dtype.itemsize == 8 else arr.max()) > MAX_TOKEN_ID:
            raise BadRequest(f"{param} must contain integers in [0, {MAX_TOKEN_ID}]", param=param)
        return value.astype(np.int64, copy=False)
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{param} must be a non-empty list of token ids (batches are not supported)", param=param)
    if list(map(type, value)).count(int) == len(value):  # the JSON case, in C; anything else: the exact loop below
        try:
            arr = np.fromiter(value, dtype=np.int64, count=len(value))
        except OverflowError:
            arr = None
        if arr is not None and int(_max_of(arr.view(np.uint64))) <= MAX_TOKEN_ID:  # negatives read as huge
            return arr
        raise BadRequest(f"{param} must contain integers in [0, {MAX_TOKEN_ID}]", param=param)
    for t in value:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= MAX_TOKEN_ID:
            raise BadRequest(f"{param} must contain integers in [0, {MAX_TOKEN_ID}]", param=param)
    return np.array(value, dtype=np.int64)


def _messages(value: Any, known: int = 0) -> list[Mapping[str, Any]]:
    """``value`` if it is a valid message list, else BadRequest. ``known``: the first that many messages are
    objects found valid before (read-only, so still valid): only the rest are looked at."""
    if not isinstance(value, list) or not value:
        raise BadRequest("messages must be a non-empty list", param="messages")
    for m in value[known:] if known else value:  # the common case, checked cheaply; any doubt: the loop below
        if type(m) is not dict or type(m.get("role")) is not str or type(m.get("content")) not in _CONTENT_TYPES:
            break
    else:
        return value
    for i, m in enumerate(value):
        if not isinstance(m, Mapping):
            raise BadRequest(f"messages[{i}] must be an object", param="messages")
        if not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}].role must be a string", param="messages")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequest(f"messages[{i}].content must be a string, a list of parts or null", param="messages")
    return value


_CONTENT_TYPES = (str, type(None), list)


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{param} must be a string (batches are not supported)", param=param)
    return value

