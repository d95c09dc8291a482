"""The worst worker of a run: its prefix-cache hit rate over virtual time, and the run's makespan against the best.

A KV-thrash spiral (prime-rl #3255: consistent hashing pinned more sessions on one engine than its KV holds; its
hit rate fell from 98 % to 5 % and the step took about 4x longer) shows on one worker only, and only over time: the
run's mean hit rate hides it. Here a run's answered requests (worker, arrival, prompt and cached tokens) are binned
by arrival in fixed virtual-time bins; a bin's hit rate is its cached over its prompt tokens. The worst worker is
the one with the lowest hit rate over the whole run. Pure functions: ``compare --worst-worker`` prints them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple


class RequestHit(NamedTuple):
    """What one answered request contributes to its worker's hit rate."""

    worker: str
    arrival: float  # virtual seconds
    prompt_tokens: int
    cached_tokens: int


def hit_series(hits: Iterable[RequestHit], bin_seconds: float) -> dict[str, list[float | None]]:
    """Per worker, the hit rate of the requests arriving in each bin ``[k * bin_seconds, (k + 1) * bin_seconds)``,
    from bin 0 to the run's last occupied bin; None where the worker got no prompt tokens in that bin."""
    if bin_seconds <= 0:
        raise ValueError(f"bin_seconds must be > 0, got {bin_seconds}")
    sums: dict[str, dict[int, list[int]]] = {}
    last = -1
    for h in hits:
        k = int(h.arrival // bin_seconds)
        last = max(last, k)
        acc = sums.setdefault(h.worker, {}).setdefault(k, [0, 0])
        acc[0] += h.cached_tokens
        acc[1] += h.prompt_tokens
    return {w: [(by_bin[k][0] / by_bin[k][1]) if k in by_bin and by_bin[k][1] else None for k in range(last + 1)]
            for w, by_bin in sorted(sums.items())}


@dataclass(frozen=True)
class WorstWorker:
    """The worker with the lowest hit rate of a run, and its hit rate per bin (None: no requests there)."""

    worker: str
    hit_rate: float  # over the whole run
    series: tuple[float | None, ...]

    @property
    def first(self) -> float | None:
        """The hit rate of its first bin with requests."""
        return next((x for x in self.series if x is not None), None)

    @property
    def lowest(self) -> float | None:
        """Its lowest bin."""
        return min((x for x in self.series if x is not None), default=None)


def worst_worker(hits: Sequence[RequestHit], bin_seconds: float) -> WorstWorker | None:
    """The worker with the lowest cached / prompt tokens over the run (the first by name on a tie); None without
    prompt tokens."""
    totals: dict[str, list[int]] = {}
    for h in hits:
        acc = totals.setdefault(h.worker, [0, 0])
        acc[0] += h.cached_tokens
        acc[1] += h.prompt_tokens
    rates = {w: c / p for w, (c, p) in totals.items() if p}
    if not rates:
        return None
    worker = min(sorted(rates), key=rates.__getitem__)
    series = hit_series(hits, bin_seconds)[worker]
    return WorstWorker(worker, rates[worker], tuple(series))


def common_bin_seconds(makespans: Iterable[float], bins: int = 10) -> float:
    """One bin width for every run compared: the longest makespan over ``bins``, rounded up to 1, 2 or 5 times a
    power of ten (so the longest run has at most ``bins`` bins and shorter runs fewer)."""
    longest = max(makespans, default=0.0)
    if longest <= 0:
        return 1.0
    raw = longest / bins
    step = 10.0 ** math.floor(math.log10(raw))
    return next(m * step for m in (1, 2, 5, 10) if m * step >= raw)


def makespan_versus_best(rows: Sequence[Mapping[str, Any]]) -> list[tuple[float, str]]:
    """Per row, its makespan over the shortest makespan of the rows of its seed, and that row's label."""
    best: dict[Any, Mapping[str, Any]] = {}
    for r in rows:
        b = best.get(r["seed"])
        if b is None or r["makespan"] < b["makespan"]:
            best[r["seed"]] = r
    return [(r["makespan"] / best[r["seed"]]["makespan"] if best[r["seed"]]["makespan"] > 0 else math.nan,
             best[r["seed"]]["label"]) for r in rows]


def format_series(series: Sequence[float | None]) -> str:
    """Hit rates as whole percents, ``-`` for empty bins: ``98 97 60 5 -``."""
    return " ".join("-" if x is None else f"{100 * x:.0f}" for x in series)


def worst_worker_lines(rows: Sequence[Mapping[str, Any]], hits: Sequence[Sequence[RequestHit]],
                       bin_seconds: float) -> list[str]:
    """One line per row (``hits[i]`` are row i's requests): the worst worker, its hit rate per bin in percent,
    and the makespan against the best row of the same seed."""
    several_seeds = len({r["seed"] for r in rows}) > 1
    out = []
    for r, row_hits, (ratio, best) in zip(rows, hits, makespan_versus_best(rows), strict=True):
        name = r["label"] + (f" seed {r['seed']}" if several_seeds else "")
        ww = worst_worker(row_hits, bin_seconds)
        worst = ("no requests" if ww is None else
                 f"worst {ww.worker} hit {100 * ww.hit_rate:.0f}% [{format_series(ww.series)}]")
        versus = "the best" if r["label"] == best else f"{ratio:.2f}x {best}"
        out.append(f"{name}: {worst}; makespan {r['makespan']:.1f}s = {versus}")
    return out
