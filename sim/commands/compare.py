"""``smg-testbed compare``: KV reuse, latency and balance per gateway policy, with and without the routing key.

Runs the scenario under manual (random, min_load, min_group), consistent_hashing, cache_aware and
round_robin (the no-affinity baseline), each with the session server adding ``X-SMG-Routing-Key``
and with ``--no-routing-key``: 12 runs. A PD scenario (``pd``, ``pd-long-answers``) runs the gateway in PD mode
under both legs manual, prefill manual with decode round_robin, consistent_hashing and cache_aware, plus a
co-located baseline of the same total worker count (manual, consistent_hashing, cache_aware), key on and off: 14
runs; the report adds the PD columns and says, in words and ``pd.png``, what the key buys in PD against co-located.
A HiCache scenario with a storage tier (``hicache``, ``pd-hicache``) also runs manual/min_load, consistent_hashing
and cache_aware on the same pool without its L3 (``no-L3`` rows; host pools kept), key on and off, and the report
says how much of the no-key loss L3 recovers and at what TTFT cost, with ``tiers.png`` (reuse by tier per policy);
then manual/min_load key on and off at each L3 read bandwidth of ``--read-bandwidth-sweep`` (default
0.5,2,8,32,128,512 GB/s per worker; ``off`` skips it), and the report gives the crossover where the key's TTFT p50
benefit falls under 5 % (results.json: ``read_bandwidth_sweep``; ``l3-read-bandwidth.png``).
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
    BANDWIDTH_PLOT,
    NO_L3,
    benefit_lines,
    benefit_sweep,
    findings,
    mean_rows,
    ranking_tables,
    seed_lines,
    several_seeds,
    table,
    write_benefit_plot,
    write_markdown,
    write_plots,
    write_results,
)
from sim.runner import (
    COLOCATED_BASELINE_POLICIES,
    COMPARE_POLICIES,
    PD_COMPARE_POLICIES,
    PolicyConfig,
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
    p.add_argument("--read-bandwidth-sweep", type=bandwidths, default=DEFAULT_READ_BANDWIDTHS, metavar="GB_S,...",
                   help="a HiCache scenario with L3: also run manual/min_load key on and off at each of these L3 read "
                        "bandwidths (GB/s per worker) and report where the key's TTFT benefit falls under 5%% "
                        "(default: 0.5,2,8,32,128,512; 'off': skip)")
    p.add_argument("--worst-worker", nargs="?", type=bin_seconds, const=AUTO_BINS, default=AUTO_BINS,
                   metavar="SECONDS",
                   help="per run, the worst worker's hit rate over time and the makespan against the best run, which "
                        "is how a KV-thrash spiral shows (shown by default, in bins of about a tenth of the longest "
                        "makespan; SECONDS sets the bin width; 'off' hides it)")
    return p


AUTO_BINS = "auto"  # --worst-worker without SECONDS: sim.worst_worker.common_bin_seconds
# GB/s per worker: from the EIC snapshot's 0.57 past RDMA's ~40 per GPU to a node's NICs (Mooncake: 87-190 GB/s)
# and beyond, where a moved session's L3 fetch costs about what a pinned one's GPU hit does
DEFAULT_READ_BANDWIDTHS = (0.5, 2.0, 8.0, 32.0, 128.0, 512.0)
# a HiCache scenario with L3: the policies also run without it (the loss the key avoids there), and the one swept
# over the L3 read bandwidth
NO_L3_POLICIES = COLOCATED_BASELINE_POLICIES
SWEPT_POLICY = PolicyConfig("manual", "min_load")


def bandwidths(text: str) -> tuple[float, ...]:
    """``--read-bandwidth-sweep``: GB/s values > 0, comma-separated, or ``off`` (none)."""
    if text == "off":
        return ()
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or not all(0 < v < math.inf for v in values):
        raise argparse.ArgumentTypeError(f"comma-separated bandwidths in GB/s (> 0), or 'off'; not {text!r}")
    return tuple(sorted(set(values)))


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


def no_l3_setups(scenario: Scenario, seeds: Sequence[int]) -> list[Setup]:
    """A HiCache scenario's baseline without L3: ``NO_L3_POLICIES`` on ``scenario.without_storage()``, key on and off,
    labelled ``no-L3 ...`` (their rows' ``l3`` False); none for a scenario without L3."""
    if not scenario.storage:
        return []
    base = scenario.without_storage()
    out = []
    for pc in NO_L3_POLICIES:
        for key in (True, False):
            for seed in seeds:
                setup = make_setup(base.replace(seed=seed), pc, key, seed)
                out.append(dataclasses.replace(setup, label=f"{NO_L3} {setup.label}",
                                               extra={**setup.extra, "l3": False}))
    return out


def read_bandwidth_setups(scenario: Scenario, values: Sequence[float], seeds: Sequence[int]) -> list[Setup]:
    """``SWEPT_POLICY`` key on and off at each L3 read bandwidth (GB/s per worker); their rows carry ``l3_read_gb_s``
    and stay out of the table. None for a scenario without L3."""
    if not scenario.storage:
        return []
    out = []
    for gb_s in values:
        for key in (True, False):
            for seed in seeds:
                setup = make_setup(scenario.replace(seed=seed, hicache_storage_read_bandwidth_gb_s=gb_s),
                                   SWEPT_POLICY, key, seed)
                out.append(dataclasses.replace(setup, label=f"{setup.label} l3-read={gb_s:g}GB/s",
                                               extra={**setup.extra, "l3_read_gb_s": gb_s}))
    return out


ROW_MARKS = ("l3", "l3_read_gb_s")  # what a HiCache setup's extra adds to its row


def read_bandwidth_sweep(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``sim.report.benefit_sweep`` of the key's TTFT p50 over the rows' ``l3_read_gb_s`` (means over seeds)."""
    groups: dict[tuple[float, bool], list[float]] = {}
    for r in rows:
        groups.setdefault((r["l3_read_gb_s"], r["routing_key"]), []).append(r["ttft_p50"])
    mean = {k: sum(v) / len(v) for k, v in groups.items()}
    return benefit_sweep([(gb_s, mean[(gb_s, True)], mean[(gb_s, False)])
                          for gb_s in sorted({g for g, _ in mean}) if (gb_s, True) in mean and (gb_s, False) in mean])


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
    if not several:
        pairs_of += [(setup, None) for setup in no_l3_setups(scenario, seeds)]
    swept = [] if several else read_bandwidth_setups(scenario, args.read_bandwidth_sweep, seeds)
    setups, profiles = [s for s, _ in pairs_of], [name for _, name in pairs_of]
    try:
        versus = None if args.versus is None else resolve_configuration(
            args.versus, [s.label.removesuffix(f" @{name}") if name else s.label for s, name in pairs_of])
    except ValueError as e:
        return fail(str(e))
    transport, jobs = args.transport, args.jobs or default_jobs()
    if live_requested(args):  # --gateway smg / --live: live time, one run at a time (sim.live)
        setups, transport, jobs, swept = live_setups(args, setups), "live", args.jobs or 1, []
    console.print(f"compare: scenario [bold]{scenario.name}[/bold], {len(setups)} runs"
                  + (f" ({len(scenarios)} profiles)" if several else "") + f" over [bold]{transport}[/bold]"
                  + (f" ({args.gateway}, x{args.speedup:g})" if transport == "live" else "")
                  + (f", seeds {args.seeds}" if len(seeds) > 1 else f", seed {setups[0].seed}"))
    t0 = time.perf_counter()
    try:
        every = run_many([*setups, *swept], transport, jobs, console)
    except (RuntimeError, OSError) as e:  # a live gateway process that did not come up, a port or server failure
        return fail(str(e))
    every = [{**r, **{k: s.extra[k] for k in ROW_MARKS if k in s.extra}}
             for s, r in zip([*setups, *swept], every, strict=True)]
    rows, swept_rows = every[:len(setups)], every[len(setups):]
    bandwidth = read_bandwidth_sweep(swept_rows) if swept_rows else None
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
    for line in benefit_lines(bandwidth, "L3 read bandwidth", " GB/s") if bandwidth else []:
        console.print(f"  - {escape(line)}")
    if args.worst_worker is not None:
        width = common_bin_seconds(r["makespan"] for r in rows) if args.worst_worker == AUTO_BINS else args.worst_worker
        console.print(f"worst worker's hit rate (%) per {width:g} s of virtual time, and makespan:")
        for line in worst_worker_lines(rows, [r["_meta"]["hits"] for r in rows], width):
            console.print(f"  - {escape(line)}")
    by_profile = {"profiles": [{"name": profile_name(s), "profile": s.profile, "kv_capacity_tokens":
                                s.kv_capacity_tokens} for s in scenarios],
                  "ranking_by_profile": ranking} if several else {}
    swept_doc = {"read_bandwidth_sweep": {**bandwidth, "policy": SWEPT_POLICY.name, "runs": swept_rows}} \
        if bandwidth else {}
    results = write_results(out, scenario.to_dict(), rows, seeds=seeds, summary=summary, paired=pairs, **by_profile,
                            **swept_doc)
    plots = [] if args.no_plots else write_plots(out, rows, summary)
    if bandwidth and bandwidth["points"] and not args.no_plots:
        plots.append(write_benefit_plot(out, bandwidth, "L3 read bandwidth (GB/s per worker)", BANDWIDTH_PLOT))
    shown = {**scenario.to_dict(), "kv_capacity_tokens": kv_capacity_text(scenarios)} if several \
        else scenario.to_dict()
    report = write_markdown(out, shown, rows, plots, summary=summary, paired=pairs, ranking=ranking,
                            read_bandwidth=bandwidth)
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
