"""Every results file says what produced it: the testbed's version and commit, the command line, the scenario's
content hash and, when the real gateway ran, its version."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
from tiny_scenario import write_tiny

from sim.cli import main as cli
from sim.results import provenance, scenario_hash
from sim.workload.scenario import load_scenario

SCENARIOS = Path(__file__).parents[2] / "sim" / "scenarios"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tiny(tmp_path)


def _repo_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=SCENARIOS, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_results_json_names_version_commit_command_and_scenario(tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["smg-testbed", "run", "--scenario", str(tiny), "--transport", "direct", "--out", str(out),
            "--policy", "round_robin"]
    monkeypatch.setattr("sys.argv", ["/somewhere/bin/smg-testbed", *argv[1:]])
    assert cli(argv[1:]) == 0
    doc = json.loads((out / "results.json").read_text())
    prov = doc["provenance"]
    assert prov["smg_testbed_version"] == "0.1.0"
    assert prov["git"]["commit"] == _repo_commit() and isinstance(prov["git"]["dirty"], bool)
    assert prov["command_line"].startswith("smg-testbed run --scenario ")
    assert prov["scenario_hash"] == scenario_hash(load_scenario(str(tiny)).to_dict())
    assert prov["smg_version"] is None  # no run used the real gateway
    assert prov["python"].count(".") == 2 and prov["libraries"]["numpy"]


def test_the_same_scenario_from_a_file_or_built_in_hashes_the_same(tmp_path):
    copy = tmp_path / "my-hot.toml"
    copy.write_text((SCENARIOS / "hot-worker.toml").read_text().replace('name = "hot-worker"', 'name = "mine"'))
    builtin, from_file = load_scenario("hot-worker"), load_scenario(str(copy))
    assert from_file.name == "mine"
    assert scenario_hash(builtin.to_dict()) == scenario_hash(from_file.to_dict())
    assert scenario_hash(builtin.replace(seed=1).to_dict()) != scenario_hash(builtin.to_dict())
    assert scenario_hash(builtin.to_dict()).startswith("sha256:")


def test_the_real_gateway_s_version_when_a_run_used_it():
    from testbed_common.procs import smg_binary

    if smg_binary() is None:
        pytest.skip("smg==1.13.0 is not installed")
    scenario = load_scenario("default").to_dict()
    assert provenance(scenario, [{"gateway": "smg"}])["smg_version"] == "smg 1.13.0"
    assert provenance(scenario, [{"gateway": "mock"}])["smg_version"] is None


def test_sweep_files_carry_the_provenance(tiny, tmp_path):
    out = tmp_path / "sw"
    assert cli(["sweep", "--scenario", str(tiny), "--assignment-mode", "random", "--workers", "1", "2",
                "--out", str(out), "--jobs", "1"]) == 0
    doc = json.loads((out / "sweep.json").read_text())
    prov = doc["provenance"]
    assert prov["git"]["commit"] == _repo_commit()
    assert prov["scenario_hash"] == scenario_hash(doc["scenario"])  # the scenario written beside it
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 2
    for row, run in zip(rows, doc["runs"], strict=True):  # each grid point's own scenario
        want = scenario_hash(load_scenario(str(tiny)).replace(workers=int(row["workers"])).to_dict())
        assert row["scenario_hash"] == run["scenario_hash"] == want
        assert row["smg_testbed_version"] == prov["smg_testbed_version"]
        assert row["git_commit"] == prov["git"]["commit"]
        assert row["command_line"] == prov["command_line"] and row["smg_version"] == ""
    assert rows[0]["scenario_hash"] != rows[1]["scenario_hash"]
