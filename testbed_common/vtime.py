"""The virtual-time wire protocol shared by the simulator, the session server, the gateway and the workers.

In virtual time (DESIGN.md) requests are issued one at a time in nondecreasing virtual time, and
the time travels with each request:

- Request: the JSON body of an inference request (``/v1/chat/completions``, ``/v1/completions``,
  ``/generate``) carries ``"sim_time": <virtual seconds>``. Unknown body fields pass through the
  session server and through SMG unchanged, so the field reaches the worker on every path.
  Absent means live time: the worker reads its own clock and really waits.
- Response: the worker answers at once and reports its modelled timeline in headers (readable by a
  gateway even for streams) and, for JSON answers, in a top-level ``"sim"`` object:

  ========================  ==========================  =============================================
  header                    ``sim`` field               meaning
  ========================  ==========================  =============================================
  ``x-sim-arrival``         ``arrival``                 virtual time the request reached the worker
  ``x-sim-start``           ``start``                   prefill started (after queueing, KV admission)
  ``x-sim-first-token``     ``first_token``             first output token (TTFT = this - arrival)
  ``x-sim-finish``          ``finish``                  last output token; KV released, cache updated
  ``x-sim-worker``          ``worker``                  the worker's name (``w0``, ``w1``...)
  (none)                    ``cached_tokens``           prompt tokens found in the radix cache
  (none)                    ``evicted_tokens``          tokens evicted to admit this request
  ========================  ==========================  =============================================

- Load polls: ``GET /v1/loads?sim_time=<t>`` (and ``/metrics?sim_time=<t>``) answer the worker's load
  at virtual time ``t``; without the parameter the worker uses its own clock.
- Output length: in the simulator a chat request's ``max_tokens`` is the exact number of output
  tokens (as with ``ignore_eos``), the last one being ``<|im_end|>``; the text and token ids of the
  answer depend only on the worker pool's seed and the prompt ids (``testbed_common.tokenizer.synth_answer``),
  never on which worker answers, so every policy sees the same conversations.

A gateway in virtual time sets its clock to the largest ``sim_time`` it has seen and keeps each
request counted in flight until that clock passes the request's ``x-sim-finish``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SIM_TIME_FIELD = "sim_time"
SIM_RESPONSE_FIELD = "sim"
HEADER_ARRIVAL = "x-sim-arrival"
HEADER_START = "x-sim-start"
HEADER_FIRST_TOKEN = "x-sim-first-token"
HEADER_FINISH = "x-sim-finish"
HEADER_WORKER = "x-sim-worker"
SIM_TIME_QUERY = "sim_time"


def request_time(body: Mapping[str, Any] | None) -> float | None:
    """The virtual time a request body carries, or None for live time (and for unusable values)."""
    if not isinstance(body, Mapping):
        return None
    value = body.get(SIM_TIME_FIELD)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        return None
    return value


def finish_time(headers: Mapping[str, str]) -> float | None:
    """The virtual finish time a worker reported in its response headers, if any."""
    raw = headers.get(HEADER_FINISH)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None
