"""Proxying rules of SMG's HTTP router: header allow-list, body defaults, retryable statuses, backoff."""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mock_gateway.config import GatewayConfig

if TYPE_CHECKING:
    from mock_gateway.core import Decision

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
BREAKER_NEUTRAL = frozenset({429})  # retryable but not a circuit-breaker failure
FORWARDED = frozenset(
    {"authorization", "x-request-id", "x-correlation-id", "traceparent", "tracestate", "x-smg-routing-key"}
)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "date",
        "server",
    }
)
BODY_DEFAULTS: dict[str, dict[str, Any]] = {
    "chat": {"logprobs": False, "stream": False},
    "completions": {"echo": False, "stream": False},
    "generate": {
        "model": "unknown",
        "return_text_in_logprobs": False,
        "stream": False,
        "log_metrics": True,
        "background": False,
        "no_logs": False,
        "return_bytes": False,
        "return_entropy": False,
    },
}
REQUEST_ID_PREFIX = {"chat": "chatcmpl-", "completions": "cmpl-", "generate": "gnt-"}


def utf8_header(value: str) -> str:
    """A header value as UTF-8 text (ASGI servers hand it over latin-1 decoded); invalid UTF-8 keeps lone
    surrogates, which routing-key validation rejects."""
    try:
        return value.encode("latin-1").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value


def forward_headers(headers: Mapping[str, str], api_key: str | None = None) -> dict[str, bytes]:
    """Only SMG's allow-list goes upstream (custom routing-key headers do not); values are passed through
    byte for byte (``headers`` as the server decoded them, latin-1)."""
    out = {
        k: v.encode("latin-1", "replace") for k, v in headers.items() if k in FORWARDED or k.startswith("x-request-id-")
    }
    if "authorization" not in out and api_key:
        out["authorization"] = f"Bearer {api_key}".encode()
    out["content-type"] = b"application/json"
    out["accept"] = b"*/*"
    return out


def with_defaults(endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The body as SMG re-serializes it: unknown fields kept, defaults added."""
    out = dict(body)
    for k, v in BODY_DEFAULTS[endpoint].items():
        out.setdefault(k, v)
    return out


def response_headers(upstream: Mapping[str, str], worker_url: str, request_id: str) -> dict[str, str]:
    out = {k: v for k, v in upstream.items() if k.lower() not in HOP_BY_HOP}
    out["x-smg-routed-worker-id"] = worker_url
    out["x-request-id"] = request_id
    return out


def request_id(headers: Mapping[str, str], endpoint: str) -> str:
    return headers.get("x-request-id") or f"{REQUEST_ID_PREFIX[endpoint]}{uuid.uuid4().hex}"


def error_body(
    code: str, message: str, param: str | None = None, type_: str = "invalid_request_error"
) -> dict[str, Any]:
    """SMG's OpenAI-style error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def refusal(d: Decision) -> tuple[int, dict[str, Any]]:
    """Status and error body for a request no worker was selected for (``d.url`` is None)."""
    if d.status == 503:
        return 503, error_body(d.error_code or "no_available_workers", d.message, type_="server_error")
    return d.status, error_body(d.error_code or "invalid_request", d.message, d.param)


def backoff(attempt: int, cfg: GatewayConfig, rng: random.Random) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): initial x multiplier^(attempt-1), +-jitter, capped."""
    base = cfg.retry_initial_backoff_ms * cfg.retry_backoff_multiplier ** (attempt - 1)
    jitter = 1 + cfg.retry_jitter_factor * (2 * rng.random() - 1)
    return min(base * jitter, cfg.retry_max_backoff_ms) / 1000.0
