"""``smg-testbed sweep``: a grid of configurations (assignment mode x workers x KV capacity x sessions x any
gateway flag), run in parallel processes, written as one CSV and one JSON.

Examples::

    smg-testbed sweep --assignment-mode random min_load min_group --workers 4 8 16 --sessions 64 256
    smg-testbed sweep --policy cache_aware --grid cache-threshold=0.1,0.3,0.5 --grid balance-abs-threshold=8,64
    smg-testbed sweep --policy manual consistent_hashing --routing-key on off --kv-capacity-tokens 100000 400000

``--scenario-set KEY=V1,V2`` sweeps any scenario key by its dotted TOML path (``docs/scenarios.md``), each value
read as TOML (a bare word is a string), checked as the loader checks it; repeatable (the product of all). The L3
read-bandwidth sweep of a HiCache scenario, with the routing key on and off::

    smg-testbed sweep --scenario hicache --assignment-mode min_load --routing-key on off \
        --scenario-set workers.hicache_storage_read_bandwidth_gb_s=0.5,2,8,32

With one ``--scenario-set`` and the key on and off, sweep.json adds ``key_benefit`` per configuration: the key's
TTFT p50 benefit ((off - on) / off, means over seeds) at each value and the crossover where it falls under 5 %
(``smg-testbed compare`` on a HiCache scenario runs this sweep by itself: ``--read-bandwidth-sweep``).

``--assignment-mode`` applies to ``manual`` only (an error when ``--policy`` has no manual). ``--grid FLAG=V1,V2``
takes an ``smg launch`` flag without its dashes; a switch takes on/off values (``true,false``, ``on,off``, ``1,0``,
``yes,no``). Every configuration's gateway flags are checked before anything runs: an unknown flag, a value a flag
cannot take or ``--grid FLAG=`` (no values) is an error (exit 2). Transport ``direct`` (default) runs the cores in
process; ``--transport http`` puts real servers on loopback in the loop (same rows, slower).

``--executor local`` (default) runs the grid in this machine's process pool; ``--executor ray`` submits each
configuration as a Ray task, to a local Ray instance or to the cluster at ``--ray-address`` (the same rows; a
failed task is named and the others' rows are still written, exit 1).

``--seeds 0-4`` runs every configuration once per seed (one CSV row per seed, with its ``seed``); sweep.json adds
a ``summary`` per configuration (mean, standard deviation, 95 % interval of each measure) and, with
``--versus CONFIG`` (a configuration's label, or words only it has, e.g. ``'manual/random key=on'``), ``paired``
differences by seed of every configuration against CONFIG, said in words as beyond or within seed noise.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.markup import escape

from sim.commands.common import (
    add_profile_arg,
    add_scenario_args,
    add_seeds_arg,
    check_gateway_flags,
    console_for,
    default_jobs,
    fail,
    paired_versus,
    resolve_configuration,
    run_many,
    scenario_from_args,
    seeds_from_args,
)
from sim.commands.gateway_flags import is_switch, switch_args
from sim.commands.policy_names import check_policy
from sim.executors import EXECUTORS, RunsFailed
from sim.live import add_live_args, live_problem, live_requested, live_setups
from sim.report import benefit_lines, benefit_sweep, fmt_summary, notes, seed_lines
from sim.results import RESULTS_VERSION, provenance, provenance_columns, scenario_hash
from sim.runner import PolicyConfig, make_setup, public
from sim.stats import summarize_configurations
from sim.transports.pool import Setup
from sim.workload.scenario import ScenarioError, parse_capacity, setting_field

HICACHE_CSV_FIELDS = ("reuse_device", "reuse_host", "reuse_storage", "ttft_load_back_mean", "ttft_compute_mean",
                      "storage_read_bytes", "storage_write_bytes")  # when some row has them (HiCache)
CSV_FIELDS = ("results_version", "policy", "assignment_mode", "routing_key", "workers", "kv_capacity_tokens",
              "sessions", "seed", "grid_flags", "gateway_args",
              "kv_reuse", "oracle_reuse", "eligible_reuse", "stickiness", "prefill_tokens", "ttft_p50", "ttft_p99",
              "ttft_first_p50", "ttft_later_p50", "e2e_p50", "e2e_p99", "makespan", "imbalance",
              "imbalance_requests", "requests", "sessions_run", "errors")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smg-testbed sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scenario_args(p)
    add_profile_arg(p)
    add_seeds_arg(p)
    p.add_argument("--versus", default=None, metavar="CONFIG",
                   help="pair every configuration with CONFIG by seed (its label, or words only it has)")
    p.add_argument("--transport", choices=("direct", "http"), default="direct",
                   help="direct: cores in process (default, fast); http: real servers on loopback")
    add_live_args(p)
    p.add_argument("--policy", nargs="+", default=["manual"], help="gateway policies (default: manual)")
    p.add_argument("--assignment-mode", nargs="+", default=None,
                   help="manual's assignment modes (default: random min_load min_group)")
    p.add_argument("--workers", nargs="+", type=int, default=None, help="worker counts (default: the scenario's)")
    p.add_argument("--kv-capacity-tokens", nargs="+", default=None,
                   help="KV capacities per worker, tokens (0 or inf: unbounded; default: the scenario's)")
    p.add_argument("--sessions", nargs="+", type=int, default=None, help="session counts (default: the scenario's)")
    p.add_argument("--routing-key", nargs="+", choices=("on", "off"), default=["on"],
                   help="with and/or without the routing key (default: on)")
    p.add_argument("--grid", action="append", default=[], metavar="FLAG=V1,V2",
                   help="any gateway flag and its values, e.g. cache-threshold=0.3,0.5 (repeatable)")
    p.add_argument("--scenario-set", action="append", default=[], metavar="KEY=V1,V2",
                   help="any scenario key by its dotted TOML path and its values, e.g. "
                        "workers.hicache_storage_read_bandwidth_gb_s=0.5,2,8,32 (repeatable)")
    p.add_argument("--out", default=None, help="output directory (default: results/sweep-<scenario>)")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs in parallel processes (default: CPU count; with --executor ray and no address, the "
                        "local Ray instance's CPUs)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: this machine's process pool (default); ray: one Ray task per configuration "
                        "(pip install 'smg-testbed[ray]')")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --executor ray: the cluster to submit to (its nodes need smg-testbed installed; "
                        "default: a local Ray instance)")
    return p


DEFAULT_MODES = ("random", "min_load", "min_group")
OWN_FLAGS = ("policy", "assignment-mode", "seed", "seeds")  # set by this command's own options, not by --grid


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    out = []
    for item in items:
        flag, sep, values = item.partition("=")
        flag = flag.strip().lstrip("-")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not flag or not vals:
            raise ValueError(f"--grid wants FLAG=V1,V2,...; got {item!r}")
        if flag in OWN_FLAGS:
            raise ValueError(f"--grid {flag}=...: use sweep's --{flag} instead")
        out.append((flag, vals))
    return out


def parse_scenario_sets(items: list[str]) -> list[tuple[str, list[Any]]]:
    """``--scenario-set KEY=V1,V2``: (dotted path, values read as TOML, a bare word as a string); ValueError (one
    line) for a malformed item or an unknown key."""
    out = []
    for item in items:
        path, sep, values = item.partition("=")
        path = path.strip()
        vals = [_toml_value(v.strip()) for v in values.split(",") if v.strip()]
        if not sep or not path or not vals:
            raise ValueError(f"--scenario-set wants KEY=V1,V2,...; got {item!r}")
        setting_field(path)
        out.append((path, vals))
    return out


def _toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def grid_args(flag: str, value: str) -> tuple[str, ...]:
    """The gateway flags of one ``--grid`` value: a switch is there for on and absent for off."""
    return switch_args(f"--{flag}", value) if is_switch(f"--{flag}") else (f"--{flag}", value)


def policy_configs(policies: Sequence[str], modes: Sequence[str] | None) -> list[PolicyConfig]:
    """One configuration per policy, manual once per assignment mode; ValueError for a bad name or modes given
    without manual."""
    if modes and "manual" not in policies:
        raise ValueError("--assignment-mode applies to --policy manual only; add manual to --policy or drop it")
    out = []
    for policy in dict.fromkeys(policies):
        for mode in dict.fromkeys(modes or DEFAULT_MODES) if policy == "manual" else [None]:
            out.append(check_policy(policy, mode))
    return out


def grid_setups(args: argparse.Namespace) -> list[Setup]:
    base = scenario_from_args(args)
    seeds = seeds_from_args(args, base)
    workers = args.workers or [base.workers]
    kvs = [parse_capacity(k) for k in args.kv_capacity_tokens] if args.kv_capacity_tokens else [base.kv_capacity_tokens]
    sessions = args.sessions or [base.sessions]
    keys = [k == "on" for k in dict.fromkeys(args.routing_key)]
    extra = parse_grid(args.grid)
    extra_combos = list(itertools.product(*[[(f, v) for v in vals] for f, vals in extra])) or [()]
    sets = parse_scenario_sets(args.scenario_set)
    set_combos = list(itertools.product(*[[(k, v) for v in vals] for k, vals in sets])) or [()]
    setups = []
    for pc in policy_configs(args.policy, args.assignment_mode):
        for w, kv, n, key, combo, setting in itertools.product(workers, kvs, sessions, keys, extra_combos,
                                                               set_combos):
            flags = tuple(x for f, v in combo for x in grid_args(f, v))
            # a switch that is off leaves no flag: name it, so that its row differs from the one with it on
            off = "".join(f" --{f}=off" for f, v in combo if not grid_args(f, v))
            chosen = base
            for path, value in setting:
                chosen = chosen.with_setting(path, value)
            text = " ".join(f"{path}={value}" for path, value in setting)
            for seed in seeds:
                scenario = chosen.replace(workers=w, kv_capacity_tokens=kv, sessions=n, seed=seed)
                s = make_setup(scenario, PolicyConfig(pc.policy, pc.assignment_mode, flags), key, seed)
                setups.append(Setup(s.scenario, s.gateway_args, s.routing_key, s.seed,
                                    f"{s.label}{off} workers={w} kv={kv} sessions={n}" + (f" {text}" if text else ""),
                                    {**s.extra, "grid_flags": " ".join(flags) + off, "scenario_set": text,
                                     "setting": setting}))
    return setups


def key_benefits(setups: Sequence[Setup], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """With one ``--scenario-set`` and the key on and off: per configuration (its label without the key and the
    value), ``sim.report.benefit_sweep`` of the key's TTFT p50 over the set values (means over seeds)."""
    if len({path for s in setups for path, _ in s.extra["setting"]}) != 1 or \
            len({s.routing_key for s in setups}) != 2:
        return []
    groups: dict[str, dict[tuple[float, bool], list[float]]] = {}
    for setup, row in zip(setups, rows, strict=True):
        [(path, value)] = setup.extra["setting"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return []
        conf = setup.label.replace(" key=on", "").replace(" key=off", "").replace(f" {path}={value}", "")
        groups.setdefault(conf, {}).setdefault((float(value), setup.routing_key), []).append(row["ttft_p50"])
    out = []
    for conf, cells in groups.items():
        mean = {k: sum(v) / len(v) for k, v in cells.items()}
        values = sorted({v for v, _ in mean})
        sweep = benefit_sweep([(v, mean[(v, True)], mean[(v, False)]) for v in values
                               if (v, True) in mean and (v, False) in mean])
        out.append({"configuration": conf, "parameter": path, **sweep})
    return out


def grid_flags(setup: Setup) -> str:
    """The gateway flags set by ``--grid`` (a switch set off as ``--FLAG=off``)."""
    return setup.extra["grid_flags"].strip()


def csv_fields(setups: Sequence[Setup], rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """``CSV_FIELDS``, plus ``scenario_set`` when some configuration sets a scenario key and ``HICACHE_CSV_FIELDS``
    when some row has them (so that a sweep without either keeps its columns)."""
    out = CSV_FIELDS
    if any(s.extra.get("scenario_set") for s in setups):
        out += ("scenario_set",)
    if any("reuse_device" in r for r in rows):
        out += HICACHE_CSV_FIELDS
    return out


def flat_row(setup: Setup, row: dict[str, Any], fields: Sequence[str] = CSV_FIELDS) -> dict[str, Any]:
    s = setup.scenario
    out = {**public(row), "workers": s.workers, "kv_capacity_tokens": s.kv_capacity_tokens,
           "sessions": s.sessions, "sessions_run": row["sessions"], "gateway_args": " ".join(row["gateway_args"]),
           "grid_flags": grid_flags(setup), "scenario_set": setup.extra.get("scenario_set", ""),
           "results_version": RESULTS_VERSION}
    return {k: out.get(k) for k in fields}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    console = console_for()
    if args.jobs is not None and args.jobs < 1:
        return fail("--jobs must be >= 1")
    if problem := live_problem(args):
        return fail(problem)
    if args.ray_address and args.executor != "ray":
        return fail("--ray-address applies to --executor ray only")
    if args.executor == "ray" and live_requested(args):
        return fail("--executor ray runs simulated time only; drop --gateway smg / --live or use --executor local")
    try:
        setups = grid_setups(args)
        ignored = check_gateway_flags(setups)
        versus = None if args.versus is None else resolve_configuration(args.versus, [s.label for s in setups])
    except (ScenarioError, ValueError) as e:
        return fail(str(e))
    transport, jobs = args.transport, args.jobs or default_jobs()
    if live_requested(args):  # --gateway smg / --live: live time, one run at a time (sim.live)
        setups, transport, jobs = live_setups(args, setups), "live", args.jobs or 1
    for flag in ignored if args.gateway == "mock" else []:
        console.print(f"[yellow]warning:[/yellow] the mock gateway does not model {flag} (ignored)")
    base = setups[0].scenario
    out = Path(args.out or f"results/sweep-{base.name}")
    console.print(f"sweep: scenario [bold]{base.name}[/bold], {len(setups)} configurations over {transport}")
    t0 = time.perf_counter()
    failed: list[tuple[Setup, str]] = []
    try:
        rows = run_many(setups, transport, jobs, console, executor=args.executor, ray_address=args.ray_address)
    except RunsFailed as e:  # some Ray tasks failed: name them, keep the others' rows
        failed = e.failures
        kept = [(s, r) for s, r in zip(setups, e.rows, strict=True) if r is not None]
        if not kept:
            return fail(f"every configuration failed: {e}")
        setups, rows = [s for s, _ in kept], [r for _, r in kept]
    except (ValueError, RuntimeError, OSError) as e:  # live: flags smg lacks, a gateway that did not come up
        return fail(str(e))
    fields = csv_fields(setups, rows)
    flat = [flat_row(s, r, fields) for s, r in zip(setups, rows, strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance(base.to_dict(), rows)
    hashes = [scenario_hash(s.scenario.to_dict()) for s in setups]  # each row's own scenario (its grid point)
    with open(out / "sweep.csv", "w", newline="") as f:
        cols = provenance_columns(prov)
        w = csv.DictWriter(f, fieldnames=[*fields, *cols])
        w.writeheader()
        w.writerows({**row, **cols, "scenario_hash": h} for row, h in zip(flat, hashes, strict=True))
    runs = [{**public(r), "workers_count": s.scenario.workers, "kv_capacity_tokens": s.scenario.kv_capacity_tokens,
             "sessions_configured": s.scenario.sessions, "scenario_hash": h}
            for s, r, h in zip(setups, rows, hashes, strict=True)]
    summary = summarize_configurations(rows)
    pairs = [] if versus is None else paired_versus(rows, versus)
    benefits = key_benefits(setups, rows)
    doc = {"results_version": RESULTS_VERSION, "provenance": prov, "scenario": base.to_dict(), "transport": transport,
           "notes": notes(rows), "seeds": sorted({s.seed for s in setups}), "summary": summary,
           **({"paired": pairs} if versus is not None else {}), **({"key_benefit": benefits} if benefits else {}),
           "runs": runs}
    (out / "sweep.json").write_text(json.dumps(doc, indent=1) + "\n")
    from rich.table import Table

    t = Table(title=f"sweep: {base.name}")
    cols = ("policy", "assignment_mode", "routing_key", "workers", "kv_capacity_tokens", "sessions", "grid_flags",
            *(("scenario_set",) if "scenario_set" in fields else ()),
            "kv_reuse", "oracle_reuse", "ttft_p50", "ttft_p99", "makespan", "imbalance", "errors")
    for c in cols:
        t.add_column(c, justify="right")
    if len(flat) == len(summary):  # one seed
        for r in flat:
            t.add_row(*[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols])
    else:  # one line per configuration: mean ± the half-width of its 95 % interval over the seeds
        firsts = {}
        for setup, r in zip(setups, flat, strict=True):
            firsts.setdefault(setup.label, r)
        for conf in summary:
            r = firsts[conf["label"]]
            t.add_row(*[fmt_summary(conf["measures"].get(c), "{:.3f}") if c in conf["measures"] else str(r[c])
                        for c in cols])
    console.print(t)
    for line in seed_lines(summary, pairs):
        console.print(f"  - {line}")
    for b in benefits:
        for line in benefit_lines(b, b["parameter"]):
            console.print(f"  - {escape(b['configuration'])}: {escape(line)}")
    console.print(f"wrote {out}/sweep.csv and {out}/sweep.json in {time.perf_counter() - t0:.1f}s")
    for setup, why in failed:
        console.print(f"[red]failed:[/red] {escape(setup.label)}: {escape(why)} (not in the files)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
