"""``smg-testbed calibrate``: fit a profile's latency coefficients to SGLang's own measurements (sim.calibration).

The fit (``sim.calibration.fit.fit_latency``) gives each of ``LatencyModel``'s six coefficients with one standard
error, or names it unconstrained; an unconstrained coefficient, and everything a fit does not touch (model, GPU, TP,
KV capacity, request overhead, scheduler settings), is taken from ``--base``. The written profile's provenance
records the inputs, the date, the method and the residuals.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from sim.calibration.fit import Estimate, LatencyFit, Unconstrained, fit_latency
from sim.calibration.points import Measurements
from sim.calibration.sources import parse_bench_one_batch, parse_bench_serving, parse_worker_log
from sim.commands.common import fail
from sim.profiles.catalog import load_profile
from sim.profiles.profile import BASIS_TAGS, LATENCY_KEYS, Profile, Provenance

METHOD = ("weighted (relative-error) non-negative least squares of sim.engine.latency's forms "
          "(shared/specs/latency-profiles.md section 5)")
# Profile fields a fit never sets: they always come from the base profile.
FROM_BASE = ("model", "gpu", "tp", "kv_capacity_tokens", "request_overhead", "chunked_prefill_size",
             "max_prefill_tokens")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smg-testbed calibrate",
        description="Fit a profile's six latency coefficients to SGLang's bench_one_batch results, bench_serving "
                    "results and worker logs; write it as a profile TOML. What the data cannot constrain (and "
                    "model, GPU, TP, KV capacity, request overhead, scheduler settings) comes from --base.")
    p.add_argument("--bench-one-batch", nargs="+", default=[], metavar="FILE",
                   help="bench_one_batch --result-filename files (one JSON object per line)")
    p.add_argument("--bench-serving", nargs="+", default=[], metavar="FILE",
                   help="bench_serving --output-file files (one JSON object per line; runs with --max-concurrency)")
    p.add_argument("--worker-log", nargs="+", default=[], metavar="FILE",
                   help="SGLang worker logs (their 'Prefill batch' and 'Decode batch' lines)")
    p.add_argument("--ttfts", default=None, metavar="FILE",
                   help="client TTFTs in seconds, one per line, in the order of the worker logs' single-request "
                        "prefill lines (they time those prefills; without them the logs give decode points only)")
    p.add_argument("--base", required=True, metavar="NAME|PATH",
                   help="the profile to start from: a shipped name (smg-testbed profiles) or a profile TOML")
    p.add_argument("--name", default=None, help="the new profile's name (default: BASE's name + '-calibrated')")
    p.add_argument("--out", required=True, metavar="PROFILE.toml", help="where to write the fitted profile")
    return p


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e.strerror if isinstance(e, OSError) else e}") from e


def _ttfts(path: str) -> list[float]:
    values = []
    for number, line in enumerate(_lines(path), 1):
        if line.strip():
            try:
                values.append(float(line))
            except ValueError:
                raise ValueError(f"{path}:{number}: not a TTFT in seconds: {line.strip()!r}") from None
    return values


def measurements_from_args(args: argparse.Namespace) -> Measurements:
    """Every input file parsed and summed; ValueError (one line) for no input, an unreadable or empty file."""
    if not (args.bench_one_batch or args.bench_serving or args.worker_log):
        raise ValueError("no input: give --bench-one-batch, --bench-serving or --worker-log files")
    if args.ttfts is not None and not args.worker_log:
        raise ValueError("--ttfts times the prefill lines of --worker-log files: give those too")
    total = Measurements()
    for path in args.bench_one_batch:
        total += _parsed(path, parse_bench_one_batch)
    for path in args.bench_serving:
        total += _parsed(path, parse_bench_serving)
    if args.worker_log:
        logs = [line for path in args.worker_log for line in _checked_lines(path)]
        total += parse_worker_log(logs, None if args.ttfts is None else _ttfts(args.ttfts))
    return total


def _checked_lines(path: str) -> list[str]:
    lines = _lines(path)
    if not any(line.strip() for line in lines):
        raise ValueError(f"{path}: the input is empty (no non-blank line)")
    return lines


def _parsed(path: str, parse: Callable[[Iterable[str]], Measurements]) -> Measurements:
    lines = _lines(path)
    try:
        return parse(lines)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def _basis(base: Profile, borrowed: bool) -> str:
    """D (derived from measurements), mixed with the base's tags when some coefficients come from it."""
    tags = {"D"} | (set(base.provenance.basis.split("/")) if borrowed else set())
    return "/".join(t for t in BASIS_TAGS if t in tags)


