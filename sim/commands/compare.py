"""``smg-testbed compare``: KV reuse, latency and balance per gateway policy, with and without the routing key.

Runs the scenario under manual (random, min_load, min_group), consistent_hashing, cache_aware and
round_robin (the no-affinity baseline), each with the session server adding ``X-SMG-Routing-Key``
and with ``--no-routing-key``: 12 runs. A PD scenario (``pd``, ``pd-long-answers``) runs the gateway in PD mode
under both legs manual, prefill manual with decode round_robin, consistent_hashing and cache_aware, plus a
co-located baseline of the same total worker count (manual, consistent_hashing, cache_aware), key on and off: 14
runs; the report adds the PD columns and says, in words and ``pd.png``, what the key buys in PD against co-located.
Prints a table and writes ``DIR/results.json``, ``DIR/report.md`` and
PNG plots (``reuse.png``, ``ttft.png``, ``workers.png``).

Transport ``direct`` (default) runs the cores in process, in seconds; ``--transport http`` starts the workers,
the mock gateway and the session server as real servers on loopback (the same rows for a seed; ``make demo``).

``--seeds 0-4`` runs every configuration once per seed: results.json keeps one row per seed and adds a ``summary``
per configuration (mean, standard deviation, 95 % interval of each measure) and ``paired`` differences by seed:
each policy with the key against itself without it, or, with ``--versus CONFIG``, every configuration against
CONFIG. The report says which differences are beyond seed noise (their interval excludes 0) and which are not.

``--profile A B`` runs every configuration under each profile (the same scenario and seeds; each profile's
latency model and KV capacity): rows carry ``profile`` and labels end in ``@<profile>``; the report ranks the
configurations with the key by makespan per profile and says which changed rank (results.json:
``ranking_by_profile``). Pairs (``--versus`` too) stay within one profile.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.markup import escape

from sim.commands.common import (
    add_profile_arg,
    add_scenario_args,
    add_seeds_arg,
    console_for,
    default_jobs,
    fail,
    paired_versus,
    profile_name,
    profile_scenarios,
    resolve_configuration,
    run_many,
    seeds_from_args,
)
from sim.live import add_live_args, live_problem, live_requested, live_setups
from sim.ranking import profile_label, rank_by_profile, ranking_lines, rows_by_profile
from sim.report import (
    findings,
    mean_rows,
    ranking_tables,
    seed_lines,
    several_seeds,
    table,
    write_markdown,
    write_plots,
    write_results,
)
from sim.runner import (
    COLOCATED_BASELINE_POLICIES,
    COMPARE_POLICIES,
    PD_COMPARE_POLICIES,
    colocated_setup,
    make_setup,
)
from sim.stats import paired_difference, summarize_configurations
from sim.transports.pool import Setup
from sim.workload.scenario import Scenario, ScenarioError
from sim.worst_worker import common_bin_seconds, worst_worker_lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smg-testbed compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scenario_args(p)
    add_profile_arg(p, several=True)
    add_seeds_arg(p)
    p.add_argument("--versus", default=None, metavar="CONFIG",
                   help="pair every configuration with CONFIG, e.g. 'round_robin key=off' (default: each policy "
                        "with the key against itself without it)")
    p.add_argument("--transport", choices=("direct", "http"), default="direct",
                   help="direct: the cores in process (default, seconds); http: real servers on loopback "
                        "(the same rows for a seed, slower; `make demo` runs this)")
    add_live_args(p)
    p.add_argument("--out", default=None, help="output directory (default: results/compare-<scenario>)")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs in parallel processes (default: CPU count, max 8; live time: 1)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--worst-worker", nargs="?", type=bin_seconds, const=AUTO_BINS, default=AUTO_BINS,
                   metavar="SECONDS",
                   help="per run, the worst worker's hit rate over time and the makespan against the best run, which "
                        "is how a KV-thrash spiral shows (shown by default, in bins of about a tenth of the longest "
                        "makespan; SECONDS sets the bin width; 'off' hides it)")
    return p


AUTO_BINS = "auto"  # --worst-worker without SECONDS: sim.worst_worker.common_bin_seconds


def bin_seconds(text: str) -> float | str | None:
    """``--worst-worker SECONDS``: a finite width > 0, ``auto``, or ``off`` (None: not shown)."""
    if text == AUTO_BINS:
        return text
    if text == "off":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"a bin width in virtual seconds (> 0), not {text!r}")
    return seconds


def key_pairs(setups: Sequence[Setup]) -> list[tuple[str, str]]:
    """(key on, key off) labels of every policy run both ways (under the same profile): the routing key's effect."""
    labels = list(dict.fromkeys(s.label for s in setups))
    return [(on, on.replace(" key=on", " key=off", 1)) for on in labels
            if " key=on" in on and on.replace(" key=on", " key=off", 1) in labels]


def paired(rows: Sequence[dict[str, Any]], setups: Sequence[Setup], versus: str | None) -> list[dict[str, Any]]:
    """The paired differences: each configuration against ``versus`` under the same profile, else key on - off."""
    if versus is None:
        return [paired_difference(rows, on, off) for on, off in key_pairs(setups)]
    return [pair for name, group in rows_by_profile(rows).items()
            for pair in paired_versus(group, versus if name is None else profile_label(versus, name))]


