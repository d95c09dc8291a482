"""``smg-testbed conformance``: one workload in live time against the mock gateway and the real ``smg`` 1.13.0.

For each policy the same scenario runs twice in live time (``sim.live``), on the same worker URLs and with the
same session ids (session server ``--session-id-seed``): once behind the mock, once behind the real binary. The
two runs are printed side by side: branch counters, key -> worker placements, stickiness, ``kv_reuse`` and
per-worker load. Then a worker is crashed mid-run and restarted (``--failure-policy``) under both gateways, and
the re-pins (``occupied_miss``) and the moves back are compared.

Checks (exit status 1 when one fails; the tolerances are justified in docs/conformance.md):

- no errors on either side;
- consistent_hashing and prefix_hash (with the key): every key's route (its workers in order, repeats
  collapsed) identical (for prefix_hash only while neither side took ``load_balance_walk``, which depends on
  in-flight counts), branch counters equal;
- manual (any mode): branch counters equal (``vacant`` once per key, ``occupied_hit`` after) and stickiness 1.0;
- manual min_load / min_group: the busiest worker's key count within ``--balance-tolerance`` keys;
- ``kv_reuse`` within ``--kv-tolerance`` (placements equal, the cache may still differ by timing);
- failure: both gateways re-pin every key of the crashed worker (``occupied_miss`` > 0, no client errors) and
  move back every such key that is still sending requests once the worker is healthy again.

A PD scenario (``pd``, ``pd-long-answers``): both gateways run in PD mode in front of the same prefill and decode
workers (``--pd-disaggregation --prefill URL BOOTSTRAP_PORT ... --decode URL ...``); a request's placement is its
pair (prefill worker, decode worker), so the checks above compare pairs, and balance is checked per leg run by
``manual``. Further checks: ``smg_worker_selection_total`` by worker type equal (one prefill and one decode
selection per request), no ``smg_pd_rendezvous_failures_total`` (the bootstrap probe succeeds on both), and with
``manual`` on both legs every key keeps one pair. Policies default to ``PD_DEFAULT_POLICIES``; a leg's own policy
is written as ``compare`` names it, e.g. ``"manual/min_load decode=round_robin"``. The crash-and-restart run is
skipped (dead workers are not modelled with PD).

The binary is ``--smg-bin PATH``, else ``$SMG_BIN``, else the installed ``smg`` (a missing one, or one whose
``--version`` does not name smg, is an error); its version and path are recorded.

Writes ``DIR/conformance.json`` and ``DIR/conformance.md`` (default ``results/conformance-<scenario>``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from sim.commands.common import add_scenario_args, console_for, fail, scenario_from_args
from sim.commands.policy_names import check_policy, parse_policy
from sim.live import DEFAULT_SPEEDUP, Fault, LiveTransport, live_setup
from sim.measures import summarize
from sim.real_smg import resolve_smg, smg_args
from sim.runner import PolicyConfig, make_setup
from sim.transports.pool import Setup, worker_urls
from sim.workload.scenario import Scenario, ScenarioError
from testbed_common.procs import SMG_BIN_ENV, consecutive_free_ports, free_ports

DEFAULT_POLICIES = ("consistent_hashing", "prefix_hash", "manual/min_load", "manual/min_group")
# a PD pool: manual on both legs, manual prefill with round_robin decode (compare's PD grid), one ring over both types
PD_DEFAULT_POLICIES = ("manual/min_load", "manual/min_load decode=round_robin", "consistent_hashing")
LEGS = ("prefill", "decode")
DETERMINISTIC = ("consistent_hashing", "prefix_hash")
BALANCED_MODES = ("min_load", "min_group")
KV_TOLERANCE = 0.02
BALANCE_TOLERANCE = 2
SETTLE_WALL_SECONDS = 2.5  # health interval 1 s + breaker/readmission + one turn: a key should be back by then


# ---- one side ---------------------------------------------------------------------------------------------------


def run_side(setup: Setup, gateway: str, speedup: float, urls: list[str], faults: Sequence[Fault] = (),
             log_dir: Path | None = None, grace: float = 1.0, smg_bin: str | None = None) -> dict[str, Any]:
    """Run ``setup`` in live time behind ``gateway`` (smg: the binary ``smg_bin``); what the comparison needs
    (JSON-ready)."""
    s = live_setup(setup, gateway, speedup, smg_bin if gateway == "smg" else None)
    s = Setup(s.scenario, s.gateway_args, s.routing_key, s.seed, s.label, {**s.extra, "gateway_grace": grace})
    t0 = time.perf_counter()
    if log_dir is not None:  # one directory per run, so that no gateway log overwrites another
        log_dir = log_dir / "logs" / "".join(c if c.isalnum() else "_" for c in f"{setup.label} {len(faults)}")
        log_dir.mkdir(parents=True, exist_ok=True)
    tr = LiveTransport(s, urls, log_dir=log_dir)
    try:
        runner = tr.agent_runner(s.scenario, faults=faults)
        result = runner.run()
        metrics_text = tr.gateway_metrics()
        stats = tr.worker_stats()
        workers = list(tr.workers)
    finally:
        tr.close()
    scenario = setup.scenario
    roles = {name: scenario.role_of(i) for i, name in enumerate(workers)} if scenario.pd else None
    m = summarize(result, workers, stats, metrics_text, roles=roles,
                  transfer_bandwidth=scenario.transfer_bandwidth_gb_s * 1e9 if scenario.pd else None)
    sid = {o.index: o.session_id for o in result.sessions}
    timeline: dict[str, list[list[Any]]] = {}
    for r in sorted(result.requests, key=lambda r: (r.session, r.sent)):
        key = sid.get(r.session) or f"plan{r.session}"
        where = (r.worker if not scenario.pd else f"{r.prefill_worker} {r.worker}") if r.ok else None
        timeline.setdefault(key, []).append([round(r.sent, 4), where])
    pd = {"roles": roles, **pd_metrics(metrics_text)} if scenario.pd else {}
    return {
        "gateway": gateway,
        "speedup": speedup,
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "errors": m["errors"],
        "error_samples": [o.error for o in result.sessions if o.error][:5],
        "requests": m["requests"],
        "kv_reuse": m["kv_reuse"],
        "oracle_reuse": m["oracle_reuse"],
        "stickiness": m["stickiness"],
        "makespan": m["makespan"],
        "ttft_p50": m["ttft_p50"],
        "branches": m["gateway_branches"],
        "workers": {w["name"]: {"requests": w["requests"], "prefill_tokens": w["prefill_tokens"],
                                  "kv_reuse": w["kv_reuse"]} for w in m["workers"]},
        "first_worker": {k: v[0][1] for k, v in timeline.items()},
        "timeline": timeline,
        "fault_log": [list(f) for f in runner.fault_log],
        **pd,
    }


def pd_metrics(metrics_text: str) -> dict[str, dict[str, int]]:
    """A PD run's gateway figures the comparison needs: ``selections`` by worker type
    (``smg_worker_selection_total{worker_type}``) and ``rendezvous_failures`` by phase, zeros left out."""
    out: dict[str, dict[str, int]] = {"selections": {}, "rendezvous_failures": {}}
    for fam in text_string_to_metric_families(metrics_text):
        for sample in fam.samples:
            if not sample.value:
                continue
            if sample.name == "smg_worker_selection_total" and "worker_type" in sample.labels:
                sel = out["selections"]
                sel[sample.labels["worker_type"]] = sel.get(sample.labels["worker_type"], 0) + int(sample.value)
            elif sample.name == "smg_pd_rendezvous_failures_total":
                fails = out["rendezvous_failures"]
                phase = sample.labels.get("phase", "")
                fails[phase] = fails.get(phase, 0) + int(sample.value)
    return out


# ---- comparison (pure) ------------------------------------------------------------------------------------------


def key_counts(side: dict[str, Any]) -> dict[str, int]:
    """Keys per worker by first placement (workers with none included); PD: each worker of a key's first pair."""
    out = dict.fromkeys(side["workers"], 0)
    for placement in side["first_worker"].values():
        if placement is not None:
            for w in placement.split(" "):
                out[w] = out.get(w, 0) + 1
    return out


