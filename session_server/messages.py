"""miles' message rules: message equality, the request's shape, append-only roles, the one-turn rollback.

A session stores the last request's messages plus the model's reply. A later request must repeat them
(compared with ``message_matches``) and may then only append messages whose roles are allowed
(``--tito-allowed-append-roles``, default ``tool``); an agent retry may instead drop the last model
turn and continue from the one before it (at most ``MAX_ASSISTANT_ROLLBACK_STEPS``). Breaking a rule
raises ``MessageValidationError`` (400, "rollback failed: ..." or "messages are not append-only: ...").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from operator import is_
from typing import Any

from session_server.errors import BadRequestError, MessageValidationError

VALID_ROLES = ("tool", "user", "system", "assistant")
MAX_ASSISTANT_ROLLBACK_STEPS = 1
_MESSAGE_FIELDS = ("role", "content", "reasoning_content", "tool_calls")


def append_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """The allowed append roles, lower-cased and deduplicated in order; ValueError for a role miles lacks."""
    out = []
    for role in roles:
        r = role.lower()
        if r not in VALID_ROLES:
            raise ValueError(f"unknown append role {role!r}; choose from {', '.join(VALID_ROLES)}")
        if r not in out:
            out.append(r)
    return tuple(out)


def _empty_to_none(value: Any) -> Any:
    if value is None or (isinstance(value, str | list) and len(value) == 0):
        return None
    return value


def message_matches(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """miles' ``message_matches``: equal role, content, reasoning_content, tool_calls (None == "" == [])."""
    if a == b:  # the common case (a resent message), in C; differs only for a NaN held by both dicts
        return True
    for k in _MESSAGE_FIELDS:
        x, y = a.get(k), b.get(k)
        if x == y and type(x) is type(y):  # equal values of one type normalise alike (a stored reply's None fields)
            continue
        if (x is not None or y is not None) and _empty_to_none(x) != _empty_to_none(y):
            return False
    return True


def common_prefix_len(stored: list[Mapping[str, Any]], request: list[Mapping[str, Any]], start: int = 0) -> int:
    """Length of the longest prefix on which the two message lists match message by message.

    ``start``: the first ``start`` messages are known to match (e.g. they are the very same objects).
    """
    n = start
    for i in range(start, min(len(stored), len(request))):
        if not message_matches(stored[i], request[i]):
            break
        n = i + 1
    return n


def identical_prefix_len(a: list[Any], b: list[Any]) -> int:
    """How many leading items of two lists are the very same objects (one pass in C)."""
    same = list(map(is_, a, b))
    try:
        return same.index(False)
    except ValueError:
        return len(same)


def check_messages(messages: Any, validated: int = 0) -> list[dict[str, Any]]:
    """``messages`` if it is a non-empty list of objects with a non-empty string role; 400 otherwise.

    ``validated``: the first messages are already known valid (objects checked before)."""
    if not isinstance(messages, list):
        got = "missing" if messages is None else type(messages).__name__
        raise BadRequestError(f"'messages' must be a list of message objects ({got})")
    if not messages:
        raise BadRequestError("'messages' must not be empty")
    for i in range(validated, len(messages)):
        m = messages[i]
        if not isinstance(m, dict):
            raise BadRequestError(f"messages[{i}] must be an object, got {type(m).__name__}")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise BadRequestError(f"messages[{i}].role must be a non-empty string")
    return messages


def rollback_point(
    stored: list[dict[str, Any]], reply_positions: list[int], messages: list[dict[str, Any]], matched: int = 0
) -> int:
    """How many model turns the request keeps (all of them, ``len(reply_positions)``, for a plain append).

    ``stored``: the session's messages; ``reply_positions``: the index in ``stored`` of each model turn's reply;
    ``matched``: the first messages are known to match the stored ones."""
    match = common_prefix_len(stored, messages, matched)
    turns = len(reply_positions)
    if match >= len(stored):
        return turns
    keep = sum(1 for pos in reply_positions if pos < match)
    if keep == 0:
        raise MessageValidationError(
            f"rollback failed: no assistant message found in the matching prefix "
            f"(first {match} of {len(stored)} stored messages match)"
        )
    discard = turns - keep
    if discard > MAX_ASSISTANT_ROLLBACK_STEPS:
        raise MessageValidationError(
            f"rollback failed: discard_count={discard} exceeds max_assistant_rollback_steps="
            f"{MAX_ASSISTANT_ROLLBACK_STEPS} (first {match} of {len(stored)} stored messages match)"
        )
    return keep


def appended_messages(
    stored_len: int, messages: list[dict[str, Any]], allowed_roles: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The messages after the kept ``stored_len``, all of an allowed role; 400 otherwise."""
    if len(messages) < stored_len:
        raise MessageValidationError(
            f"messages are not append-only: the request has {len(messages)} messages, "
            f"the session holds {stored_len}"
        )
    appended = messages[stored_len:]
    for i, m in enumerate(appended, start=stored_len):
        if m["role"].lower() not in allowed_roles:
            raise MessageValidationError(
                f"messages are not append-only: messages[{i}] has role {m['role']!r}, but only "
                f"{list(allowed_roles)} may be appended after a model turn "
                f"(see --tito-allowed-append-roles)"
            )
    return appended
