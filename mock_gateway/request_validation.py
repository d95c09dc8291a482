"""SMG's request validation: the serde-style 4xx answers for a body its typed request structs cannot take.

Apart from routing (``core.py``): ``GatewayCore.select`` asks ``validate`` first and turns an ``Invalid`` into
a refusing ``Decision``. Messages and codes are as observed on SMG 1.13.0 (see ``validate``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mock_gateway.routing_key import int_ids


@dataclass(frozen=True)
class Invalid:
    """Why a body is refused: SMG's ``error.code``, ``message`` and ``param``, and the HTTP status."""

    error_code: str
    message: str
    param: str | None = None
    status: int = 400


_REQUIRED = {"chat": ("model", "messages"), "completions": ("model", "prompt"), "generate": ()}
ROLES = frozenset({"system", "user", "assistant", "tool", "function", "developer", "root"})


def _token_ids(ids: list | np.ndarray) -> bool:
    """A list of token ids (ints in [0, 2**32)) or a non-empty list of such lists; or, from an in-process
    caller, a 1-D integer array with the same range (checked vectorised)."""
    if isinstance(ids, np.ndarray):
        return int_ids(ids)

    def flat(xs: object) -> bool:
        return isinstance(xs, list) and all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**32 for i in xs
        )

    return flat(ids) or (bool(ids) and all(flat(x) for x in ids))