def leg_policies(policy: PolicyConfig) -> dict[str, str]:
    """Each PD leg's policy (its own, else ``--policy``)."""
    return {"prefill": policy.prefill_policy or policy.policy, "decode": policy.decode_policy or policy.policy}


def parse_conformance_policy(text: str, pd: bool) -> PolicyConfig:
    """``POLICY[/MODE]`` (``parse_policy``), on a PD pool optionally followed by ``prefill=P`` and/or ``decode=P``
    (a leg's own policy, as ``compare`` names it: ``manual/min_load decode=round_robin``); ValueError otherwise."""
    first, *legs = text.split()
    if not first:
        raise ValueError("empty policy")
    base = parse_policy(first)
    own: dict[str, str] = {}
    for item in legs:
        leg, sep, name = item.partition("=")
        if leg not in LEGS or not sep or not name or leg in own:
            raise ValueError(f"bad policy {text!r}: a leg's policy is prefill=POLICY or decode=POLICY, once each")
        own[leg] = check_policy(name).policy
    if own and not pd:
        raise ValueError(f"policy {text!r}: a leg's own policy needs a PD scenario")
    return PolicyConfig(base.policy, base.assignment_mode, prefill_policy=own.get("prefill"),
                        decode_policy=own.get("decode"))


def route(side: dict[str, Any], key: str) -> list[str | None]:
    """The workers a key's requests went to, repeats collapsed: ``[w1]`` for a sticky key, ``[w0, w1, w0]`` for
    one that was moved away and back. Independent of the number of turns (which plan a session id gets can
    depend on timing when sessions start as others end)."""
    out: list[str | None] = []
    for _, w in side["timeline"].get(key, []):
        if not out or out[-1] != w:
            out.append(w)
    return out


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "ok": bool(ok), "detail": detail}


