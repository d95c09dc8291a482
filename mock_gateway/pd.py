"""PD mode's dispatch rules (SMG 1.13.0's HTTP PD router, ``routers/http/pd_router.rs``), pure and shared by the
gateway's drivers (``app.Gateway``, ``sim.transports.direct.DirectGateway``).

Both legs are sent at once, each body with the same bootstrap fields (``leg_body``). The client gets the decode's
answer, or SMG's error when a leg failed (``pair_failure``: a transport error on either leg is 502, a decode non-2xx
and then a prefill non-2xx keep their status under SMG's own error body). An answered pair's two durations
(``PdTimes``) feed ``smg_pd_prefill_duration_seconds`` and ``smg_pd_ttft_seconds``; in virtual time they are read
off the workers' timelines (``virtual_times``), in live time off the driver's clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mock_gateway.metrics import GatewayMetrics
from mock_gateway.upstream import error_body

BACKEND_PD = "pd"  # metrics label backend_type
RUNTIME = "sglang"  # metrics label runtime: the mock fronts SGLang workers
TRANSPORT_ERROR_CODE = "PD disaggregation request failed"  # SMG's code (sic) of a leg's transport error
_LEG_ERROR = {400: "bad_request", 404: "not_found", 500: "internal_error", 502: "bad_gateway", 503: "unavailable"}


@dataclass(frozen=True, slots=True)
class PdTimes:
    """Seconds from the pair's dispatch: to the end of the prefill's response, and to the decode's response head."""

    prefill: float
    ttft: float

    def observe(self, metrics: GatewayMetrics, model: str) -> None:
        metrics.pd_prefill_duration.labels(BACKEND_PD, model, RUNTIME).observe(self.prefill)
        metrics.pd_ttft.labels(BACKEND_PD, model, RUNTIME).observe(self.ttft)


def leg_body(payload: Mapping[str, Any], bootstrap: Mapping[str, Any]) -> dict[str, Any]:
    """A leg's body: the request as forwarded with the bootstrap fields set (they replace any the client sent)."""
    return {**payload, **bootstrap}


def _error_type(status: int) -> str:
    return "server_error" if status >= 500 else "invalid_request_error"


def pair_failure(prefill: int | None, decode: int | None, detail: str = "") -> tuple[int, dict[str, Any]] | None:
    """SMG's answer to a pair with a failed leg (status None: that leg's connection failed), else None.

    A transport error cancels both legs: 502 ``PD disaggregation request failed``. Then the decode's status is
    checked (a non-2xx keeps its status under ``decode_<kind>``; one SMG does not map is 500 ``decode_error``), then
    the prefill's (``prefill_<kind>``)."""
    if prefill is None or decode is None:
        return 502, error_body(TRANSPORT_ERROR_CODE, f"Transport error: {detail}", type_="server_error")
    for leg, status in (("decode", decode), ("prefill", prefill)):
        if not 200 <= status < 300:
            kind = _LEG_ERROR.get(status)
            out = status if kind else 500
            message = f"Prefill server error ({status}): {detail}" if leg == "prefill" else detail
            return out, error_body(f"{leg}_{kind or 'error'}", message, type_=_error_type(out))
    return None


def virtual_times(dispatch: float, prefill_finish: float | None, decode_first_token: float | None,
                  decode_finish: float | None, stream: bool) -> PdTimes | None:
    """An answered pair's ``PdTimes`` on the virtual clock: the prefill's answer ends at its finish (the transfer's
    end); the decode's response head is its first token for a stream, its finish otherwise (a JSON answer's head
    comes with its body). None if a worker reported no timeline."""
    head = decode_first_token if stream else decode_finish
    if prefill_finish is None or head is None:
        return None
    return PdTimes(max(prefill_finish - dispatch, 0.0), max(head - dispatch, 0.0))
