"""The ``compare``, ``run`` and ``sweep`` commands end to end on a tiny scenario file."""

from __future__ import annotations

import csv
import json

import pytest
from tiny_scenario import write_tiny

from sim.cli import main as cli
from sim.results import RESULTS_VERSION

RUN_FIELDS = {"policy", "assignment_mode", "routing_key", "kv_reuse", "oracle_reuse", "eligible_reuse", "stickiness",
              "prefill_tokens", "ttft_p50", "ttft_p99", "e2e_p50", "makespan", "imbalance", "requests", "sessions",
              "errors", "gateway_branches", "workers"}


@pytest.fixture
def tiny(tmp_path):
    """The tiny scenario with rollback retries (the compare tests count them)."""
    return write_tiny(tmp_path, "retry_rate = 0.1\n")


@pytest.mark.parametrize("transport,jobs", [("direct", "1"), ("http", "2")])
def test_compare_writes_results_report_and_plots(tiny, tmp_path, transport, jobs):
    out = tmp_path / "out"
    assert cli(["compare", "--scenario", str(tiny), "--transport", transport, "--out", str(out), "--jobs", jobs]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["results_version"] == RESULTS_VERSION == 3  # docs/results-versions.md
    assert doc["scenario"]["name"] == "tiny" and doc["scenario"]["sessions"] == 6
    runs = doc["runs"]
    assert len(runs) == 12
    for r in runs:
        assert set(r) >= RUN_FIELDS
        assert isinstance(r["routing_key"], bool)
        assert r["errors"] == 0 and r["sessions"] == 6
        assert len(r["workers"]) == 2
    configs = {(r["policy"], r["assignment_mode"], r["routing_key"]) for r in runs}
    assert len(configs) == 12
    assert ("round_robin", None, False) in configs and ("manual", "min_group", True) in configs
    manual_on = next(r for r in runs if r["policy"] == "manual" and r["routing_key"])
    assert manual_on["gateway_branches"]["manual"]["vacant"] == 6
    report = (out / "report.md").read_text()
    assert "| manual/min_load | on |" in report and "What it shows" in report
    for png in ("reuse.png", "ttft.png", "workers.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_compare_is_deterministic(tiny, tmp_path):
    docs = []
    for i in range(2):
        out = tmp_path / f"o{i}"
        assert cli(["compare", "--scenario", str(tiny), "--transport", "direct", "--out", str(out), "--jobs", "2",
                    "--no-plots"]) == 0
        docs.append((out / "results.json").read_text())
    assert docs[0] == docs[1]


def test_compare_refuses_bad_input(tmp_path, capsys):
    assert cli(["compare", "--scenario", "no-such-scenario", "--out", str(tmp_path)]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[workers]\ncount = -1\n")
    assert cli(["compare", "--scenario", str(bad), "--out", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err


def test_run_one_configuration_as_json(tiny, capsys):
    assert cli(["run", "--scenario", str(tiny), "--transport", "direct", "--policy", "consistent_hashing",
                "--no-routing-key", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["policy"] == "consistent_hashing" and row["routing_key"] is False and row["assignment_mode"] is None
    assert row["results_version"] == RESULTS_VERSION
    assert set(row) >= RUN_FIELDS


def test_run_external_needs_a_url(tiny):
    assert cli(["run", "--scenario", str(tiny), "--transport", "external"]) == 2


def test_run_external_against_a_running_chain(tiny, capsys):
    from sim.runner import PolicyConfig, make_setup
    from sim.transports.http import HttpTransport
    from sim.workload.scenario import load_scenario

    # somebody else's chain answers by itself: workers on the arrival-time engine (the standalone worker's default)
    scenario = load_scenario(str(tiny)).replace(engine="arrival")
    chain = HttpTransport(make_setup(scenario, PolicyConfig("manual", "min_load"), True))
    try:
        assert cli(["run", "--scenario", str(tiny), "--transport", "external", "--session-url", chain.session_url,
                    "--metrics-url", chain.metrics_url, "--json"]) == 0
    finally:
        chain.close()
    row = json.loads(capsys.readouterr().out)
    assert row["errors"] == 0 and row["gateway_branches"]["manual"]["vacant"] == 6


def test_sweep_grid_writes_csv_and_json(tiny, tmp_path):
    out = tmp_path / "sw"
    assert cli(["sweep", "--scenario", str(tiny), "--assignment-mode", "random", "min_group", "--workers", "1", "2",
                "--kv-capacity-tokens", "3000", "inf", "--grid", "max-idle-secs=60,14400", "--out", str(out),
                "--jobs", "2"]) == 0
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 2 * 2 * 2 * 2
    assert {r["results_version"] for r in rows} == {str(RESULTS_VERSION)}
    assert {r["kv_capacity_tokens"] for r in rows} == {"3000", ""}
    assert {r["grid_flags"] for r in rows} == {"--max-idle-secs 60", "--max-idle-secs 14400"}
    doc = json.loads((out / "sweep.json").read_text())
    assert len(doc["runs"]) == 16 and doc["results_version"] == RESULTS_VERSION
    one_worker = [r for r in doc["runs"] if r["workers_count"] == 1 and r["kv_capacity_tokens"] is None]
    # one worker with unbounded KV: the oracle's pool, less at most the one token per request SGLang never caches
    # (the last sampled token has no KV)
    assert len(one_worker) == 4 and all(0 <= r["oracle_reuse"] - r["kv_reuse"] <= r["requests"] / r["prompt_tokens"]
                                        for r in one_worker)
    assert cli(["sweep", "--scenario", str(tiny), "--grid", "oops", "--out", str(out)]) == 2
