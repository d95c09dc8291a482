"""``smg-testbed conformance`` on a PD scenario, its cheap parts: leg policies on the command line, the PD flags the
real ``smg`` is started with, the worker ports, and the PD checks on hand-made runs (a placement is the pair
"prefill decode"; selections by worker type; bootstrap probe failures; manual on both legs keeps one pair).
The run itself is ``smg-testbed conformance --scenario pd`` (docs/conformance.md)."""

from __future__ import annotations

import socket

import pytest

from sim.commands import conformance
from sim.commands.conformance import compare_sides, markdown, parse_conformance_policy, pool_ports
from sim.real_smg import gateway_argv
from sim.runner import PolicyConfig, make_setup
from sim.transports.pool import bootstrap_ports, worker_flags, worker_urls
from sim.workload.scenario import load_scenario
from testbed_common.procs import LOOPBACK

PD = load_scenario("pd").replace(sessions=4)
ROLES = {"p0": "prefill", "p1": "prefill", "d0": "decode", "d1": "decode", "d2": "decode"}
SELECTIONS = {"prefill": 4, "decode": 4}


@pytest.fixture
def fake_smg(tmp_path):
    path = tmp_path / "smg"
    path.write_text("#!/bin/sh\necho 'smg 1.13.0'\n")
    path.chmod(0o755)
    return str(path)


def test_a_legs_policy_follows_the_policy_as_compare_names_it():
    assert parse_conformance_policy("manual/min_load decode=round_robin", pd=True) == PolicyConfig(
        "manual", "min_load", decode_policy="round_robin")
    pc = parse_conformance_policy("round_robin prefill=manual", pd=True)
    assert (pc.policy, pc.prefill_policy, pc.decode_policy) == ("round_robin", "manual", None)
    assert parse_conformance_policy("consistent_hashing", pd=False) == PolicyConfig("consistent_hashing")


@pytest.mark.parametrize("text, says", [
    ("manual decode=nope", "unknown policy 'nope'"), ("manual decode=", "prefill=POLICY or decode=POLICY"),
    ("manual middle=random", "prefill=POLICY or decode=POLICY"),
    ("manual decode=random decode=round_robin", "once each"), ("manual decode=manual/min_load", "unknown policy")])
def test_a_bad_legs_policy_is_refused_in_one_line(text, says):
    with pytest.raises(ValueError, match=says):
        parse_conformance_policy(text, pd=True)


def test_the_real_smg_gets_the_pd_pool_and_each_legs_policy(fake_smg):
    setup = make_setup(PD, parse_conformance_policy("manual/min_load decode=round_robin", pd=True), True)
    urls = worker_urls(list(range(30000, 30000 + PD.workers)))
    ports = bootstrap_ports(PD, urls)
    argv = gateway_argv("smg", setup.gateway_args, urls, 10, 11, seed=PD.seed, smg_bin=fake_smg,
                        worker_flags=worker_flags(PD, urls))
    assert argv[:2] == [fake_smg, "launch"] and "--worker-urls" not in argv and "--seed" not in argv
    assert "--pd-disaggregation" in argv
    assert [tuple(argv[i + 1:i + 3]) for i, a in enumerate(argv) if a == "--prefill"] == [
        (urls[0], str(ports[0])), (urls[1], str(ports[1]))]
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--decode"] == urls[2:]
    for flag, value in (("--policy", "manual"), ("--assignment-mode", "min_load"), ("--decode-policy", "round_robin")):
        assert argv[argv.index(flag) + 1] == value
    assert "--prefill-policy" not in argv  # the prefill leg runs --policy, as in smg


def test_a_pd_pools_ports_leave_its_bootstrap_ports_free():
    ports = pool_ports(PD)
    assert ports == list(range(ports[0], ports[0] + PD.workers))
    for port in [*ports, *bootstrap_ports(PD, worker_urls(ports))]:
        socket.create_server((LOOPBACK, port)).close()  # free (allocated just now; nothing else is that fast)


def test_pd_usage_errors_come_before_anything_runs(tmp_path):
    assert conformance.main(["--scenario", "pd", "--workers", "4", "--out", str(tmp_path)]) == 2
    assert conformance.main(["--scenario", "conformance", "--policies", "manual decode=round_robin",
                             "--out", str(tmp_path)]) == 2
    assert conformance.main(["--scenario", "pd", "--policies", "manual decode=bounded_load",
                             "--out", str(tmp_path)]) == 2  # a testbed extension, refused for smg
    assert not (tmp_path / "conformance.json").exists()


