"""The retry loop's decisions, taken by ``request_path`` (the gateway's one request loop, which the HTTP app and
the in-process drivers all run, so they count and retry alike).

Per attempt: ``settle_attempt`` does the circuit-breaker accounting and says whether the failure may be
retried; the caller adds the worker to the request's exclude list; ``retry_next`` then decides whether to try
again, counting ``smg_router_retries_total`` or, after the last allowed attempt, ``..._retries_exhausted_total``.
No I/O; ``now`` is the caller's clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mock_gateway.upstream import BREAKER_NEUTRAL, RETRYABLE_STATUSES

if TYPE_CHECKING:
    from mock_gateway.core import GatewayCore
    from mock_gateway.metrics import GatewayMetrics


PD_WORKER_TYPES = ("prefill", "decode")  # a PD attempt counts its retries and errors once per leg, as SMG's PD router


def settle_attempt(core: GatewayCore, url: str, status: int | None, now: float) -> bool:
    """Breaker accounting of one finished attempt on ``url`` (``status`` None: the connection failed);
    True if it may be retried.

    A failed connection and ``RETRYABLE_STATUSES`` are retryable; all of them count as breaker failures except
    ``BREAKER_NEUTRAL`` (429). Any other status is final: a breaker success below 500, a failure from 500 on.
    """
    if status is None:
        core.record_outcome(url, False, now)
        errors = core.metrics.worker_errors
        errors.labels(worker_type="regular", connection_mode="http", error_type="backend_error").inc()
        return True
    if status in RETRYABLE_STATUSES:
        if status not in BREAKER_NEUTRAL:
            core.record_outcome(url, False, now)
        return True
    core.record_outcome(url, status < 500, now)
    return False


def settle_pair(core: GatewayCore, urls: tuple[str, str], status: int, now: float) -> bool:
    """PD: both legs' breakers take the pair's answer status (SMG records the relayed status on both workers, a
    transport error being its 502), and a 5xx counts one worker error per leg; True if it may be retried."""
    retryable = False
    for url in urls:
        retryable = settle_attempt(core, url, status, now)
    if status >= 500:
        error_type = "timeout" if status == 504 else "backend_error"
        for worker_type in PD_WORKER_TYPES:
            core.metrics.worker_errors.labels(worker_type=worker_type, connection_mode="http",
                                              error_type=error_type).inc()
    return retryable


def retry_next(metrics: GatewayMetrics, endpoint: str, attempt: int, max_attempts: int, retryable: bool,
               worker_types: tuple[str, ...] = ("regular",)) -> bool:
    """After failed attempt ``attempt`` (0-based): whether to try again. Counts the retry, or the exhaustion when
    a retryable failure is still failing after the last allowed attempt (only if retries are enabled), once per
    worker type (PD: ``PD_WORKER_TYPES``)."""
    if not retryable:
        return False
    if attempt + 1 >= max_attempts:
        if max_attempts > 1:
            for worker_type in worker_types:
                metrics.retries_exhausted.labels(worker_type=worker_type, endpoint=endpoint).inc()
        return False
    for worker_type in worker_types:
        metrics.retries.labels(worker_type=worker_type, endpoint=endpoint).inc()
    return True
