"""``smg-testbed check``: fail a CI job when a results file regresses against a stored baseline.

Examples::

    smg-testbed check --baseline baseline/results.json results/compare-default/results.json
    smg-testbed check --baseline baseline/sweep.json results/sweep-default/sweep.json --tolerance kv_reuse=0.005
    smg-testbed check --baseline baseline/results.json --scenario default --tolerance makespan=2%

The second file is a ``results.json`` (``run``, ``compare``, ``replay``) or a ``sweep.json``; with ``--scenario``
instead, the baseline's configurations are run now on that scenario (each row's seed, gateway flags, routing key
and, for a sweep, its workers, KV capacity and sessions) and the fresh rows are checked. Rows are matched by
configuration: policy, assignment mode, routing key, gateway flags, seed and scenario content hash.

Prints a table of the fields that changed and exits 1 when a row regressed beyond its tolerance or a baseline
configuration is missing, 0 otherwise, 2 when the files cannot be compared (unreadable, another scenario or
results_version). Default tolerances: kv_reuse 0.01 lower, ttft_p99 10% higher, makespan 5% higher, errors 0
more; ``--tolerance FIELD=ABS`` or ``FIELD=PCT%`` sets one (repeatable; any field the table below can name).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sim.baseline import (
    BaselineMismatch,
    Comparison,
    ConfigKey,
    ResultsFile,
    compare_results,
    load_results,
    parse_tolerance,
    row_key,
    tolerances_with,
)
from sim.commands.common import console_for, default_jobs, fail, run_many
from sim.results import RESULTS_VERSION, scenario_hash
from sim.runner import public
from sim.transports.pool import Setup
from sim.workload.scenario import Scenario, ScenarioError, load_scenario


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smg-testbed check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, metavar="BASELINE.json", help="the stored results.json or sweep.json")
    p.add_argument("current", nargs="?", default=None, metavar="CURRENT.json",
                   help="the results to check (or --scenario to run them now)")
    p.add_argument("--scenario", default=None, help="run the baseline's configurations on this scenario now")
    p.add_argument("--transport", choices=("direct", "http"), default="direct",
                   help="with --scenario: direct (default) or real servers on loopback")
    p.add_argument("--jobs", type=int, default=None, help="with --scenario: runs in parallel processes")
    p.add_argument("--tolerance", action="append", default=[], metavar="FIELD=ABS|PCT%",
                   help="how far FIELD may move the wrong way, e.g. kv_reuse=0.02 or ttft_p99=15%% (repeatable)")
    return p


def baseline_setups(baseline: ResultsFile, scenario: Scenario) -> list[Setup]:
    """The baseline's configurations on ``scenario``: each row's seed, flags, key and (a sweep's) grid point."""
    setups = []
    for row in baseline.rows.values():
        s = scenario.replace(seed=row["seed"])
        if "workers_count" in row:  # a sweep row: its own grid point
            s = s.replace(workers=row["workers_count"], kv_capacity_tokens=row["kv_capacity_tokens"],
                          sessions=row["sessions_configured"])
        setups.append(Setup(s, tuple(row["gateway_args"]), bool(row["routing_key"]), row["seed"], row["label"],
                            {"policy": row["policy"], "assignment_mode": row["assignment_mode"]}))
    return setups


def run_current(baseline: ResultsFile, scenario: Scenario, transport: str, jobs: int,
                console: Console) -> ResultsFile:
    setups = baseline_setups(baseline, scenario)
    rows = run_many(setups, transport, jobs, console)
    per_row_hash = any(r.get("scenario_hash") for r in baseline.rows.values())
    file_hash = scenario_hash(setups[0].scenario.to_dict())
    current: dict[ConfigKey, dict[str, Any]] = {}
    for setup, row in zip(setups, rows, strict=True):
        out = public(row)
        if per_row_hash:
            out["scenario_hash"] = scenario_hash(setup.scenario.to_dict())
        current[row_key(out, file_hash)] = out
    return ResultsFile(f"scenario {scenario.name} (run now)", RESULTS_VERSION, file_hash, current)


def _value(v: float) -> str:
    return f"{v:.0f}" if v == int(v) and abs(v) >= 1 else f"{v:.4g}"


def changes_table(comparison: Comparison) -> Table:
    t = Table(title="changes against the baseline")
    for c, justify in (("configuration", "left"), ("field", "left"), ("baseline", "right"), ("current", "right"),
                       ("change", "right"), ("tolerance", "right"), ("verdict", "left")):
        t.add_column(c, justify=justify)  # type: ignore[arg-type]
    for ch in comparison.changes:
        pct = f" ({ch.delta / ch.baseline:+.1%})" if ch.baseline else ""
        verdict = "[red]REGRESSED[/red]" if ch.regressed else "ok"
        t.add_row(escape(str(ch.config)), ch.field, _value(ch.baseline), _value(ch.current),
                  f"{ch.delta:+.4g}{pct}", str(ch.tolerance), verdict)
    return t


def report(comparison: Comparison, console: Console) -> None:
    if comparison.changes:
        console.print(changes_table(comparison))
    for key in comparison.missing:
        console.print(f"[red]missing:[/red] {escape(str(key))} is in the baseline, not in the current results")
    for key in comparison.extra:
        console.print(f"[yellow]extra:[/yellow] {escape(str(key))} is not in the baseline (not checked)")
    n = len(comparison.regressions)
    verdict = (f"[red]{n} regression(s)[/red]" if n else
               "[red]baseline configurations missing[/red]" if comparison.missing else "[green]no regression[/green]")
    console.print(f"check: {comparison.matched} configurations matched, {len(comparison.changes)} field(s) changed; "
                  f"{verdict}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if (args.current is None) == (args.scenario is None):
        return fail("check wants CURRENT.json or --scenario (one of them)")
    if args.jobs is not None and args.jobs < 1:
        return fail("--jobs must be >= 1")
    console = console_for()
    try:
        tolerances = tolerances_with([parse_tolerance(t) for t in args.tolerance])
        baseline = load_results(args.baseline)
        if args.current is not None:
            current = load_results(args.current)
        else:
            if not baseline.rows:
                return fail(f"{args.baseline}: no rows to run")
            current = run_current(baseline, load_scenario(args.scenario), args.transport,
                                  args.jobs or default_jobs(), console)
        comparison = compare_results(baseline, current, tolerances)
    except (BaselineMismatch, ScenarioError, ValueError, KeyError) as e:
        return fail(str(e) if not isinstance(e, KeyError) else f"{args.baseline}: a row lacks {e}")
    report(comparison, console)
    return 1 if comparison.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
