"""The expected-wait selector shared by cache_aware, least_load and power_of_two (SMG ``least_load.rs``).

Per candidate with a fresh load report::

    score = (queued + running_est + since_poll_tokens) / drain + lambda * k / (1 - k)

``queued`` = waiting uncached tokens (or waiting requests x mean prefill), ``running_est`` = running
requests x mean prefill, ``drain`` = reported generation throughput (or the default), ``k`` = KV
usage clamped to [0, 0.999]. A candidate without a fresh report scores the best reporting peer plus
its in-flight count x mean prefill / default throughput; with no reports at all (a dark fleet) the
score is the gateway's in-flight count. Ties within 1e-6 are broken uniformly at random. Each
dispatch credits its token count to the winner until the next load report.

A report is "fresh" while it is younger than three load-monitor intervals (the source's exact rule
was not found; see the report).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from mock_gateway.config import GatewayConfig
from mock_gateway.workers import Worker

TIE_EPS = 1e-6


def is_fresh(w: Worker, cfg: GatewayConfig, now: float) -> bool:
    return w.report is not None and now - w.report.at <= 3 * max(cfg.load_monitor_interval, 1e-9)


def reported_score(w: Worker, cfg: GatewayConfig) -> float:
    r = w.report
    assert r is not None
    pbar = cfg.least_load_mean_prefill_tokens
    queued = r.waiting_uncached_tokens if r.waiting_uncached_tokens > 0 else r.waiting * pbar
    running_est = r.running * pbar
    drain = r.gen_throughput if r.gen_throughput > 0 else cfg.least_load_default_throughput
    k = min(max(r.token_usage, 0.0), 0.999)
    return (queued + running_est + w.since_poll_tokens()) / drain + cfg.least_load_kv_pressure_weight * k / (1 - k)


def scores(cands: Sequence[Worker], cfg: GatewayConfig, now: float) -> list[float]:
    """Expected-wait score of every candidate (lower is better)."""
    horizon = 3 * max(cfg.load_monitor_interval, 1e-9)  # is_fresh, inlined
    rep: list[float | None] = [
        reported_score(w, cfg) if (r := w.report) is not None and now - r.at <= horizon else None for w in cands
    ]
    fresh = [s for s in rep if s is not None]
    if not fresh:
        return [float(w.load) for w in cands]
    best = min(fresh)
    if len(fresh) == len(rep):
        return fresh
    per_req = cfg.least_load_mean_prefill_tokens / cfg.least_load_default_throughput
    return [s if s is not None else best + w.load * per_req for w, s in zip(cands, rep, strict=True)]


def argmin_random(values: Sequence[float], rng: random.Random) -> int:
    """Index of the minimum; ties within 1e-6 broken uniformly (reservoir sampling)."""
    best_i, best, seen = 0, values[0], 1
    for i in range(1, len(values)):
        v = values[i]
        if v < best - TIE_EPS:
            best_i, best, seen = i, v, 1
        elif abs(v - best) <= TIE_EPS:
            seen += 1
            if rng.randrange(seen) == 0:
                best_i = i
    return best_i


def veto_waiting(cands: Sequence[Worker], cfg: GatewayConfig) -> list[Worker]:
    """``--least-load-max-waiting-requests``: drop candidates whose queue (plus credited dispatches) is full."""
    cap = cfg.least_load_max_waiting_requests
    if cap <= 0:
        return list(cands)
    kept = [w for w in cands if (w.report.waiting if w.report else 0) + len(w.since_poll) < cap]
    return kept or list(cands)


def credit(w: Worker, tokens: int, now: float) -> None:
    w.credit(now, tokens)


def select(cands: Sequence[Worker], cfg: GatewayConfig, rng: random.Random, now: float, tokens: int) -> Worker:
    """Pick the candidate with the lowest expected wait and credit ``tokens`` to it."""
    cands = veto_waiting(cands, cfg)
    if len(cands) == 1:
        chosen = cands[0]
    else:
        chosen = cands[argmin_random(scores(cands, cfg, now), rng)]
    credit(chosen, tokens, now)
    return chosen