def profile_setups(scenarios: Sequence[Scenario], seeds: Sequence[int]) -> list[tuple[Setup, str | None]]:
    """Every configuration under each scenario (one per profile) and seed, with its profile's name (None for one
    scenario: labels as without profiles). A PD scenario: ``PD_COMPARE_POLICIES`` on its PD pool, then
    ``COLOCATED_BASELINE_POLICIES`` on a co-located pool of the same total worker count and profile."""
    out = []
    for scenario in scenarios:
        name = profile_name(scenario) if len(scenarios) > 1 else None
        grid = [(make_setup, pc) for pc in COMPARE_POLICIES] if not scenario.pd else \
            [(make_setup, pc) for pc in PD_COMPARE_POLICIES] + [(colocated_setup, pc)
                                                                for pc in COLOCATED_BASELINE_POLICIES]
        for build, pc in grid:
            for key in (True, False):
                for seed in seeds:
                    setup = build(scenario.replace(seed=seed), pc, key, seed)
                    out.append((setup if name is None else
                                dataclasses.replace(setup, label=profile_label(setup.label, name)), name))
    return out


def kv_capacity_text(scenarios: Sequence[Scenario]) -> str:
    """Each profile's KV capacity per worker, for the report's header line."""
    return " / ".join(f"{s.kv_capacity_tokens:,} ({profile_name(s)})" if s.kv_capacity_tokens
                      else f"unbounded ({profile_name(s)})" for s in scenarios)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    console = console_for()
    try:
        scenarios = profile_scenarios(args)
        seeds = seeds_from_args(args, scenarios[0])
    except (ScenarioError, ValueError) as e:
        return fail(str(e))
    if args.jobs is not None and args.jobs < 1:
        return fail("--jobs must be >= 1")
    if problem := live_problem(args):
        return fail(problem)
    scenario, several = scenarios[0], len(scenarios) > 1
    out = Path(args.out or f"results/compare-{scenario.name}")
    pairs_of = profile_setups(scenarios, seeds)
    setups, profiles = [s for s, _ in pairs_of], [name for _, name in pairs_of]
    try:
        versus = None if args.versus is None else resolve_configuration(
            args.versus, [s.label.removesuffix(f" @{name}") if name else s.label for s, name in pairs_of])
    except ValueError as e:
        return fail(str(e))
    transport, jobs = args.transport, args.jobs or default_jobs()
    if live_requested(args):  # --gateway smg / --live: live time, one run at a time (sim.live)
        setups, transport, jobs = live_setups(args, setups), "live", args.jobs or 1
    console.print(f"compare: scenario [bold]{scenario.name}[/bold], {len(setups)} runs"
                  + (f" ({len(scenarios)} profiles)" if several else "") + f" over [bold]{transport}[/bold]"
                  + (f" ({args.gateway}, x{args.speedup:g})" if transport == "live" else "")
                  + (f", seeds {args.seeds}" if len(seeds) > 1 else f", seed {setups[0].seed}"))
    t0 = time.perf_counter()
    try:
        rows = run_many(setups, transport, jobs, console)
    except (RuntimeError, OSError) as e:  # a live gateway process that did not come up, a port or server failure
        return fail(str(e))
    wall = time.perf_counter() - t0
    if several:
        rows = [{"label": r["label"], "profile": name, **r} for r, name in zip(rows, profiles, strict=True)]
    summary, pairs = summarize_configurations(rows), paired(rows, setups, versus)
    console.print(table(rows, title=f"{scenario.name}: {rows[0]['sessions']} sessions, "
                                    f"{scenario.workers} workers ({transport})", summary=summary))
    for name, group in rows_by_profile(mean_rows(rows, summary) if several_seeds(rows) else rows).items():
        if name is not None:
            console.print(f"on [bold]{escape(name)}[/bold]:")
        for f in findings(group):
            console.print(f"  - {escape(f)}")
    ranking = rank_by_profile(rows, {profile_name(s): s.kv_capacity_tokens for s in scenarios}) if several else None
    if ranking is not None:
        for t in ranking_tables(ranking):
            console.print(t)
        for line in ranking_lines(ranking):
            console.print(f"  - {escape(line)}")
    for line in seed_lines(summary, pairs):
        console.print(f"  - {line}")
    if args.worst_worker is not None:
        width = common_bin_seconds(r["makespan"] for r in rows) if args.worst_worker == AUTO_BINS else args.worst_worker
        console.print(f"worst worker's hit rate (%) per {width:g} s of virtual time, and makespan:")
        for line in worst_worker_lines(rows, [r["_meta"]["hits"] for r in rows], width):
            console.print(f"  - {escape(line)}")
    by_profile = {"profiles": [{"name": profile_name(s), "profile": s.profile, "kv_capacity_tokens":
                                s.kv_capacity_tokens} for s in scenarios],
                  "ranking_by_profile": ranking} if several else {}
    results = write_results(out, scenario.to_dict(), rows, seeds=seeds, summary=summary, paired=pairs, **by_profile)
    plots = [] if args.no_plots else write_plots(out, rows, summary)
    shown = {**scenario.to_dict(), "kv_capacity_tokens": kv_capacity_text(scenarios)} if several \
        else scenario.to_dict()
    report = write_markdown(out, shown, rows, plots, summary=summary, paired=pairs, ranking=ranking)
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