def compare_sides(policy: PolicyConfig, mock: dict[str, Any], smg: dict[str, Any], *,
                  kv_tolerance: float = KV_TOLERANCE, balance_tolerance: int = BALANCE_TOLERANCE) -> dict[str, Any]:
    """Checks of one policy's mock and smg runs (see the module docstring)."""
    checks = [_check("no errors", mock["errors"] == 0 and smg["errors"] == 0,
                     f"mock {mock['errors']}, smg {smg['errors']}")]
    keys = sorted(set(mock["timeline"]) | set(smg["timeline"]))
    same_seq = [k for k in keys if route(mock, k) == route(smg, k)]
    same_first = [k for k in keys if mock["first_worker"].get(k) == smg["first_worker"].get(k)]
    placement = {"keys": len(keys), "same_sequence": len(same_seq), "same_first_worker": len(same_first)}
    legs = leg_policies(policy)  # co-located: both are --policy
    used = set(legs.values())
    walks = (mock["branches"].get("prefix_hash", {}).get("load_balance_walk", 0)
             + smg["branches"].get("prefix_hash", {}).get("load_balance_walk", 0))
    walked = "prefix_hash" in used and walks
    if used <= set(DETERMINISTIC):  # PD: a pair is deterministic when both legs are
        if walked:
            checks.append(_check("placements (load_balance_walk taken: load-dependent, not checked)", True,
                                 f"{len(same_seq)}/{len(keys)} keys with the same route"))
        else:
            checks.append(_check("placements exact", len(same_seq) == len(keys),
                                 f"{len(same_seq)}/{len(keys)} keys with the same route"))
    if used <= {*DETERMINISTIC, "manual", "round_robin"} and used & {*DETERMINISTIC, "manual"} and not walked:
        checks.append(_check("branch counters equal", mock["branches"] == smg["branches"],
                             f"mock {mock['branches']}, smg {smg['branches']}"))
    if legs["prefill"] in (*DETERMINISTIC, "manual"):  # PD: stickiness is the prefill worker's
        checks.append(_check("stickiness 1.0", mock["stickiness"] == 1.0 and smg["stickiness"] == 1.0,
                             f"mock {mock['stickiness']:.3f}, smg {smg['stickiness']:.3f}"))
    roles = mock.get("roles") or smg.get("roles")
    if "manual" in used and policy.assignment_mode in BALANCED_MODES:
        mk, sk = key_counts(mock), key_counts(smg)
        # PD: per leg that manual runs (a worker of another leg's policy is not placed by the assignment mode)
        groups = ([(f" ({leg} workers)", [w for w, r in roles.items() if r == leg])
                   for leg, lp in legs.items() if lp == "manual"] if roles else [("", list(mk))])
        for where, names in groups:
            a, b = [mk.get(w, 0) for w in names], [sk.get(w, 0) for w in names]
            diff = abs(max(a, default=0) - max(b, default=0))
            checks.append(_check(f"balance: busiest worker's keys within {balance_tolerance}{where}",
                                 diff <= balance_tolerance, f"keys per worker mock {sorted(a, reverse=True)}, "
                                                            f"smg {sorted(b, reverse=True)}"))
    if roles:
        checks += pd_checks(policy, mock, smg, keys)
    dkv = abs(mock["kv_reuse"] - smg["kv_reuse"])
    checks.append(_check(f"kv_reuse within {kv_tolerance}", dkv <= kv_tolerance,
                         f"mock {mock['kv_reuse']:.4f}, smg {smg['kv_reuse']:.4f} (diff {dkv:.4f})"))
    return {"policy": policy.name, "placement": placement, "checks": checks, "ok": all(c["ok"] for c in checks)}


