"""A mock worker's injected faults: the knobs (``Faults``, ``POST /admin/faults``) and the per-request draws.

Each worker draws its faults from its own RNG, seeded from ``(pool seed, worker name)``, two draws per
inference request that passed validation whatever the rates, so a fault run is deterministic for a seed and a
rate change never shifts the draws of later requests.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sim.worker.reply import error_body
from sim.worker.request import BadRequest

ROLLBACK_FAILED_MESSAGE = "rollback failed: injected prefix-cache state mismatch (mock worker fault)"
INJECTED_FAILURE_MESSAGE = "injected failure (mock worker fault)"


@dataclass
class Faults:
    """Fault knobs. Rates are shares of inference requests in [0, 1]; ``slowdown`` >= 1 multiplies
    every modelled duration from now on (a runtime knob on top of ``WorkerConfig.slowdown``)."""

    fail_rate: float = 0.0  # answer 500 without serving
    rollback_fail_rate: float = 0.0  # answer 400 "rollback failed" to requests that carry input_ids
    slowdown: float = 1.0
    unhealthy: bool = False  # /health answers 503
    exit: bool = False  # the adapter stops serving this worker

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def updated_faults(faults: Faults, body: Any) -> Faults:
    """``faults`` with the partial update ``body`` applied (a new object), else ``BadRequest``: all or nothing."""
    if not isinstance(body, Mapping):
        raise BadRequest("body must be a JSON object")
    new = dataclasses.replace(faults)
    known = {f.name for f in dataclasses.fields(Faults)}
    for key, value in body.items():
        if key not in known:
            raise BadRequest(f"unknown fault {key!r}; known: {sorted(known)}", param=key)
        if key in ("fail_rate", "rollback_fail_rate"):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise BadRequest(f"{key} must be a number in [0, 1]", param=key)
            value = float(value)
        elif key == "slowdown":
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 1.0:
                raise BadRequest("slowdown must be a finite number >= 1", param=key)
            value = float(value)
        elif not isinstance(value, bool):
            raise BadRequest(f"{key} must be a boolean", param=key)
        setattr(new, key, value)
    return new


class FaultDraws:
    """One worker's fault RNG (see the module docstring)."""

    def __init__(self, seed: int, worker: str) -> None:
        self._rng = random.Random(f"{seed}/{worker}/faults")

    def injected(self, faults: Faults, has_input_ids: bool) -> tuple[int, dict[str, Any]] | None:
        """The injected failure (status, error body) for the next request, or None: serve it."""
        u_fail, u_rollback = self._rng.random(), self._rng.random()
        if u_fail < faults.fail_rate:
            return 500, error_body(INJECTED_FAILURE_MESSAGE, 500)
        if has_input_ids and u_rollback < faults.rollback_fail_rate:
            return 400, error_body(ROLLBACK_FAILED_MESSAGE, 400, "input_ids")
        return None
