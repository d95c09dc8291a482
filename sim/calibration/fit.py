"""Fit ``LatencyModel``'s six coefficients to measured points (shared/specs/latency-profiles.md section 5).

- Decode: non-negative least squares of ``t = decode_floor + decode_per_seq * B + decode_per_ctx_token * ctx``,
  each row divided by its ``t`` so the fit minimises relative error.
- Prefill: ``prefill_floor`` is the median time of the points with at most 64 new tokens (less their attention
  time once ``attention_per_token2`` is fitted: a refinement of the spec's plain median); then the same
  weighted NNLS of ``t = prefill_per_token * new + attention_per_token2 * new * (cached + new / 2)`` on the
  points above the floor (``prefill_per_token * new > prefill_floor``, found by refitting until the set holds).

A coefficient the points cannot separate from the ones before it (its column lies in the span of theirs:
one batch size only leaves ``decode_per_seq`` in the floor; cold prefills of one length leave
``attention_per_token2`` in ``prefill_per_token``) is reported ``Unconstrained`` with the reason, not as a
number, and the fit goes on without it. Uncertainties are one standard error from the weighted residual
variance and ``(A^T A)^-1`` of the weighted design ``A`` (the linearised least-squares covariance; a coefficient
pinned at zero by the constraint gets the unconstrained error); the floor's is the median's large-sample
standard error ``1.2533 * s / sqrt(n)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from .points import DecodePoint, Measurements, PrefillPoint

FLOOR_TOKENS = 64  # the spec's "points with new <= 64": at or below it a prefill costs its floor
_RANK_TOLERANCE = 1e-9  # relative singular value below which a unit-scaled column counts as dependent
_MAX_REFITS = 20


@dataclass(frozen=True)
class Estimate:
    """A fitted coefficient and one standard error (None when the points leave no degree of freedom)."""

    value: float
    uncertainty: float | None


@dataclass(frozen=True)
class Unconstrained:
    """A coefficient the points cannot determine, and why."""

    reason: str


Coefficient = Estimate | Unconstrained


@dataclass(frozen=True)
class Residuals:
    """Relative residuals ``(measured - fitted) / measured`` of the points a phase's fit used."""

    relative: tuple[float, ...]

    @property
    def points(self) -> int:
        return len(self.relative)

    @property
    def rms(self) -> float:
        return math.sqrt(sum(r * r for r in self.relative) / len(self.relative)) if self.relative else 0.0

    @property
    def max_abs(self) -> float:
        return max((abs(r) for r in self.relative), default=0.0)


@dataclass(frozen=True)
class LatencyFit:
    """The fit: ``LatencyModel``'s field names mapped to an estimate or ``Unconstrained``, and the residuals."""

    coefficients: dict[str, Coefficient]
    prefill_residuals: Residuals
    decode_residuals: Residuals

    @property
    def unconstrained(self) -> list[str]:
        return [name for name, c in self.coefficients.items() if isinstance(c, Unconstrained)]


@dataclass(frozen=True)
class _Linear:
    """A weighted NNLS fit's coefficients (by name) and its points' fitted values."""

    coefficients: dict[str, Coefficient]
    fitted: np.ndarray


def _independent_columns(design: np.ndarray) -> list[int]:
    """Columns kept in order, each only if it raises the rank of those kept before it (columns scaled to unit)."""
    norms = np.linalg.norm(design, axis=0)
    kept: list[int] = []
    for j in range(design.shape[1]):
        if norms[j] == 0:
            continue
        trial = design[:, [*kept, j]] / norms[[*kept, j]]
        singular = np.linalg.svd(trial, compute_uv=False)  # min(rows, columns) values, largest first
        if np.count_nonzero(singular > _RANK_TOLERANCE * singular[0]) == len(kept) + 1:
            kept.append(j)
    return kept


def _weighted_nnls(design: np.ndarray, seconds: np.ndarray, names: tuple[str, ...], why: dict[str, str]) -> _Linear:
    """NNLS of ``design @ x = seconds`` in relative error; ``why`` explains each name if it is dropped."""
    weighted = design / seconds[:, None]
    kept = _independent_columns(weighted)
    values, _ = nnls(weighted[:, kept], np.ones(len(seconds)))
    residual = weighted[:, kept] @ values - 1.0
    dof = len(seconds) - len(kept)
    errors: list[float | None] = [None] * len(kept)
    if dof > 0:
        covariance = float(residual @ residual) / dof * np.linalg.inv(weighted[:, kept].T @ weighted[:, kept])
        errors = [float(e) for e in np.sqrt(np.diag(covariance))]
    coefficients: dict[str, Coefficient] = {name: Unconstrained(why[name]) for name in names}
    for j, value, error in zip(kept, values, errors, strict=True):
        coefficients[names[j]] = Estimate(float(value), error)
    return _Linear(coefficients, design[:, kept] @ values)


def _relative(measured: np.ndarray, fitted: np.ndarray) -> tuple[float, ...]:
    return tuple(float(r) for r in (measured - fitted) / measured)