def side(timeline, branches, selections=SELECTIONS, failures=None, kv=0.9):
    return {"gateway": "x", "errors": 0, "requests": sum(len(s) for s in timeline.values()), "kv_reuse": kv,
            "oracle_reuse": 0.95, "stickiness": 1.0, "makespan": 1.0, "wall_seconds": 1.0, "branches": branches,
            "workers": {w: {"requests": 0, "prefill_tokens": 0} for w in ROLES},
            "first_worker": {k: v[0][1] for k, v in timeline.items()}, "timeline": timeline, "fault_log": [],
            "roles": ROLES, "selections": dict(selections), "rendezvous_failures": dict(failures or {})}


PAIRS = {"a": [[0, "p0 d0"], [1, "p0 d0"]], "b": [[0, "p1 d1"], [1, "p1 d1"]]}
CH = {"consistent_hashing": {"routing_key_hit": 8}}
MANUAL = {"manual": {"vacant": 4, "occupied_hit": 4}}


def failed(result):
    return [c["check"] for c in result["checks"] if not c["ok"]]


def test_identical_pd_runs_agree_on_every_check():
    for pc, branches in ((PolicyConfig("consistent_hashing"), CH), (PolicyConfig("manual", "min_load"), MANUAL)):
        r = compare_sides(pc, side(PAIRS, branches), side(PAIRS, branches))
        assert r["ok"] and "selections by worker type equal" in [c["check"] for c in r["checks"]]


def test_consistent_hashing_fails_when_one_leg_of_a_pair_differs():
    other = {**PAIRS, "b": [[0, "p1 d2"], [1, "p1 d2"]]}  # same prefill worker, another decode worker
    r = compare_sides(PolicyConfig("consistent_hashing"), side(PAIRS, CH), side(other, CH))
    assert failed(r) == ["placements exact"]


def test_selections_by_worker_type_and_probe_failures_must_agree():
    r = compare_sides(PolicyConfig("consistent_hashing"), side(PAIRS, CH),
                      side(PAIRS, CH, selections={"prefill": 4, "decode": 3}, failures={"probe": 2}))
    assert failed(r) == ["selections by worker type equal", "no bootstrap rendezvous failures"]


def test_manual_on_both_legs_keeps_one_pair_per_key_and_balances_each_leg():
    moved = {**PAIRS, "b": [[0, "p1 d1"], [1, "p1 d2"]]}
    skew = {"a": [[0, "p0 d0"]], "b": [[0, "p0 d0"]], "c": [[0, "p0 d0"]], "d": [[0, "p0 d0"]]}
    even = {"a": [[0, "p0 d0"]], "b": [[0, "p1 d1"]], "c": [[0, "p0 d2"]], "d": [[0, "p1 d0"]]}
    pc = PolicyConfig("manual", "min_load")
    assert failed(compare_sides(pc, side(PAIRS, MANUAL), side(moved, MANUAL))) == [
        "manual on both legs: every key keeps one pair"]
    assert failed(compare_sides(pc, side(even, MANUAL), side(skew, MANUAL), balance_tolerance=1)) == [
        "balance: busiest worker's keys within 1 (prefill workers)",
        "balance: busiest worker's keys within 1 (decode workers)"]
    # decode round_robin: no pair to keep and no decode balance to check; the prefill leg still pinned
    rr = PolicyConfig("manual", "min_load", decode_policy="round_robin")
    r = compare_sides(rr, side(PAIRS, MANUAL), side(moved, MANUAL))
    assert r["ok"] and not [c for c in r["checks"] if "pair" in c["check"] or "decode workers" in c["check"]]


def test_the_report_names_the_pd_pool_and_the_skipped_crash_run():
    doc = {"smg_version": "smg 1.13.0", "smg_bin": "/bin/smg", "scenario": PD.to_dict(), "speedup": 10.0,
           "seed": 0, "ok": True, "policies": [], "failure": None,
           "failure_skipped": "dead workers are not modelled with PD"}
    md = markdown(doc)
    assert "on 2 prefill + 6 decode workers (PD)" in md and "skipped: dead workers are not modelled with PD" in md
