"""``smg-testbed compare``: KV reuse, latency and balance per gateway policy, with and without the routing key.

Runs the scenario under manual (random, min_load, min_group), consistent_hashing, cache_aware and
round_robin (the no-affinity baseline), each with the session server adding ``X-SMG-Routing-Key``
and with ``--no-routing-key``: 12 runs. Prints a table and writes ``DIR/results.json``, ``DIR/report.md`` and
PNG plots (``reuse.png``, ``ttft.png``, ``workers.png``).

Transport ``direct`` (default) runs the cores in process, in seconds; ``--transport http`` starts the workers,
the mock gateway and the session server as real servers on loopback (the same rows for a seed; ``make demo``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sim.commands.common import add_scenario_args, console_for, default_jobs, fail, run_many, scenario_from_args
from sim.live import add_live_args, live_problem, live_requested, live_setups
from sim.report import findings, table, write_markdown, write_plots, write_results
from sim.runner import COMPARE_POLICIES, make_setup
from sim.workload.scenario import ScenarioError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smg-testbed compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scenario_args(p)
    p.add_argument("--transport", choices=("direct", "http"), default="direct",
                   help="direct: the cores in process (default, seconds); http: real servers on loopback "
                        "(the same rows for a seed, slower; `make demo` runs this)")
    add_live_args(p)
    p.add_argument("--out", default=None, help="output directory (default: results/compare-<scenario>)")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs in parallel processes (default: CPU count, max 8; live time: 1)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    console = console_for()
    try:
        scenario = scenario_from_args(args)
    except ScenarioError as e:
        return fail(str(e))
    if args.jobs is not None and args.jobs < 1:
        return fail("--jobs must be >= 1")
    if problem := live_problem(args):
        return fail(problem)
    out = Path(args.out or f"results/compare-{scenario.name}")
    setups = [make_setup(scenario, pc, key, args.seed) for pc in COMPARE_POLICIES for key in (True, False)]
    transport, jobs = args.transport, args.jobs or default_jobs()
    if live_requested(args):  # --gateway smg / --live: live time, one run at a time (sim.live)
        setups, transport, jobs = live_setups(args, setups), "live", args.jobs or 1
    console.print(f"compare: scenario [bold]{scenario.name}[/bold], {len(setups)} runs over "
                  f"[bold]{transport}[/bold]" + (f" ({args.gateway}, x{args.speedup:g})" if transport == "live" else "")
                  + f", seed {setups[0].seed}")
    t0 = time.perf_counter()
    try:
        rows = run_many(setups, transport, jobs, console)
    except (RuntimeError, OSError) as e:  # a live gateway process that did not come up, a port or server failure
        return fail(str(e))
    wall = time.perf_counter() - t0
    console.print(table(rows, title=f"{scenario.name}: {rows[0]['sessions']} sessions, "
                                    f"{scenario.workers} workers ({transport})"))
    for f in findings(rows):
        console.print(f"  - {f}")
    results = write_results(out, scenario.to_dict(), rows)
    plots = [] if args.no_plots else write_plots(out, rows)
    report = write_markdown(out, scenario.to_dict(), rows, plots)
    errors = sum(r["errors"] for r in rows)
    console.print(f"wrote {results}, {report}" + (f", {len(plots)} plots" if plots else "")
                  + f" in {wall:.1f}s wall")
    if errors:
        for r in rows:
            for e in r["_meta"]["errors"][:3]:
                console.print(f"  [yellow]{r['label']}[/yellow]: {e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