def fit_decode(points: tuple[DecodePoint, ...]) -> tuple[dict[str, Coefficient], Residuals]:
    """Decode coefficients from decode points (all ``Unconstrained`` without points)."""
    names = ("decode_floor", "decode_per_seq", "decode_per_ctx_token")
    if not points:
        return {name: Unconstrained("no decode points") for name in names}, Residuals(())
    design = np.array([[1.0, p.batch, p.context_tokens] for p in points])
    seconds = np.array([p.seconds for p in points])
    why = {
        "decode_floor": "no decode points",
        "decode_per_seq": "one batch size only, or batch size tied to context: folded into decode_floor",
        "decode_per_ctx_token": "context not independent of batch size: folded into the other decode terms",
    }
    linear = _weighted_nnls(design, seconds, names, why)
    return linear.coefficients, Residuals(_relative(seconds, linear.fitted))


def _floor(points: list[PrefillPoint], attention: float = 0.0) -> Coefficient:
    """The median of the small points' times less their attention time (``attention`` per unit of work)."""
    if not points:
        return Unconstrained(f"no prefill points with at most {FLOOR_TOKENS} new tokens")
    seconds = np.array([p.seconds - attention * p.attention_work for p in points])
    error = 1.2533 * float(np.std(seconds, ddof=1)) / math.sqrt(len(seconds)) if len(seconds) > 1 else None
    return Estimate(float(np.median(seconds)), error)


_SLOPES = ("prefill_per_token", "attention_per_token2")
_SLOPE_DROPPED = {
    "prefill_per_token": "no prefill points above the floor",
    "attention_per_token2": "attention work tied to new tokens (cold prefills of one length, no cached prefills): "
    "folded into prefill_per_token",
}


def _fit_slopes(above: list[PrefillPoint], floor: Coefficient) -> dict[str, Coefficient]:
    """The slopes from the points whose linear time clears the floor (refitted until that set holds)."""
    used = above
    for _ in range(_MAX_REFITS):
        design = np.array([[p.total_new_tokens, p.attention_work] for p in used])
        slopes = _weighted_nnls(design, np.array([p.seconds for p in used]), _SLOPES, _SLOPE_DROPPED).coefficients
        slope = slopes["prefill_per_token"]
        if not (isinstance(floor, Estimate) and isinstance(slope, Estimate)):
            break
        clearing = [p for p in above if slope.value * p.total_new_tokens > floor.value]
        if clearing == used or not clearing:
            break
        used = clearing
    return slopes


def _value(coefficient: Coefficient) -> float:
    """An estimate's value; 0 for an unconstrained term (left out of the fitted times)."""
    return coefficient.value if isinstance(coefficient, Estimate) else 0.0


def fit_prefill(points: tuple[PrefillPoint, ...]) -> tuple[dict[str, Coefficient], Residuals]:
    """Prefill coefficients from prefill points: the floor from small ones, the slopes from those above it.

    Once the slopes are known, the floor is re-taken over the small points that are at it
    (``prefill_per_token * new <= prefill_floor``), less their attention time, until that set holds. A true floor
    below the linear cost of the shortest prompt measured comes out as that prompt's time: an upper bound.
    """
    small = [p for p in points if p.total_new_tokens <= FLOOR_TOKENS]
    floor = _floor(small)
    above = [p for p in points if p.total_new_tokens > FLOOR_TOKENS]
    if not above:
        slopes: dict[str, Coefficient] = {
            name: Unconstrained(f"no prefill points above {FLOOR_TOKENS} new tokens") for name in _SLOPES
        }
    else:
        slopes = _fit_slopes(above, floor)
        slope, attention = _value(slopes["prefill_per_token"]), _value(slopes["attention_per_token2"])
        for _ in range(_MAX_REFITS):
            if not isinstance(floor, Estimate):
                break
            at_floor = [p for p in small if slope * p.total_new_tokens <= floor.value]
            refit = _floor(at_floor, attention) if at_floor else floor  # empty only through noise: keep the last
            if refit == floor:
                break
            floor = refit
    # Residuals over every point the constrained terms describe, with the full max(floor, linear) form.
    used = (small if isinstance(floor, Estimate) else []) + (
        above if isinstance(slopes["prefill_per_token"], Estimate) else []
    )
    model = {"prefill_floor": floor, **slopes}
    fitted = np.array(
        [
            max(_value(floor), _value(model["prefill_per_token"]) * p.total_new_tokens)
            + _value(model["attention_per_token2"]) * p.attention_work
            for p in used
        ]
    )
    return model, Residuals(_relative(np.array([p.seconds for p in used]), fitted))


def fit_latency(measurements: Measurements) -> LatencyFit:
    """Every ``LatencyModel`` coefficient the measurements constrain; raises ``ValueError`` without any point."""
    if not measurements.prefill and not measurements.decode:
        raise ValueError(
            f"nothing to fit: no prefill or decode points ({measurements.malformed} malformed and "
            f"{measurements.foreign} foreign lines skipped)"
        )
    prefill, prefill_residuals = fit_prefill(measurements.prefill)
    decode, decode_residuals = fit_decode(measurements.decode)
    return LatencyFit({**prefill, **decode}, prefill_residuals, decode_residuals)
