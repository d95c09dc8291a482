"""``smg-testbed validate-profile PROFILE --against FILE``: a profile's predicted vs measured TTFT and TPOT.

FILE is a CSV with the header ``input_tokens,output_tokens,concurrency,requests,ttft_mean_ms,tpot_mean_ms``, one
measured benchmark run per row (``input_tokens`` and ``output_tokens`` the mean lengths). Each row's request mix is
replayed through one simulated worker, the iteration-level engine (``sim.engine.scheduler.IterationEngine``) with
the profile's latency model, scheduler settings and KV capacity, in a closed loop: ``concurrency`` clients, each
sending its next request when its previous one finishes, ``requests`` in total. Every request has the row's mean
lengths and a prompt of its own, so nothing is served from the cache. The profile's per-request overhead is added
to each TTFT (it is not put into the engine's timeline). TPOT is ``(finish - first token) / (output - 1)``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.commands.common import fail
from sim.engine.scheduler import IterationEngine
from sim.engine.types import WorkerConfig
from sim.profiles.catalog import load_profile
from sim.profiles.profile import Profile

HEADER = ("input_tokens", "output_tokens", "concurrency", "requests", "ttft_mean_ms", "tpot_mean_ms")


@dataclass(frozen=True)
class MeasuredRun:
    """One CSV row: a benchmark's request mix and its measured means (milliseconds)."""

    input_tokens: int
    output_tokens: int
    concurrency: int
    requests: int
    ttft_mean_ms: float
    tpot_mean_ms: float


@dataclass(frozen=True)
class Prediction:
    """The simulated worker's mean TTFT (with the request overhead) and mean TPOT, milliseconds."""

    ttft_mean_ms: float
    tpot_mean_ms: float


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: not a finite number: {text!r}")
    return value


def parse_runs(text: str, origin: str) -> list[MeasuredRun]:
    """The CSV's rows; ValueError (one line, naming ``origin`` and the row) for a wrong header, a bad value or
    no row. Lengths may be means (rounded to whole tokens); counts must be whole numbers."""
    rows = [r for r in csv.reader(text.splitlines()) if any(cell.strip() for cell in r)]
    if not rows:
        raise ValueError(f"{origin}: empty (expected the header {','.join(HEADER)} and one row per measured run)")
    if tuple(cell.strip() for cell in rows[0]) != HEADER:
        raise ValueError(f"{origin}: the header must be exactly {','.join(HEADER)}, got {','.join(rows[0])}")
    if len(rows) == 1:
        raise ValueError(f"{origin}: no measured run below the header")
    runs = []
    for number, row in enumerate(rows[1:], 2):
        where = f"{origin}:{number}"
        if len(row) != len(HEADER):
            raise ValueError(f"{where}: {len(row)} values, expected {len(HEADER)}")
        values = {k: _number(v.strip(), f"{where}: {k}") for k, v in zip(HEADER, row, strict=True)}
        for k in ("concurrency", "requests"):
            if values[k] != int(values[k]) or values[k] < 1:
                raise ValueError(f"{where}: {k} must be a whole number >= 1, got {row[HEADER.index(k)].strip()}")
        lengths = {k: round(values[k]) for k in ("input_tokens", "output_tokens")}
        if lengths["input_tokens"] < 1 or lengths["output_tokens"] < 2:
            raise ValueError(f"{where}: input_tokens must be >= 1 and output_tokens >= 2 (TPOT needs two tokens)")
        for k in ("ttft_mean_ms", "tpot_mean_ms"):
            if values[k] <= 0:
                raise ValueError(f"{where}: {k} must be > 0, got {row[HEADER.index(k)].strip()}")
        runs.append(MeasuredRun(lengths["input_tokens"], lengths["output_tokens"], int(values["concurrency"]),
                                int(values["requests"]), values["ttft_mean_ms"], values["tpot_mean_ms"]))
    return runs


