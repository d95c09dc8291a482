"""compare and sweep on a tiny HiCache scenario file end to end: compare's no-L3 rows and read-bandwidth sweep in
results.json and report.md; sweep's --scenario-set over any scenario key (checked as the loader checks it) and the
key's benefit per value; Scenario.with_setting, which both rest on."""

from __future__ import annotations

import csv
import json

import pytest
from tiny_scenario import TINY_TOML

from sim.cli import main as cli
from sim.workload.scenario import ScenarioError, load_scenario, setting_paths

HICACHE = 'kv_capacity_tokens = 3000\nenable_hierarchical_cache = true\nhicache_storage_backend = "mooncake"\n'


@pytest.fixture
def tiny_hicache(tmp_path):
    path = tmp_path / "tinyhc.toml"
    path.write_text(TINY_TOML.replace("kv_capacity_tokens = 50000\n", HICACHE))
    return path


def test_compare_on_hicache_runs_the_no_l3_baseline_and_the_read_bandwidth_sweep(tiny_hicache, tmp_path):
    out = tmp_path / "out"
    assert cli(["compare", "--scenario", str(tiny_hicache), "--out", str(out), "--jobs", "1", "--no-plots",
                "--read-bandwidth-sweep", "0.5,32", "--worst-worker", "off"]) == 0
    doc = json.loads((out / "results.json").read_text())
    no_l3 = [r for r in doc["runs"] if r.get("l3") is False]
    assert len(no_l3) == 6 and all("reuse_storage" in r for r in doc["runs"])
    sweep = doc["read_bandwidth_sweep"]
    assert [p["value"] for p in sweep["points"]] == [0.5, 32.0] and sweep["policy"] == "manual/min_load"
    assert [(r["l3_read_gb_s"], r["routing_key"]) for r in sweep["runs"]] == \
        [(0.5, True), (0.5, False), (32.0, True), (32.0, False)]
    report = (out / "report.md").read_text()
    assert "no-L3 manual/min_load" in report and "of the no-key loss" in report
    assert "## L3 read bandwidth: where stickiness stops mattering" in report


def test_sweep_sets_a_scenario_key_and_reports_the_keys_benefit(tiny_hicache, tmp_path):
    out = tmp_path / "sweep"
    assert cli(["sweep", "--scenario", str(tiny_hicache), "--assignment-mode", "min_load", "--routing-key", "on", "off",
                "--scenario-set", "workers.hicache_storage_read_bandwidth_gb_s=0.5,32", "--out", str(out),
                "--jobs", "1"]) == 0
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["scenario_set"] for r in rows] == [f"workers.hicache_storage_read_bandwidth_gb_s={v}"
                                                 for v in ("0.5", "32", "0.5", "32")]
    assert rows[0]["reuse_storage"] != ""
    doc = json.loads((out / "sweep.json").read_text())
    [benefit] = doc["key_benefit"]
    assert benefit["parameter"] == "workers.hicache_storage_read_bandwidth_gb_s"
    assert [p["value"] for p in benefit["points"]] == [0.5, 32.0]
    assert len({r["scenario_hash"] for r in doc["runs"]}) == 2  # each value its own scenario


@pytest.mark.parametrize(("setting", "expected"), [
    ("workers.hicache_storage_read_bandwidth=1", "did you mean 'workers.hicache_storage_read_bandwidth_gb_s'?"),
    ("workers.hicache_ratio=two", "workers.hicache_ratio must be a finite number"),
    ("workers.hicache_storage_read_bandwidth_gb_s=", "--scenario-set wants KEY=V1,V2"),
])
def test_sweep_refuses_a_bad_scenario_set(tiny_hicache, tmp_path, capsys, setting, expected):
    assert cli(["sweep", "--scenario", str(tiny_hicache), "--scenario-set", setting,
                "--out", str(tmp_path / "x")]) == 2
    assert expected in capsys.readouterr().err.replace("\n", " ")


def test_with_setting_sets_any_toml_key_as_the_loader_checks_it():
    s = load_scenario("pd-hicache")
    assert s.with_setting("workers.hicache_storage_read_bandwidth_gb_s", 2).hicache_storage_read_bandwidth_gb_s == 2.0
    assert s.with_setting("workers.prefill.count", 3).prefill_workers == 3
    assert s.with_setting("sessions.count", 8).sessions == 8
    assert s.with_setting("workers.hicache_storage_capacity_tokens", "inf").hicache_storage_capacity_tokens is None
    with pytest.raises(ScenarioError, match=r"workers\.hicache_write_policy must be one of"):
        s.with_setting("workers.hicache_write_policy", "lazy")
    with pytest.raises(ScenarioError, match="leaves no room for a second turn"):
        s.with_setting("sessions.max_context_tokens", 100)
    assert {"seed", "workers.page_size", "workers.decode.kv_capacity_tokens", "turns.count"} <= set(setting_paths())
