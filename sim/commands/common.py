"""What ``run``, ``compare`` and ``sweep`` share: scenario options, execution (sim.executors) with a progress bar."""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sim.commands.gateway_flags import check_gateway_argv
from sim.executors import requests_of, run_local, run_ray
from sim.profiles.catalog import load_profile
from sim.stats import by_configuration, paired_difference, parse_seeds
from sim.transports.pool import Setup
from sim.workload.scenario import ENGINES, Scenario, ScenarioError, load_scenario, parse_capacity


def add_scenario_args(p: argparse.ArgumentParser, default: str = "default") -> None:
    p.add_argument("--scenario", default=default, help=f"built-in scenario name or a TOML file (default: {default})")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for the workload, gateway, session ids and workers (default: the scenario's)")


def add_profile_arg(p: argparse.ArgumentParser, several: bool = False) -> None:
    """``--profile``: the workers' hardware and model profile (sim.profiles), over the scenario's; with
    ``several``, one or more (``profile_scenarios``). Also ``--engine``, the workers' engine model."""
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="the workers' engine, over the scenario's workers.engine: iteration (SGLang's scheduler, "
                        "the default) or arrival (each timeline computed at arrival: faster, no preemption; the "
                        "model of results_version <= 2)")
    if several:
        p.add_argument("--profile", nargs="+", default=None, metavar="NAME|PATH",
                       help="one or more shipped profiles (smg-testbed profiles) or profile TOMLs: every worker's "
                            "latency coefficients and KV capacity (over the scenario's); with several, every "
                            "configuration runs under each, and the report ranks the configurations per profile")
        return
    p.add_argument("--profile", default=None, metavar="NAME|PATH",
                   help="a shipped profile (smg-testbed profiles) or a profile TOML: every worker's latency "
                        "coefficients and KV capacity (over the scenario's; --kv-capacity-tokens still wins)")


def add_seeds_arg(p: argparse.ArgumentParser) -> None:
    """``--seeds``: run every configuration once per seed (``--seed`` is one seed)."""
    p.add_argument("--seeds", default=None, metavar="SEEDS",
                   help="several seeds, a range or a list (0-9, 0,3,5, 0-4,8): one row per seed and configuration, "
                        "with means and 95%% intervals per configuration")


def seeds_from_args(args: argparse.Namespace, scenario: Scenario) -> list[int]:
    """The seeds to run: ``--seeds``, else ``--seed``, else the scenario's; ValueError (one line) for a bad list
    or both options."""
    if args.seeds is None:
        return [scenario.seed if args.seed is None else args.seed]
    if args.seed is not None:
        raise ValueError("--seed and --seeds exclude each other: --seeds N runs the one seed N")
    return parse_seeds(args.seeds)


def resolve_configuration(text: str, labels: Sequence[str]) -> str:
    """The configuration label ``text`` names: the label itself, or the one label holding all its words
    (``manual/min_load key=on`` in a sweep; a flag with or without its dashes); ValueError (one line) when none or
    several do."""
    if text in labels:
        return text

    def words(s: str) -> set[str]:
        return {w.lstrip("-") for w in s.split()}

    hits = [lab for lab in dict.fromkeys(labels) if words(text) <= words(lab)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise ValueError(f"--versus {text!r} names {len(hits)} configurations ({'; '.join(hits[:4])}"
                         f"{'; ...' if len(hits) > 4 else ''}): add words to pick one")
    close = difflib.get_close_matches(text, list(dict.fromkeys(labels)), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"--versus {text!r} names no configuration of this run{hint}")


def paired_versus(rows: Sequence[dict[str, Any]], versus: str) -> list[dict[str, Any]]:
    """Every other configuration of ``rows`` minus the ``versus`` one, paired by seed (``sim.stats``)."""
    return [paired_difference(rows, label, versus) for label in by_configuration(rows) if label != versus]


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """The scenario with ``--seed``, ``--engine`` and ``--profile`` applied (the profile's capacity over the
    scenario's; the first of several profiles)."""
    s = load_scenario(args.scenario)
    if args.seed is not None:
        s = s.replace(seed=args.seed)
    if getattr(args, "engine", None):
        s = s.replace(engine=args.engine)
    profile = getattr(args, "profile", None)
    if profile:
        s = s.with_profile(profile if isinstance(profile, str) else profile[0])
    return s


def profile_scenarios(args: argparse.Namespace) -> list[Scenario]:
    """The scenario under each profile of ``--profile NAME|PATH [...]`` in order (the scenario alone without the
    option); ScenarioError (one line) when two of them are the same profile."""
    first = scenario_from_args(args)
    profiles = args.profile or []
    out = [first] + [first.with_profile(p) for p in profiles[1:]]
    names = [profile_name(s) for s in out]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ScenarioError(f"--profile names {twice!r} twice: give each profile once")
    return out


def profile_name(scenario: Scenario) -> str | None:
    """The name of the scenario's profile (a profile TOML's ``name``, not its path); None without one."""
    return load_profile(scenario.profile).name if scenario.profile else None


def add_override_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None, help="override the scenario's worker count")
    p.add_argument("--kv-capacity-tokens", default=None, help="override KV capacity per worker (0 or inf: unbounded)")
    p.add_argument("--sessions", type=int, default=None, help="override the number of sessions")