def _serde_kind(v: object) -> str:
    """How serde_json names an unexpected JSON value in its "invalid type" errors."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean `{str(v).lower()}`"
    if isinstance(v, int):
        return f"integer `{v}`"
    if isinstance(v, float):
        return f"floating point `{v}`"
    if isinstance(v, str):
        return f"string {v!r}"
    return "sequence" if isinstance(v, list) else "map"


def _tool_message(i: int, m: Mapping) -> Invalid | None:
    """SMG 1.13.0's checks of a ``tool`` message (typed struct: ``content`` and a string ``tool_call_id`` required).

    Observed: a non-string ``tool_call_id`` (null included) is 400 ``invalid_type`` with ``param`` ``messages[i]``;
    a missing ``content`` is reported before a missing ``tool_call_id``, each 400 ``missing_required_parameter``
    with ``param`` ``messages[i].<field>``; an empty string id is accepted.
    """
    prefix = f"Invalid JSON data: Failed to deserialize the JSON body into the target type: messages[{i}]: "
    if "tool_call_id" in m and not isinstance(m["tool_call_id"], str):
        msg = f"{prefix}invalid type: {_serde_kind(m['tool_call_id'])}, expected a string"
        return Invalid("invalid_type", msg, f"messages[{i}]")
    if "content" in m and not isinstance(m["content"], str | list):
        return Invalid("invalid_type", f"{prefix}data did not match any variant of untagged enum "
                    "MessageContent", f"messages[{i}]")
    for f in ("content", "tool_call_id"):
        if f not in m:
            return Invalid("missing_required_parameter", f"{prefix}missing field `{f}`",
                        f"messages[{i}].{f}")
    return None


def _function_message(i: int, m: Mapping) -> Invalid | None:
    """SMG 1.13.0's checks of a ``function`` message (typed struct: string ``content`` and string ``name``).

    Observed: a non-string ``content`` or ``name`` (null included) is 400 ``invalid_type`` with ``param``
    ``messages[i]``, the first such field in the body's order; then a missing ``content``, then a missing ``name``,
    each 400 ``missing_required_parameter`` with ``param`` ``messages[i].<field>``; an empty name is accepted.
    """
    prefix = f"Invalid JSON data: Failed to deserialize the JSON body into the target type: messages[{i}]: "
    for f, v in m.items():
        if f in ("content", "name") and not isinstance(v, str):
            return Invalid("invalid_type", f"{prefix}invalid type: {_serde_kind(v)}, expected a string",
                        f"messages[{i}]")
    for f in ("content", "name"):
        if f not in m:
            return Invalid("missing_required_parameter", f"{prefix}missing field `{f}`",
                        f"messages[{i}].{f}")
    return None


def _plain_messages(msgs: list) -> bool:
    """Every message a dict with a known string role and string content (a ``tool`` message also a string
    ``tool_call_id``, a ``function`` message a string ``name``): then all are acceptable. Otherwise the full
    check below names the first problem."""
    for m in msgs:
        if type(m) is not dict:
            return False
        role = m.get("role")
        if type(m.get("content")) is not str or type(role) is not str:
            return False
        if role == "tool":
            if type(m.get("tool_call_id")) is not str:
                return False
        elif role == "function":
            if type(m.get("name")) is not str:
                return False
        elif role not in ROLES:
            return False
    return True


def validate(endpoint: str, body: object, known_messages: int = 0, ids_checked: bool = False) -> Invalid | None:
    """SMG's 4xx for a body it cannot deserialize (None when the body is acceptable).

    ``known_messages`` (in-process callers only, never from JSON): the first that many chat messages are the very
    objects of a request this gateway accepted before, so only the rest are checked (same answer: a message's
    check does not depend on the others). ``ids_checked`` (in-process callers only): the body's ``input_ids`` are
    known to be a non-empty list of ints in [0, 2**32), so their per-id check is skipped.

    As observed on 1.13.0: a missing field is 400 ``missing_required_parameter``, a wrong type 400
    ``invalid_type``, with ``param`` naming the field; an empty ``messages`` is ``empty_array``, an empty
    ``prompt`` array ``prompt_empty``, an unknown role ``invalid_value``, a negative ``max_tokens``
    ``integer_below_min_value``. ``/generate`` answers type errors with 422 (SMG sends plain text there;
    the mock keeps the JSON error shape).
    """
    if type(body) is not dict and not isinstance(body, Mapping):  # a dict first: the ABC check costs more
        return Invalid("invalid_type", "Invalid JSON data: expected a JSON object")
    for f in _REQUIRED[endpoint]:
        if body.get(f) is None:
            return Invalid("missing_required_parameter", f"Invalid JSON data: missing field `{f}`", f)
    status = 422 if endpoint == "generate" else 400

    def wrong(f: str, expected: str, code: str = "invalid_type") -> Invalid:
        return Invalid(code, f"Invalid JSON data: {f}: invalid type, expected {expected}", f, status)

    model = body.get("model")
    if model is not None and not isinstance(model, str):
        return wrong("model", "a string")
    if endpoint == "chat":
        msgs = body["messages"]
        if not isinstance(msgs, list):
            return wrong("messages", "a sequence")
        if not msgs:
            return wrong("messages", "an array with minimum length 1", "empty_array")
        start = known_messages if 0 < known_messages <= len(msgs) else 0
        rest = msgs[start:] if start else msgs
        for i, m in enumerate(() if _plain_messages(rest) else rest, start):
            if not isinstance(m, Mapping):
                return wrong(f"messages[{i}]", "a message object")
            role = m.get("role")
            if role is None:
                return wrong(f"messages[{i}].role", "a role", "missing_required_parameter")
            if not isinstance(role, str):
                return wrong(f"messages[{i}].role", "a string")
            if role not in ROLES:
                return wrong(f"messages[{i}].role", "one of " + ", ".join(sorted(ROLES)), "invalid_value")
            if role in ("tool", "function"):
                check = _tool_message if role == "tool" else _function_message
                if (bad := check(i, m)) is not None:
                    return bad
                continue
            if "content" not in m and role not in ("assistant", "function"):
                return wrong(f"messages[{i}].content", "content", "missing_required_parameter")
            content = m.get("content")
            if content is not None and not isinstance(content, str | list):
                return wrong(f"messages[{i}].content", "a string or an array of content parts")
    if endpoint == "completions":
        if not isinstance(body["prompt"], str | list):
            return wrong("prompt", "a string or a sequence")
        if body["prompt"] == []:
            return wrong("prompt", "a non-empty array", "prompt_empty")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        return wrong("stream", "a boolean")
    for f in ("max_tokens", "max_completion_tokens"):
        v = body.get(f)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int):
                return wrong(f, "u32")
            if not 0 <= v < 2**32:
                return wrong(f, "u32", "integer_below_min_value" if v < 0 else "integer_above_max_value")
    if endpoint == "generate":
        for f, typ, name in (("text", str, "str"), ("input_ids", list | np.ndarray, "list"),
                             ("sampling_params", Mapping, "Mapping")):
            if body.get(f) is not None and not isinstance(body[f], typ):
                return wrong(f, name)
        ids = body.get("input_ids")
        if ids is not None and not ids_checked and not _token_ids(ids):
            return wrong("input_ids", "an array of token ids or an array of token id arrays")
    return None
