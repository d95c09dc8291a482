"""The report says when two assignment modes cannot differ on a workload, and why, only when the run shows it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from sim.cli import main as cli
from sim.report import notes, table

TINY = "\n".join([
    'name = "tiny"', "seed = 3", "[workers]", "count = 3", "[sessions]", "count = 6", "group_size = 2",
    "system_prompt_tokens = 100", "task_prompt_tokens = 20", "max_context_tokens = 2000",
    "[turns]", 'count = { dist = "uniform", low = 2, high = 4 }', "tool_latency = 0.5", ""])


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _row(mode: str | None = "min_load", key: bool = True, peak: int = 1, unkeyed: int = 0) -> dict:
    return {"policy": "manual", "assignment_mode": mode, "routing_key": key, "peak_key_in_flight": peak,
            "requests": 20, "gateway_branches": {"manual": {"vacant": 6, "occupied_hit": 14 - unkeyed,
                                                            "no_routing_id": unkeyed}}}


def test_min_load_and_min_group_with_one_request_per_key_cannot_differ(tiny, tmp_path):
    out = tmp_path / "out"
    assert cli(["compare", "--scenario", str(tiny), "--transport", "direct", "--out", str(out), "--no-plots",
                "--jobs", "1"]) == 0
    doc = json.loads((out / "results.json").read_text())
    on = {r["assignment_mode"]: r for r in doc["runs"] if r["policy"] == "manual" and r["routing_key"]}
    assert on["min_load"]["peak_key_in_flight"] == on["min_group"]["peak_key_in_flight"] == 1
    same = ("label", "assignment_mode", "gateway_args")
    assert {k: v for k, v in on["min_load"].items() if k not in same} == \
        {k: v for k, v in on["min_group"].items() if k not in same}
    assert len(doc["notes"]) == 1
    note = doc["notes"][0]
    assert "manual/min_load and manual/min_group cannot differ" in note and "peak_key_in_flight 1" in note
    assert f"- Note: {note}" in (out / "report.md").read_text()


def test_sweep_json_carries_the_note(tiny, tmp_path):
    out = tmp_path / "sw"
    assert cli(["sweep", "--scenario", str(tiny), "--assignment-mode", "min_group", "--out", str(out),
                "--jobs", "1"]) == 0
    assert "cannot differ" in json.loads((out / "sweep.json").read_text())["notes"][0]


def test_the_console_table_carries_the_note():
    console = Console(width=400, record=True)
    console.print(table([{**_row(), "routing_key": True, "kv_reuse": 0.5, "workers": []}]))
    assert "cannot differ" in console.export_text()


@pytest.mark.parametrize("row", [
    _row(peak=2),  # a key had two requests in flight: the counts part
    _row(key=False),  # without the key min_group sees no keys in flight
    _row(unkeyed=3),  # some requests carried no key
    _row(mode="random"),
    {**_row(), "policy": "consistent_hashing", "assignment_mode": None},
])
def test_no_note_unless_the_run_shows_it(row):
    assert notes([row]) == []
    assert notes([_row()]) != []


def test_peak_key_in_flight_counts_overlapping_requests_of_one_session():
    from sim.agents import RequestRecord
    from sim.measures import peak_key_in_flight

    def rec(session: int, sent: float, finish: float) -> RequestRecord:
        return RequestRecord(session, 0, False, sent, 200, "w0", finish=finish)

    assert peak_key_in_flight([rec(0, 0, 1), rec(0, 1, 2), rec(1, 0.5, 3)]) == 1  # back to back is one at a time
    assert peak_key_in_flight([rec(0, 0, 2), rec(0, 1, 3), rec(0, 1.5, 4)]) == 3
    assert peak_key_in_flight([]) == 0
