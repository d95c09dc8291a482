"""``smg-testbed replay TRACE``: replay a Mooncake trace or recorded agent sessions under gateway policies.

Mooncake (``--format mooncake``): requests go open loop at their timestamps (virtual time) straight
to the gateway as token requests (``/generate`` with ``input_ids``), with ``X-SMG-Routing-Key`` set to
the derived key (the first block not shared by all requests) unless ``--routing-key off``.
Sessions (``--format sessions``, or ``trie`` / ``llmservingsim`` converted on the fly): closed loop
through the session server, which adds the session id as the routing key unless ``--routing-key off``.

Each ``--policy`` is one run (default: the ``compare`` set). The report holds the measures of
``compare`` plus two baselines computed from the trace alone (``sim.replay.baselines``):
``single_pool_reuse`` (one infinite cache that sees every request) and ``random_baseline_reuse``
(the exact expected reuse of uniform random routing over ``--workers`` unbounded caches).
Caches are unbounded unless ``--kv-capacity-tokens`` is given. The default transport is ``direct``
(cores in process; the full conversation trace takes 10-15 s of CPU per policy but cache_aware); ``http`` puts real
loopback servers in the loop. With ``--out DIR``: ``DIR/results.json`` (the ``compare`` schema with
the baselines), ``DIR/report.md`` and plots. ``--write-sessions OUT`` converts TRACE to our sessions
JSONL and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mock_gateway.config import ASSIGNMENT_MODES
from sim.commands.common import console_for, fail
from sim.commands.policy_names import parse_policy
from sim.runner import COMPARE_POLICIES, PolicyConfig, make_setup, open_transport
from sim.workload.scenario import ScenarioError, parse_capacity

FORMATS = ("auto", "mooncake", "sessions", "trie", "llmservingsim")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smg-testbed replay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", metavar="TRACE", help="trace file (JSONL), or a built-in sample: conversation")
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="trace format (default: detected from the first record)")
    p.add_argument("--policy", action="append", default=None,
                   help="gateway policy, repeatable or comma-separated; manual/<mode> sets the assignment mode "
                        f"(default: the compare set: {', '.join(pc.name for pc in COMPARE_POLICIES)})")
    p.add_argument("--assignment-mode", default=None,
                   help=f"--assignment-mode for manual policies given without one ({', '.join(ASSIGNMENT_MODES)})")
    p.add_argument("--workers", type=int, default=8, help="workers (default 8)")
    p.add_argument("--kv-capacity-tokens", default=None,
                   help="KV capacity per worker in tokens (default: unbounded)")
    p.add_argument("--routing-key", choices=("on", "off"), default="on",
                   help="send X-SMG-Routing-Key (derived key / session id); default on")
    p.add_argument("--transport", choices=("http", "direct"), default="direct",
                   help="direct: cores in process (default); http: real servers on loopback")
    p.add_argument("--out", default=None, help="write results.json, report.md and plots to this directory")
    p.add_argument("--seed", type=int, default=0, help="gateway, worker pool and session-id seed (default 0)")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N records of the file")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--write-sessions", metavar="OUT", default=None,
                   help="convert TRACE (sessions/trie/llmservingsim) to our sessions JSONL and exit")
    return p


def parse_policies(values: Sequence[str] | None, mode: str | None) -> list[PolicyConfig]:
    """``--policy`` values (repeatable, comma-separated, ``POLICY[/MODE]``); the compare set when none."""
    if not values:
        return list(COMPARE_POLICIES)
    names = [name for v in values for name in filter(None, (s.strip() for s in v.split(",")))]
    if mode is not None and not any(n.partition("/")[0] == "manual" for n in names):
        raise ValueError("--assignment-mode applies to manual policies only; add manual to --policy or drop it")
    return [parse_policy(name, mode) for name in names]


def detect(path: str) -> str:
    from sim.replay.mooncake import TraceError
    from sim.replay.sessions import detect_format

    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    fmt = detect_format(json.loads(line))
                except ValueError as e:
                    raise TraceError(f"{path}: first record is not JSON: {e}") from e
                if fmt is None:
                    raise TraceError(f"{path}: cannot tell the format from the first record; pass --format")
                return fmt
    raise TraceError(f"{path}: empty file")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from sim.replay import run as replay_run
    from sim.replay.mooncake import TraceError
    from sim.replay.samples import resolve_trace

    console = console_for()
    try:
        kv = parse_capacity(args.kv_capacity_tokens)
        policies = parse_policies(args.policy, args.assignment_mode)
    except (ScenarioError, ValueError) as e:
        return fail(str(e))
    if args.workers < 1:
        return fail("--workers must be >= 1")
    if args.limit is not None and args.limit < 1:
        return fail("--limit must be >= 1")
    try:
        args.trace = resolve_trace(args.trace)
    except TraceError as e:
        return fail(str(e))
    try:
        fmt = detect(args.trace) if args.format == "auto" else args.format
        if args.write_sessions:
            if fmt == "mooncake":
                return fail("--write-sessions converts sessions, trie or llmservingsim records, not Mooncake")
            from sim.replay.sessions import dump_sessions, load_sessions

            n = dump_sessions(load_sessions(args.trace, fmt, args.limit), args.write_sessions)
            console.print(f"wrote {n} sessions to {args.write_sessions}")
            return 0
        trace = replay_run.load_trace(args.trace, fmt, args.limit, args.workers, kv, args.seed)
    except (TraceError, OSError) as e:
        return fail(str(e))

    key = args.routing_key == "on"
    console.print(f"replay: [bold]{trace.name}[/bold] ({fmt}, {trace.describe()}), {args.workers} workers, "
                  f"KV {kv or 'unbounded'}, key {args.routing_key}, [bold]{args.transport}[/bold]")
    console.print(f"  single_pool_reuse {trace.baselines.single_pool_reuse:.4f}, random_baseline_reuse "
                  f"{trace.baselines.random_baseline_reuse:.4f} (trace alone, {args.workers} workers)")
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for pc in policies:
        setup = make_setup(trace.scenario, pc, key, args.seed)
        row = replay_run.run_one(trace, setup, args.transport, open_transport)
        rows.append(row)
        console.print(f"  {row['label']}: kv_reuse {row['kv_reuse']:.4f}, oracle {row['oracle_reuse']:.4f}, "
                      f"stickiness {row['stickiness']:.3f}, imbalance {row['imbalance']:.2f}, "
                      f"errors {row['errors']} ({row['_meta']['wall_seconds']:.1f}s)")
    wall = time.perf_counter() - t0
    from sim.report import table

    console.print(table(rows, title=f"{trace.name}: {rows[0]['requests']} requests, {args.workers} workers "
                                    f"({args.transport})"))
    console.print(f"baselines: single_pool_reuse {trace.baselines.single_pool_reuse:.4f}, "
                  f"random_baseline_reuse {trace.baselines.random_baseline_reuse:.4f}")
    if args.out:
        paths = replay_run.write_outputs(Path(args.out), trace, rows, plots=not args.no_plots,
                                         argv=list(sys.argv[1:] if argv is None else argv))
        console.print("wrote " + ", ".join(str(p) for p in paths) + f" in {wall:.1f}s wall")
    for r in rows:
        for e in r["_meta"]["errors"][:3]:
            console.print(f"  [yellow]{r['label']}[/yellow]: {e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