def pd_checks(policy: PolicyConfig, mock: dict[str, Any], smg: dict[str, Any], keys: list[str]) -> list[dict[str, Any]]:
    """The PD checks of one policy's runs (module docstring)."""
    checks = [_check("selections by worker type equal", mock["selections"] == smg["selections"],
                     f"mock {mock['selections']}, smg {smg['selections']}"),
              _check("no bootstrap rendezvous failures", not mock["rendezvous_failures"]
                     and not smg["rendezvous_failures"],
                     f"mock {mock['rendezvous_failures']}, smg {smg['rendezvous_failures']}")]
    if set(leg_policies(policy).values()) == {"manual"}:
        moved = {name: [k for k in keys if len(route(side, k)) > 1] for name, side in (("mock", mock), ("smg", smg))}
        checks.append(_check("manual on both legs: every key keeps one pair", not moved["mock"] and not moved["smg"],
                             f"keys that changed pair: mock {len(moved['mock'])}, smg {len(moved['smg'])}"))
    return checks


def failure_analysis(side: dict[str, Any], speedup: float, settle_wall: float = SETTLE_WALL_SECONDS) -> dict[str, Any]:
    """Keys of the crashed worker: how many moved away while it was down, and came back after its restart."""
    log = {action: (name, t) for action, name, t in side["fault_log"]}
    if "kill" not in log:
        return {"victim": None}
    victim, t_kill = log["kill"]
    t_restart = log["restart"][1] if "restart" in log else math.inf
    settle = settle_wall * speedup
    pinned, moved, eligible, returned, back_after = [], [], [], [], []
    for key, seq in side["timeline"].items():
        before = [w for t, w in seq if t < t_kill and w is not None]
        if not before or before[-1] != victim:
            continue
        pinned.append(key)
        down = [w for t, w in seq if t_kill <= t < t_restart]
        if any(w is not None and w != victim for w in down):
            moved.append(key)
        if any(t >= t_restart + settle for t, _ in seq):
            eligible.append(key)
            back = [t for t, w in seq if t >= t_restart and w == victim]
            if back:
                returned.append(key)
                back_after.append((back[0] - t_restart) / speedup)
    manual = side["branches"].get("manual", {})
    return {
        "victim": victim,
        "kill_at": round(t_kill, 3),
        "restart_at": round(t_restart, 3) if t_restart != math.inf else None,
        "keys_pinned": len(pinned),
        "keys_moved": len(moved),
        "keys_eligible_to_return": len(eligible),
        "keys_returned": len(returned),
        "return_wall_seconds_max": round(max(back_after), 3) if back_after else None,
        "occupied_miss": manual.get("occupied_miss", 0),
        "errors": side["errors"],
    }


def compare_failure(mock: dict[str, Any], smg: dict[str, Any]) -> dict[str, Any]:
    checks = []
    for name, a in (("mock", mock), ("smg", smg)):
        checks.append(_check(f"{name}: keys of the crashed worker re-pinned", a["keys_pinned"] > 0
                             and a["keys_moved"] == a["keys_pinned"] and a["occupied_miss"] > 0,
                             f"{a['keys_moved']}/{a['keys_pinned']} moved, occupied_miss {a['occupied_miss']}"))
        checks.append(_check(f"{name}: keys moved back after the restart",
                             a["keys_returned"] == a["keys_eligible_to_return"],
                             f"{a['keys_returned']}/{a['keys_eligible_to_return']} back "
                             f"(latest {a['return_wall_seconds_max']} s wall after the restart)"))
        checks.append(_check(f"{name}: no client errors", a["errors"] == 0, f"{a['errors']} errors"))
    return {"mock": mock, "smg": smg, "checks": checks, "ok": all(c["ok"] for c in checks)}


