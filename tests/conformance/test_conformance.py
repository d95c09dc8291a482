"""``smg-testbed conformance``: its checks on hand-made runs, and one small run against the real smg binary.

The checks (pure functions) must fail on exactly the disagreements they are for: a key placed differently
under a deterministic policy, unequal branch counters, a balance gap over the tolerance, a kv_reuse gap, a
crashed worker's keys not re-pinned or not moved back. The end-to-end run is the one part of ``make test``
that puts the real gateway in the loop with the whole workload (kept well under 60 s).
"""

from __future__ import annotations

import copy
import json

import pytest

from sim.commands import conformance
from sim.commands.conformance import compare_failure, compare_sides, failure_analysis, key_counts
from sim.runner import PolicyConfig


def side(timeline, branches, kv=0.9, stickiness=1.0, errors=0, fault_log=()):
    workers = sorted({w for seq in timeline.values() for _, w in seq if w})
    return {"gateway": "x", "errors": errors, "requests": sum(len(s) for s in timeline.values()), "kv_reuse": kv,
            "oracle_reuse": 0.95, "stickiness": stickiness, "makespan": 1.0, "wall_seconds": 1.0,
            "branches": branches, "workers": {w: {"requests": 0, "prefill_tokens": 0} for w in ["w0", "w1", "w2"]},
            "first_worker": {k: v[0][1] for k, v in timeline.items()}, "timeline": timeline,
            "fault_log": [list(f) for f in fault_log], "_workers": workers}


TL = {"a": [[0, "w0"], [1, "w0"]], "b": [[0, "w1"], [1, "w1"]], "c": [[0, "w2"], [1, "w2"]]}
CH = {"consistent_hashing": {"routing_key_hit": 6}}


def failed(result):
    return [c["check"] for c in result["checks"] if not c["ok"]]


def test_identical_runs_agree():
    r = compare_sides(PolicyConfig("consistent_hashing"), side(TL, CH), side(TL, CH))
    assert r["ok"] and r["placement"] == {"keys": 3, "same_sequence": 3, "same_first_worker": 3}


def test_one_key_placed_differently_fails_a_deterministic_policy():
    other = copy.deepcopy(TL)
    other["b"][1][1] = "w2"
    r = compare_sides(PolicyConfig("consistent_hashing"), side(TL, CH), side(other, CH))
    assert not r["ok"] and failed(r) == ["placements exact"]
    # the same difference under manual/random is not a placement failure (placement is random there)
    man = {"manual": {"vacant": 3, "occupied_hit": 3}}
    assert compare_sides(PolicyConfig("manual", "random"), side(TL, man), side(other, man))["ok"]


def test_prefix_hash_placements_are_load_dependent_once_a_walk_happened():
    other = copy.deepcopy(TL)
    other["a"][1][1] = "w1"
    walk = {"prefix_hash": {"ring_hit": 5, "load_balance_walk": 1}}
    r = compare_sides(PolicyConfig("prefix_hash"), side(TL, {"prefix_hash": {"ring_hit": 6}}), side(other, walk))
    assert r["ok"]
    r = compare_sides(PolicyConfig("prefix_hash"), side(TL, {"prefix_hash": {"ring_hit": 6}}),
                      side(other, {"prefix_hash": {"ring_hit": 6}}))
    assert failed(r) == ["placements exact"]


def test_branch_counters_and_stickiness_must_agree_for_manual():
    a = side(TL, {"manual": {"vacant": 3, "occupied_hit": 3}})
    b = side(TL, {"manual": {"vacant": 4, "occupied_hit": 2}}, stickiness=0.5)
    assert failed(compare_sides(PolicyConfig("manual", "random"), a, b)) == ["branch counters equal", "stickiness 1.0"]


def test_balance_tolerance_for_min_load():
    even = {f"k{i}": [[0, f"w{i % 3}"]] for i in range(9)}
    skew = {f"k{i}": [[0, "w0" if i < 6 else f"w{i % 2 + 1}"]] for i in range(9)}
    man = {"manual": {"vacant": 9}}
    assert sorted(key_counts(side(skew, man)).values()) == [1, 2, 6]
    r = compare_sides(PolicyConfig("manual", "min_load"), side(even, man), side(skew, man), balance_tolerance=2)
    assert failed(r) == ["balance: busiest worker's keys within 2"]
    assert compare_sides(PolicyConfig("manual", "min_load"), side(even, man), side(skew, man),
                         balance_tolerance=3)["ok"]


def test_kv_reuse_gap_and_errors_fail():
    r = compare_sides(PolicyConfig("consistent_hashing"), side(TL, CH, kv=0.90), side(TL, CH, kv=0.95, errors=1))
    assert failed(r) == ["no errors", "kv_reuse within 0.02"]