def apply_overrides(s: Scenario, args: argparse.Namespace) -> Scenario:
    """``--workers``, ``--kv-capacity-tokens`` (a PD pool: both roles'; its worker count is refused: the roles set
    it) and ``--sessions``; ScenarioError (one line) for what the scenario refuses."""
    changes: dict[str, Any] = {}
    if getattr(args, "workers", None) is not None:
        changes["workers"] = args.workers
    if getattr(args, "sessions", None) is not None:
        changes["sessions"] = args.sessions
    if changes:
        s = s.replace(**changes)
    if getattr(args, "kv_capacity_tokens", None) is not None:
        s = s.with_kv_capacity(parse_capacity(args.kv_capacity_tokens))
    return s


def console_for(quiet: bool = False) -> Console:
    """A console; when output is not a terminal, wide enough for the results table."""
    c = Console(stderr=quiet)
    if not c.is_terminal:
        c = Console(width=200, stderr=quiet)
    return c


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def run_many(setups: Sequence[Setup], transport: str, jobs: int, console: Console,
             kwargs: dict[str, Any] | None = None, on_row: Callable[[dict[str, Any]], None] | None = None,
             show_progress: bool = True, executor: str = "local", ray_address: str | None = None,
             ) -> list[dict[str, Any]]:
    """Run every setup on ``executor`` (sim.executors: ``local``, ``jobs`` at a time in worker processes, or
    ``ray``); rows come back in ``setups`` order. Ray: RunsFailed names the failed configurations, keeping the
    others' rows."""
    kwargs = kwargs or {}
    total = sum(requests_of(s) for s in setups)
    rows: list[dict[str, Any] | None] = [None] * len(setups)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("requests"), TimeElapsedColumn(), console=console, transient=True,
                        disable=not show_progress)
    serial = executor == "local" and (jobs <= 1 or len(setups) <= 1)
    done = 0

    def on_done(i: int, row: dict[str, Any]) -> None:
        nonlocal done
        rows[i] = row
        done += 1
        nxt = f"run {done + 1}/{len(setups)}: {setups[done].label}" if serial and done < len(setups) else ""
        progress.update(task, description=nxt or f"{done}/{len(setups)} runs done")
        if on_row:
            on_row(row)

    def advance(n: int) -> None:
        progress.advance(task, n)

    with progress:
        task = progress.add_task(f"run 1/{len(setups)}: {setups[0].label}" if serial and setups else
                                 f"{len(setups)} runs, {f'{jobs} at a time' if executor == 'local' else 'on Ray'}",
                                 total=total)
        if executor == "ray":
            run_ray(setups, transport, kwargs, advance, on_done, address=ray_address, jobs=jobs)
        else:
            run_local(setups, transport, jobs, kwargs, advance, on_done)
    return rows  # type: ignore[return-value]


def check_gateway_flags(setups: Sequence[Setup]) -> list[str]:
    """Check every configuration's gateway flags before anything runs (ValueError, one line, when one cannot be
    applied); the SMG flags the mock gateway does not model (it ignores them), for a warning."""
    out: list[str] = []
    for setup in setups:
        for flag in check_gateway_argv(setup.gateway_args):
            if flag not in out:
                out.append(flag)
    return out


def fail(msg: str) -> int:
    """Print ``error: MSG`` (one line, MSG verbatim: no console markup) on stderr; the usage-error exit status."""
    Console(stderr=True).print(f"[red]error:[/red] {escape(msg)}", soft_wrap=True)
    return 2


__all__ = ["ScenarioError", "add_override_args", "add_profile_arg", "add_scenario_args", "add_seeds_arg",
           "apply_overrides", "check_gateway_flags", "console_for", "default_jobs", "fail", "paired_versus",
           "profile_name", "profile_scenarios", "resolve_configuration", "run_many", "scenario_from_args",
           "seeds_from_args"]