# ---- output -----------------------------------------------------------------------------------------------------


def side_table(policy: str, mock: dict[str, Any], smg: dict[str, Any]) -> Table:
    t = Table(title=policy)
    t.add_column("measure")
    t.add_column("mock", justify="right")
    t.add_column("smg", justify="right")
    for key in ("requests", "errors", "kv_reuse", "oracle_reuse", "stickiness", "makespan", "wall_seconds"):
        a, b = mock[key], smg[key]
        t.add_row(key, *(f"{v:.4f}" if isinstance(v, float) else str(v) for v in (a, b)))
    for pol in sorted(set(mock["branches"]) | set(smg["branches"])):
        for br in sorted(set(mock["branches"].get(pol, {})) | set(smg["branches"].get(pol, {}))):
            t.add_row(f"{pol}:{br}", str(mock["branches"].get(pol, {}).get(br, 0)),
                      str(smg["branches"].get(pol, {}).get(br, 0)))
    mk, sk = key_counts(mock), key_counts(smg)
    for w in sorted(set(mock["workers"]) | set(smg["workers"])):
        a, b = mock["workers"].get(w, {}), smg["workers"].get(w, {})
        t.add_row(f"{w}: keys / requests / prefill",
                  f"{mk.get(w, 0)} / {a.get('requests', 0)} / {a.get('prefill_tokens', 0)}",
                  f"{sk.get(w, 0)} / {b.get('requests', 0)} / {b.get('prefill_tokens', 0)}")
    return t


def pool_text(scenario: dict[str, Any]) -> str:
    """``3 workers``, or a PD pool's ``2 prefill + 6 decode workers (PD)``."""
    if scenario.get("prefill_workers") and scenario.get("decode_workers"):
        return f"{scenario['prefill_workers']} prefill + {scenario['decode_workers']} decode workers (PD)"
    return f"{scenario['workers']} workers"


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Conformance: mock gateway vs {doc['smg_version']} ({doc['scenario']['name']})", "",
             f"Binary: `{doc['smg_bin']}`.", "",
             f"Live time, speed-up x{doc['speedup']:g}; seed {doc['seed']}; {doc['scenario']['sessions']} sessions "
             f"on {pool_text(doc['scenario'])}. Result: **{'PASS' if doc['ok'] else 'FAIL'}**.", ""]
    if doc.get("failure_skipped"):
        lines += [f"Crash-and-restart run skipped: {doc['failure_skipped']}.", ""]
    for pol in doc["policies"]:
        mock, smg, cmp = pol["mock"], pol["smg"], pol["comparison"]
        lines += [f"## {cmp['policy']}", "", "| measure | mock | smg |", "| --- | ---: | ---: |"]
        for key in ("requests", "errors", "kv_reuse", "oracle_reuse", "stickiness", "makespan"):
            a, b = mock[key], smg[key]
            lines.append(f"| {key} | " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in (a, b))
                         + " |")
        for p_ in sorted(set(mock["branches"]) | set(smg["branches"])):
            for br in sorted(set(mock["branches"].get(p_, {})) | set(smg["branches"].get(p_, {}))):
                lines.append(f"| {p_}:{br} | {mock['branches'].get(p_, {}).get(br, 0)} | "
                             f"{smg['branches'].get(p_, {}).get(br, 0)} |")
        mk, sk = key_counts(mock), key_counts(smg)
        for w in sorted(set(mock["workers"]) | set(smg["workers"])):
            a, b = mock["workers"].get(w, {}), smg["workers"].get(w, {})
            lines.append(f"| {w} keys / requests / prefill | {mk.get(w, 0)} / {a.get('requests', 0)} / "
                         f"{a.get('prefill_tokens', 0)} | {sk.get(w, 0)} / {b.get('requests', 0)} / "
                         f"{b.get('prefill_tokens', 0)} |")
        pl = cmp["placement"]
        lines += ["", f"Placements: {pl['same_sequence']}/{pl['keys']} keys with the same route (workers in order), "
                      f"{pl['same_first_worker']}/{pl['keys']} with the same first worker.", ""]
        lines += [f"- {'ok' if c['ok'] else '**FAIL**'}: {c['check']} ({c['detail']})" for c in cmp["checks"]]
        lines.append("")
    if doc.get("failure"):
        f = doc["failure"]
        lines += [f"## Failure: {f['policy']}, worker crashed and restarted", "",
                  "| | mock | smg |", "| --- | ---: | ---: |"]
        for key in ("victim", "kill_at", "restart_at", "keys_pinned", "keys_moved", "occupied_miss",
                    "keys_eligible_to_return", "keys_returned", "return_wall_seconds_max", "errors"):
            lines.append(f"| {key} | {f['mock'][key]} | {f['smg'][key]} |")
        lines += [""] + [f"- {'ok' if c['ok'] else '**FAIL**'}: {c['check']} ({c['detail']})" for c in f["checks"]]
        lines.append("")
    return "\n".join(lines)