def fault_side(back: bool, moved: bool = True):
    # w0 holds a and b; killed at t=10, restarted at t=20; settle = 2.5 s wall * speedup 2 = 5
    tl = {"a": [[0, "w0"], [5, "w0"], [12, "w1" if moved else "w0"], [26, "w0" if back else "w1"]],
          "b": [[0, "w0"], [11, "w2" if moved else "w0"], [21, "w0" if back else "w2"], [30, "w0" if back else "w2"]],
          "c": [[0, "w1"], [15, "w1"], [27, "w1"]]}
    return side(tl, {"manual": {"vacant": 3, "occupied_hit": 7, "occupied_miss": 2 if moved else 0}},
                fault_log=[("kill", "w0", 10.0), ("restart", "w0", 20.0)])


def test_failure_analysis_counts_repins_and_returns():
    fa = failure_analysis(fault_side(back=True), speedup=2.0)
    assert (fa["victim"], fa["keys_pinned"], fa["keys_moved"], fa["keys_eligible_to_return"], fa["keys_returned"]) \
        == ("w0", 2, 2, 2, 2)
    assert fa["return_wall_seconds_max"] == pytest.approx(3.0)  # a is back at 26 = restart + 6 model s, x2
    assert compare_failure(fa, fa)["ok"]


def test_failure_comparison_fails_when_keys_stay_away_or_never_move():
    good = failure_analysis(fault_side(back=True), speedup=2.0)
    stay = failure_analysis(fault_side(back=False), speedup=2.0)
    assert stay["keys_returned"] == 0
    assert failed(compare_failure(good, stay)) == ["smg: keys moved back after the restart"]
    stuck = failure_analysis(fault_side(back=True, moved=False), speedup=2.0)
    assert "mock: keys of the crashed worker re-pinned" in failed(compare_failure(stuck, good))


@pytest.mark.real_smg
def test_small_conformance_run_against_the_real_smg(tmp_path, smg_bin):
    code = conformance.main(["--smg-bin", smg_bin.path, "--sessions", "6", "--speedup", "30",
                             "--policies", "consistent_hashing", "manual/min_load", "--failure-speedup", "8",
                             "--kill-at", "1", "--restart-at", "2.5", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "conformance.json").read_text())
    md = (tmp_path / "conformance.md").read_text()
    problems = [(p["comparison"]["policy"], c) for p in doc["policies"] for c in p["comparison"]["checks"]
                if not c["ok"]] + [("failure", c) for c in (doc["failure"] or {}).get("checks", []) if not c["ok"]]
    assert code == 0 and doc["ok"], problems
    assert [p["comparison"]["policy"] for p in doc["policies"]] == ["consistent_hashing", "manual/min_load"]
    ch = doc["policies"][0]
    assert ch["mock"]["gateway"] == "mock" and ch["smg"]["gateway"] == "smg"
    assert ch["comparison"]["placement"]["same_sequence"] == ch["comparison"]["placement"]["keys"] == 6
    assert set(ch["mock"]["timeline"]) == set(ch["smg"]["timeline"])  # the same session ids on both sides
    f = doc["failure"]
    for g in ("mock", "smg"):
        assert f[g]["occupied_miss"] > 0 and f[g]["keys_moved"] == f[g]["keys_pinned"] > 0
    assert "## consistent_hashing" in md and "## Failure" in md and "PASS" in md
    assert (doc["smg_bin"], doc["smg_version"]) == (smg_bin.path, smg_bin.version)
    assert f"vs {smg_bin.version}" in md and smg_bin.path in md


def test_testbed_policies_are_refused_before_anything_runs(tmp_path):
    assert conformance.main(["--policies", "consistent_hashing", "bounded_load", "--out", str(tmp_path)]) == 2
    assert conformance.main(["--failure-policy", "manual/min_kv", "--out", str(tmp_path)]) == 2
    assert conformance.main(["--kill-at", "5", "--restart-at", "3", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "conformance.json").exists()


def test_routes_collapse_repeats_so_turn_counts_do_not_matter():
    a = side({"k": [[0, "w1"], [1, "w1"], [2, "w0"], [3, "w0"], [4, "w1"]]}, CH)
    assert conformance.route(a, "k") == ["w1", "w0", "w1"]
    short = side({"a": [[0, "w0"]], "b": [[0, "w1"]], "c": [[0, "w2"], [5, "w2"], [9, "w2"]]}, CH)
    assert compare_sides(PolicyConfig("consistent_hashing"), side(TL, CH), short)["placement"]["same_sequence"] == 3
