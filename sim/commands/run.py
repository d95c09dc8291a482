"""``smg-testbed run``: one configuration of a scenario (one gateway policy, routing key on or off).

Transport ``direct`` (default) runs the cores in process; ``http`` puts real servers on loopback in the loop
(same results for a seed, slower). Flags this command does not know are passed to the gateway, so any
``smg launch`` flag can be set, e.g. ``smg-testbed run --policy cache_aware --cache-threshold 0.5``; they are
checked before anything runs: an unknown flag, a value a switch does not take or ``--assignment-mode`` with a
policy other than manual is an error (exit 2). With ``--transport external`` the
agents talk to servers you started: ``--session-url`` (a session server) and/or ``--gateway-url``
(a gateway; a session server is started in front of it).

``--seeds 0-4`` runs the configuration once per seed, one after the other: one row per seed plus its ``summary``
(mean, standard deviation and 95 % interval of each measure; ``--json`` then prints ``runs`` and ``summary``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sim.commands.common import (
    add_override_args,
    add_profile_arg,
    add_scenario_args,
    add_seeds_arg,
    apply_overrides,
    check_gateway_flags,
    console_for,
    fail,
    run_many,
    scenario_from_args,
    seeds_from_args,
)
from sim.commands.policy_names import check_policy
from sim.live import add_live_args, live_problem, live_requested, live_setups
from sim.report import seed_lines, table, write_markdown, write_plots, write_results
from sim.results import RESULTS_VERSION
from sim.runner import PolicyConfig, make_setup, public
from sim.stats import summarize_configurations
from sim.workload.scenario import ScenarioError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smg-testbed run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scenario_args(p)
    add_profile_arg(p)
    add_seeds_arg(p)
    add_override_args(p)
    p.add_argument("--transport", choices=("direct", "http", "external"), default="direct",
                   help="direct: cores in process (default); http: real servers on loopback; external: your URLs")
    add_live_args(p)
    p.add_argument("--policy", default="manual", help="gateway --policy (default: manual)")
    p.add_argument("--assignment-mode", default=None,
                   help="gateway --assignment-mode, manual only (default: min_load for manual)")
    p.add_argument("--no-routing-key", dest="routing_key", action="store_false",
                   help="run the session server with --no-routing-key")
    p.add_argument("--session-url", default=None, help="external: a running session server")
    p.add_argument("--gateway-url", default=None, help="external: a running gateway (SMG or mock)")
    p.add_argument("--metrics-url", default=None,
                   help="external: the gateway's Prometheus URL (default <gateway-url>/metrics; smg: port 29000)")
    p.add_argument("--out", default=None, help="write results.json, report.md and plots here")
    p.add_argument("--json", action="store_true", help="print the result row as JSON instead of a table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, gateway_extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    console = console_for(args.json)
    try:
        scenario = apply_overrides(scenario_from_args(args), args)
        seeds = seeds_from_args(args, scenario)
    except (ScenarioError, ValueError) as e:
        return fail(str(e))
    if args.transport == "external" and not (args.session_url or args.gateway_url):
        return fail("--transport external needs --session-url and/or --gateway-url")
    if problem := live_problem(args):
        return fail(problem)
    try:
        pc = check_policy(args.policy, args.assignment_mode or ("min_load" if args.policy == "manual" else None))
        policy = PolicyConfig(pc.policy, pc.assignment_mode, tuple(gateway_extra))
        setups = [make_setup(scenario.replace(seed=seed), policy, args.routing_key, seed) for seed in seeds]
        ignored = check_gateway_flags(setups)
        transport = args.transport
        if live_requested(args):  # --gateway smg / --live: live time (sim.live)
            setups, transport = live_setups(args, setups), "live"
    except ValueError as e:
        return fail(str(e))
    for flag in ignored if args.gateway == "mock" else []:
        console.print(f"[yellow]warning:[/yellow] the mock gateway does not model {flag} (ignored)")
    kwargs = ({"session_url": args.session_url, "gateway_url": args.gateway_url, "metrics_url": args.metrics_url}
              if args.transport == "external" else {})
    try:
        rows = run_many(setups, transport, 1, console, kwargs, show_progress=not args.json)
    except (ValueError, RuntimeError, OSError) as e:  # live: flags smg lacks, a gateway that did not come up, a port
        return fail(str(e))
    where = f"live {args.gateway}, x{args.speedup:g}" if transport == "live" else transport
    summary = summarize_configurations(rows)
    if args.json and len(rows) == 1:
        print(json.dumps({"results_version": RESULTS_VERSION, **public(rows[0])}, indent=1))
    elif args.json:
        print(json.dumps({"results_version": RESULTS_VERSION, "runs": [public(r) for r in rows], "summary": summary},
                         indent=1))
    else:
        console.print(table(rows, title=f"{scenario.name} ({where}): {setups[0].label}", summary=summary))
        if len(rows) > 1:
            for line in seed_lines(summary):
                console.print(f"  - {line}")
        for row in rows:
            for e in row["_meta"]["errors"][:5]:
                console.print(f"  [yellow]error:[/yellow] seed {row['seed']}: {e}")
    if args.out:
        out = Path(args.out)
        write_results(out, scenario.to_dict(), rows, seeds=seeds, summary=summary)
        write_markdown(out, scenario.to_dict(), rows, write_plots(out, rows, summary), command="smg-testbed run",
                       summary=summary)
        if not args.json:
            console.print(f"wrote {out}/results.json, report.md and plots")
    # nothing got through: say so in the exit status
    return 1 if any(row["errors"] and not row["requests"] for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