# ---- command ----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smg-testbed conformance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scenario_args(p, default="conformance")
    p.add_argument("--policies", nargs="+", default=None,
                   help=f"policies, POLICY or POLICY/ASSIGNMENT_MODE; on a PD scenario a leg's own policy may follow "
                        f"in the same argument: 'manual/min_load decode=round_robin' (default: "
                        f"{' '.join(DEFAULT_POLICIES)}; PD: {', '.join(repr(x) for x in PD_DEFAULT_POLICIES)})")
    p.add_argument("--sessions", type=int, default=None, help="override the scenario's session count")
    p.add_argument("--workers", type=int, default=None,
                   help="override the scenario's worker count (not for a PD scenario)")
    p.add_argument("--speedup", type=float, default=DEFAULT_SPEEDUP,
                   help=f"live time: model seconds per wall second (default {DEFAULT_SPEEDUP:g})")
    p.add_argument("--failure-policy", default="manual/min_load",
                   help="policy of the crash-and-restart run (default manual/min_load)")
    p.add_argument("--no-failure", action="store_true", help="skip the crash-and-restart run")
    p.add_argument("--failure-speedup", type=float, default=5.0,
                   help="speed-up of the failure run (health checks run on the wall clock; default 5)")
    p.add_argument("--kill-at", type=float, default=2.0, help="failure: crash w0 at this wall second (default 2)")
    p.add_argument("--restart-at", type=float, default=4.0,
                   help="failure: restart it at this wall second (default 4)")
    p.add_argument("--kv-tolerance", type=float, default=KV_TOLERANCE,
                   help=f"largest |kv_reuse(mock) - kv_reuse(smg)| (default {KV_TOLERANCE})")
    p.add_argument("--balance-tolerance", type=int, default=BALANCE_TOLERANCE,
                   help=f"min_load/min_group: largest difference of the busiest worker's key count "
                        f"(default {BALANCE_TOLERANCE})")
    p.add_argument("--smg-bin", default=None, metavar="PATH",
                   help=f"the smg binary to check (default: ${SMG_BIN_ENV}, else the installed smg)")
    p.add_argument("--out", default=None, help="output directory (default results/conformance-<scenario>)")
    return p


def _scenario(args: argparse.Namespace) -> Scenario:
    s = scenario_from_args(args)
    if s.pd and args.workers is not None:
        raise ScenarioError("--workers does not apply to a PD scenario: its [workers.prefill] and [workers.decode] "
                            "counts are its pool")
    changes = {k: v for k, v in (("sessions", args.sessions), ("workers", args.workers)) if v is not None}
    return s.replace(**changes) if changes else s