def predict(profile: Profile, run: MeasuredRun) -> Prediction:
    """``run``'s request mix through one simulated worker under ``profile`` (closed loop, nothing cached)."""
    engine = IterationEngine(WorkerConfig(name=profile.name, kv_capacity_tokens=profile.kv_capacity_tokens,
                                          latency=profile.latency_model(), scheduler=profile.scheduler_config()))
    per_request = run.input_tokens + run.output_tokens
    sent = 0

    def send(now: float) -> None:
        nonlocal sent
        start = sent * per_request  # token ids no other request uses: a distinct prompt, no radix match
        ids = np.arange(start, start + per_request, dtype=np.int64)
        engine.submit(now, ids[: run.input_tokens], ids[run.input_tokens:])
        sent += 1

    for _ in range(min(run.concurrency, run.requests)):
        send(0.0)
    ttfts, tpots = [], []
    while len(ttfts) < run.requests:
        now = engine.next_event_time()
        for done in engine.advance(now):
            t = done.timing
            ttfts.append(t.ttft + profile.request_overhead)
            tpots.append((t.finish - t.first_token) / (t.output_tokens - 1))
            if sent < run.requests:
                send(t.finish)
    return Prediction(1000 * sum(ttfts) / len(ttfts), 1000 * sum(tpots) / len(tpots))


def relative_error(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smg-testbed validate-profile",
        description="Replay measured benchmark runs through one simulated worker under PROFILE and print predicted "
                    "vs measured mean TTFT and TPOT with relative errors; the last line is "
                    "'ttft_error=X tpot_error=Y' (mean absolute relative errors). Closed loop at each row's "
                    "concurrency, every prompt distinct (nothing cached), the profile's request overhead added "
                    "to TTFT.")
    p.add_argument("profile", metavar="PROFILE", help="a shipped profile name (smg-testbed profiles) or a TOML path")
    p.add_argument("--against", required=True, metavar="FILE",
                   help=f"CSV with the header {','.join(HEADER)}, one measured run per row")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        profile = load_profile(args.profile)
        try:
            text = Path(args.against).read_text()
        except OSError as e:
            raise ValueError(f"cannot read {args.against}: {e.strerror}") from e
        runs = parse_runs(text, args.against)
        predictions = [predict(profile, run) for run in runs]
    except ValueError as e:  # ProfileError, a bad CSV, a request longer than the KV pool
        return fail(str(e))
    print(f"{profile.name} against {args.against} (one worker, closed loop, no cache hits, TTFT includes "
          f"{profile.request_overhead * 1000:g} ms request overhead)")
    print(f"{'input':>7} {'output':>7} {'conc':>5} {'reqs':>6}  {'TTFT pred ms':>12} {'meas ms':>9} {'error':>7}  "
          f"{'TPOT pred ms':>12} {'meas ms':>9} {'error':>7}")
    ttft_errors, tpot_errors = [], []
    for run, pred in zip(runs, predictions, strict=True):
        ttft_errors.append(relative_error(pred.ttft_mean_ms, run.ttft_mean_ms))
        tpot_errors.append(relative_error(pred.tpot_mean_ms, run.tpot_mean_ms))
        print(f"{run.input_tokens:>7} {run.output_tokens:>7} {run.concurrency:>5} {run.requests:>6}  "
              f"{pred.ttft_mean_ms:>12.2f} {run.ttft_mean_ms:>9.2f} {ttft_errors[-1]:>+7.1%}  "
              f"{pred.tpot_mean_ms:>12.3f} {run.tpot_mean_ms:>9.3f} {tpot_errors[-1]:>+7.1%}")
    ttft_error = sum(abs(e) for e in ttft_errors) / len(ttft_errors)
    tpot_error = sum(abs(e) for e in tpot_errors) / len(tpot_errors)
    print(f"ttft_error={ttft_error:.3f} tpot_error={tpot_error:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
