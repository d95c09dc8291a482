"""Seed statistics: seed lists, per-configuration summaries and paired differences with 95 % intervals.

A configuration run under several seeds gives one value of each measure per seed. Its summary is the mean, the
sample standard deviation and the 95 % confidence interval of the mean (Student t, ``n - 1`` degrees of freedom).
Two configurations run under the same seeds are compared *paired by seed*: the interval is that of the mean of the
per-seed differences, which cancels what a seed does to both (its workload, its ring). A difference is *beyond
seed noise* when its interval excludes 0. One seed gives no interval (``ci95`` None, ``beyond_noise`` None).

Pure: rows in, dicts out; no scipy (the t quantile is computed from the t distribution's closed form for integer
degrees of freedom).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# the measures summarized per configuration (the numeric fields of a result row that describe the run)
MEASURES: tuple[str, ...] = (
    "kv_reuse", "oracle_reuse", "eligible_reuse", "stickiness", "prefill_tokens", "ttft_p50", "ttft_p99",
    "ttft_first_p50", "ttft_later_p50", "e2e_p50", "e2e_p99", "makespan", "imbalance", "imbalance_requests",
    "requests", "errors", "retractions", "recomputed_tokens", "decode_stall_seconds", "queue_time_p50",
    "queue_time_p99",
)
CONFIDENCE = 0.95


def parse_seeds(text: str) -> list[int]:
    """``0-9`` -> 0..9, ``0,3,5``, ``0-4,8``: the seeds in the order written, each once; ValueError (one line)
    for anything else."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            first, last = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise ValueError(f"--seeds wants a range or a list such as 0-9, 0,3,5 or 0-4,8; got {text!r}") from None
        if first < 0 or last < first:
            raise ValueError(f"--seeds: {part!r} is not a range of non-negative seeds from low to high")
        seeds += [s for s in range(first, last + 1) if s not in seeds]
    return seeds


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3 and 26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: 2/pi (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= 2 * k / (2 * k + 1) * c2
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for k in range(1, df // 2):
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return s * total


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided critical value of Student's t: P(|T| < q) = ``confidence`` (df 4: 2.776 for 95 %)."""
    if df < 1:
        raise ValueError("the t distribution needs df >= 1")
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, df) < confidence:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided_mass(mid, df) < confidence else (lo, mid)
    return (lo + hi) / 2


def describe(values: Sequence[float]) -> dict[str, Any]:
    """``{"n", "mean", "std", "ci95"}`` of one measure over seeds; ``std`` and ``ci95`` ([low, high]) are None
    for one value."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci95": None}
    std = statistics.stdev(values)
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def beyond_noise(ci95: Sequence[float] | None) -> bool | None:
    """Whether an interval of a difference excludes 0; None without an interval."""
    return None if ci95 is None else bool(ci95[0] > 0 or ci95[1] < 0)


def _numeric(values: Iterable[Any]) -> list[float] | None:
    vals = list(values)
    return [float(v) for v in vals] if vals and all(isinstance(v, int | float) and not isinstance(v, bool)
                                                   for v in vals) else None


def by_configuration(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The rows grouped by configuration (``label``), in first-seen order, each group in row order."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["label"], []).append(r)
    return out


def summarize_configurations(rows: Sequence[Mapping[str, Any]],
                             measures: Sequence[str] = MEASURES) -> list[dict[str, Any]]:
    """One summary per configuration: its ``label``, ``seeds`` and ``describe`` of every measure its rows have."""
    out = []
    for label, group in by_configuration(rows).items():
        stats = {m: describe(vals) for m in measures if (vals := _numeric(r.get(m) for r in group)) is not None}
        out.append({"label": label, "seeds": [r["seed"] for r in group], "measures": stats})
    return out


def paired_difference(rows: Sequence[Mapping[str, Any]], label: str, versus: str,
                      measures: Sequence[str] = MEASURES) -> dict[str, Any]:
    """``label`` minus ``versus``, paired by seed (the seeds both ran): per measure the ``describe`` of the
    differences plus ``beyond_noise``."""
    groups = by_configuration(rows)
    mine = {r["seed"]: r for r in groups[label]}
    ref = {r["seed"]: r for r in groups[versus]}
    seeds = [s for s in mine if s in ref]
    if not seeds:
        raise ValueError(f"{label!r} and {versus!r} share no seed: nothing to pair")
    diffs: dict[str, Any] = {}
    for m in measures:
        a, b = _numeric(mine[s].get(m) for s in seeds), _numeric(ref[s].get(m) for s in seeds)
        if a is not None and b is not None:
            d = describe([x - y for x, y in zip(a, b, strict=True)])
            diffs[m] = {**d, "beyond_noise": beyond_noise(d["ci95"])}
    return {"label": label, "versus": versus, "seeds": seeds, "measures": diffs}