def pool_ports(scenario: Scenario) -> list[int]:
    """Free loopback ports for the workers; a PD pool's in one block followed by free ones for its prefill workers'
    bootstrap ports (``pool.bootstrap_ports``: right after the last worker's)."""
    if not scenario.pd:
        return free_ports(scenario.workers)
    base = consecutive_free_ports(scenario.workers + scenario.prefill_workers)
    return list(range(base, base + scenario.workers))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    console = console_for()
    if not (args.speedup > 0 and args.failure_speedup > 0):
        return fail("speed-ups must be > 0")
    if not 0 <= args.kill_at < args.restart_at:
        return fail("--kill-at must be >= 0 and before --restart-at")
    try:
        scenario = _scenario(args)
        names = args.policies or (PD_DEFAULT_POLICIES if scenario.pd else DEFAULT_POLICIES)
        policies = [parse_conformance_policy(x, scenario.pd) for x in names]
        failure_policy = parse_policy(args.failure_policy)
        for pc in [*policies, failure_policy]:  # refuse the testbed's extensions before anything runs
            smg_args(pc.gateway_args())
        binary = resolve_smg(args.smg_bin)
    except (ScenarioError, ValueError) as e:  # a wrong --smg-bin too (SmgBinaryError)
        return fail(str(e))
    out = Path(args.out or f"results/conformance-{scenario.name}")
    out.mkdir(parents=True, exist_ok=True)
    urls = worker_urls(pool_ports(scenario))  # the same URLs for both gateways (rings hash them)
    doc: dict[str, Any] = {"scenario": scenario.to_dict(), "seed": scenario.seed, "speedup": args.speedup,
                           "smg_version": binary.version, "smg_bin": binary.path,
                           "worker_urls": urls,
                           "tolerances": {"kv_reuse": args.kv_tolerance, "balance_keys": args.balance_tolerance,
                                          "settle_wall_seconds": SETTLE_WALL_SECONDS},
                           "policies": [], "failure": None}
    run_failure = not args.no_failure
    if scenario.pd and run_failure:
        run_failure, doc["failure_skipped"] = False, "dead workers are not modelled with PD"
        console.print(f"crash-and-restart run skipped: {doc['failure_skipped']}")
    t0 = time.perf_counter()
    try:
        for pc in policies:
            setup = make_setup(scenario, pc, True)
            console.print(f"[bold]{pc.name}[/bold]: mock, then smg (live, x{args.speedup:g})")
            mock = run_side(setup, "mock", args.speedup, urls, log_dir=out)
            smg = run_side(setup, "smg", args.speedup, urls, log_dir=out, smg_bin=binary.path)
            cmp = compare_sides(pc, mock, smg, kv_tolerance=args.kv_tolerance,
                                balance_tolerance=args.balance_tolerance)
            doc["policies"].append({"mock": mock, "smg": smg, "comparison": cmp})
            console.print(side_table(pc.name, mock, smg))
            for c in cmp["checks"]:
                console.print(f"  {'[green]ok[/green]' if c['ok'] else '[red]FAIL[/red]'} {c['check']}: {c['detail']}")
        if run_failure:
            sp = args.failure_speedup
            fault = Fault(0, args.kill_at * sp, args.restart_at * sp)
            setup = make_setup(scenario, failure_policy, True)
            console.print(f"[bold]failure[/bold] ({failure_policy.name}): w0 crashed at {args.kill_at:g} s, "
                          f"restarted at {args.restart_at:g} s wall (live, x{sp:g})")
            sides = {g: run_side(setup, g, sp, urls, faults=[fault], log_dir=out, smg_bin=binary.path)
                     for g in ("mock", "smg")}
            fa = {g: failure_analysis(s, sp) for g, s in sides.items()}
            doc["failure"] = {"policy": failure_policy.name, "speedup": sp, **compare_failure(fa["mock"], fa["smg"]),
                              "runs": sides}
            console.print(side_table(f"failure: {failure_policy.name}", sides["mock"], sides["smg"]))
            for c in doc["failure"]["checks"]:
                console.print(f"  {'[green]ok[/green]' if c['ok'] else '[red]FAIL[/red]'} {c['check']}: {c['detail']}")
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        return fail(str(e))
    doc["ok"] = all(p["comparison"]["ok"] for p in doc["policies"]) and (doc["failure"] is None
                                                                          or doc["failure"]["ok"])
    doc["wall_seconds"] = round(time.perf_counter() - t0, 2)
    (out / "conformance.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "conformance.md").write_text(markdown(doc))
    verdict = "[green]conformance: PASS[/green]" if doc["ok"] else "[red]conformance: FAIL[/red]"
    console.print(f"{verdict} in {doc['wall_seconds']:.1f}s; wrote {out}/conformance.json and conformance.md")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