def calibrated_profile(base: Profile, fit: LatencyFit, name: str, inputs: Sequence[str], date: str) -> Profile:
    """``base`` with the fitted coefficients, and provenance naming the inputs, date, method and residuals."""
    fitted = {k: c.value for k, c in fit.coefficients.items() if isinstance(c, Estimate)}
    borrowed = fit.unconstrained
    derivation = f"smg-testbed calibrate: {METHOD}"
    if borrowed:
        derivation += f"; unconstrained by the data, taken from {base.name}: {', '.join(borrowed)}"
    derivation += f"; from {base.name}: {', '.join(FROM_BASE)}"
    residuals = {
        "prefill_points": float(fit.prefill_residuals.points), "prefill_rms": fit.prefill_residuals.rms,
        "prefill_max_abs": fit.prefill_residuals.max_abs, "decode_points": float(fit.decode_residuals.points),
        "decode_rms": fit.decode_residuals.rms, "decode_max_abs": fit.decode_residuals.max_abs,
    }
    provenance = Provenance(source=", ".join(inputs), date=date, derivation=derivation,
                            basis=_basis(base, bool(borrowed)), residuals=residuals)
    return dataclasses.replace(base, name=name, provenance=provenance, **fitted)


def report(fit: LatencyFit, base: Profile, measurements: Measurements) -> list[str]:
    """The lines ``calibrate`` prints: coefficients, what came from the base, residuals, skipped lines."""
    lines = [f"points: {len(measurements.prefill)} prefill, {len(measurements.decode)} decode; skipped lines: "
             f"{measurements.malformed} malformed, {measurements.foreign} foreign"]
    for key in LATENCY_KEYS:
        c = fit.coefficients[key]
        if isinstance(c, Unconstrained):
            lines.append(f"  {key:<22} unconstrained ({c.reason}): {getattr(base, key):.4g} s from {base.name}")
        else:
            error = "n/a (no degree of freedom)" if c.uncertainty is None else f"{c.uncertainty:.2g}"
            lines.append(f"  {key:<22} {c.value:.4g} s +/- {error}")
    lines.append(f"from {base.name}: {', '.join(FROM_BASE)}")
    for phase, r in (("prefill", fit.prefill_residuals), ("decode", fit.decode_residuals)):
        lines.append(f"residuals ({phase}): {r.points} points, rms {r.rms:.2%}, max {r.max_abs:.2%}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        base = load_profile(args.base)
        measurements = measurements_from_args(args)
        fit = fit_latency(measurements)
    except ValueError as e:  # ProfileError, EmptyInputError and unreadable files are ValueErrors
        return fail(str(e))
    inputs = [*args.bench_one_batch, *args.bench_serving, *args.worker_log, *([args.ttfts] if args.ttfts else [])]
    profile = calibrated_profile(base, fit, args.name or f"{base.name}-calibrated", inputs,
                                 datetime.date.today().isoformat())
    try:
        Path(args.out).write_text(profile.to_toml())
    except OSError as e:
        return fail(f"cannot write {args.out}: {e.strerror}")
    print("\n".join(report(fit, base, measurements)))
    print(f"wrote {args.out} (profile {profile.name}, basis {profile.basis})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
