"""Routing-key resolution (SMG ``header_utils.rs`` / ``policies/registry.rs``) and routing text extraction.

- A valid key is a non-empty UTF-8 string of at most 128 bytes; anything else counts as absent.
- The first configured header (in order) with a valid value wins.
- Under ``--routing-key-override`` the key may also come from the body ``rid``; a valid header wins
  over ``rid`` (1.13.0), and one ``_r<n>`` then one ``_t<n>`` lineage suffix is stripped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ROUTING_KEY_MAX_BYTES = 128
DEFAULT_ROUTING_KEY_HEADER = "x-smg-routing-key"
_R_SUFFIX = re.compile(r"_r\d+$")
_T_SUFFIX = re.compile(r"_t\d+$")


def valid_key(value: object) -> str | None:
    """The value if it is a usable routing key, else None (never an error)."""
    if type(value) is str and value.isascii():  # the common case: ASCII is valid UTF-8, one byte a character
        return value if 0 < len(value) <= ROUTING_KEY_MAX_BYTES else None
    if not isinstance(value, str) or not value:
        return None
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not valid UTF-8
        return None
    if len(raw) > ROUTING_KEY_MAX_BYTES:
        return None
    return value


def header_key(headers: Mapping[str, str], names: Sequence[str]) -> str | None:
    """The first valid value among the configured headers (names compared lower-case)."""
    for name in names:
        value = headers.get(name) if name.islower() else headers.get(name.lower())
        if value is not None:
            key = valid_key(value)
            if key is not None:
                return key
    return None


def strip_lineage(key: str) -> str:
    """``conv_t2_r1`` -> ``conv``: drop one trailing ``_r<digits>``, then one ``_t<digits>``; keep raw if empty."""
    if "_" not in key:  # nothing to strip (e.g. a uuid hex session id)
        return key
    stripped = _T_SUFFIX.sub("", _R_SUFFIX.sub("", key, count=1), count=1)
    return stripped or key


def sticky_key(headers: Mapping[str, str], body: Mapping[str, Any], names: Sequence[str]) -> tuple[str, str] | None:
    """The override's key and its source (``header`` or ``rid``), stripped of lineage suffixes."""
    key = header_key(headers, names)
    if key is not None:
        return strip_lineage(key), "header"
    rid = valid_key(body.get("rid")) if isinstance(body, Mapping) else None
    if rid is not None:
        return strip_lineage(rid), "rid"
    return None


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                if part["text"]:
                    parts.append(part["text"])
            elif isinstance(part, str) and part:
                parts.append(part)
        return " ".join(parts)
    return ""


def routing_text(endpoint: str, body: Mapping[str, Any], limit: int | None = None) -> str:
    """The text SMG matches in cache_aware and hashes in prefix_hash (``extract_text_for_routing``).

    Chat: every message's text (content, then ``reasoning_content``) joined by single spaces, empty
    parts skipped, roles not included. Completions: ``prompt`` (a list joined by spaces). Generate: ``text``.
    Only computed when a policy reads it (``RouteInput.text`` is lazy). ``limit``: only the first ``limit``
    characters are needed (``routing_text(e, b, n) == routing_text(e, b)[:n]``; chat stops joining early).
    """
    if endpoint == "chat":
        parts: list[str] = []
        add = parts.append
        size = counted = 0
        if limit is not None and limit < 0:  # a slice from the end needs the whole text
            return routing_text(endpoint, body)[:limit]
        messages = body.get("messages")
        if isinstance(messages, list):
            for m in messages:
                if type(m) is not dict and not isinstance(m, Mapping):
                    continue
                c = m.get("content")
                if type(c) is str:  # the common case, inline
                    if c:
                        add(c)
                elif c is not None:
                    t = _content_text(c)
                    if t:
                        add(t)
                r = m.get("reasoning_content")
                if r is not None:
                    t = _content_text(r)
                    if t:
                        add(t)
                if limit is not None and len(parts) > counted:  # stop once the parts hold ``limit`` characters
                    size += sum(map(len, parts[counted:]))
                    counted = len(parts)
                    if size >= limit:
                        break
        return " ".join(parts)[:limit]
    if endpoint == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return prompt[:limit]
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            return " ".join(prompt)[:limit]
        return ""
    text = body.get("text")
    return text[:limit] if isinstance(text, str) else ""


def int_ids(ids: np.ndarray) -> bool:
    """A 1-D integer array of token ids, each in ``[0, 2**32)`` (an in-process caller's ``input_ids``)."""
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        return False
    if ids.size == 0:
        return True
    if ids.size <= 16:  # numpy call overhead exceeds the work on tiny arrays
        return all(0 <= i < 2**32 for i in ids.tolist())
    return bool(ids.min() >= 0) and bool(ids.max() < 2**32)


def routing_tokens(endpoint: str, headers: Mapping[str, str], body: Mapping[str, Any]) -> list[int] | None:
    """Token ids the request carries: a valid ``x-smg-routing-tokens`` header, else generate's ``input_ids``
    (a list of ints, or an in-process caller's 1-D integer array, given back as a list)."""
    raw = headers.get("x-smg-routing-tokens")
    if raw is not None and 0 < len(raw.encode("utf-8", "replace")) <= 4096:
        try:
            ids = [int(p) for p in raw.split(",")]
            if 0 < len(ids) <= 512 and all(0 <= i < 2**32 for i in ids):
                return ids
        except ValueError:
            pass
    if endpoint == "generate":
        ids = body.get("input_ids")
        if isinstance(ids, np.ndarray):
            return ids.tolist() if ids.ndim == 1 and ids.size and ids.dtype.kind in "iu" else None
        if isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            return ids
    return None
