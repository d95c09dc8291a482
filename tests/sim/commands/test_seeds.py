"""``--seeds`` of run, compare and sweep: one row per seed, a summary per configuration, paired differences."""

from __future__ import annotations

import csv
import json

import pytest

from sim.cli import main as cli
from sim.commands.common import resolve_configuration

ON, OFF = "manual/min_load key=on", "manual/min_load key=off"


def _pair(doc, label, versus):
    return next(p for p in doc["paired"] if p["label"] == label and p["versus"] == versus)


@pytest.mark.slow
def test_compare_on_default_tells_the_key_from_seed_noise(tmp_path, capsys):
    """The issue's claim, on ``default`` with seeds 0-4: the routing key's effect on manual/min_load's reuse is beyond
    seed noise; round_robin, which ignores the key, runs identical configurations and is within it."""
    out = tmp_path / "out"
    assert cli(["compare", "--seeds", "0-4", "--transport", "direct", "--jobs", "2", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["seeds"] == [0, 1, 2, 3, 4] and len(doc["runs"]) == 12 * 5
    assert sorted(r["seed"] for r in doc["runs"] if r["label"] == ON) == [0, 1, 2, 3, 4]
    on = next(c for c in doc["summary"] if c["label"] == ON)["measures"]["kv_reuse"]
    assert on["n"] == 5 and on["ci95"][0] < on["mean"] < on["ci95"][1]
    key = _pair(doc, ON, OFF)["measures"]["kv_reuse"]
    assert key["mean"] > 0 and key["ci95"][0] > 0 and key["beyond_noise"] is True
    same = _pair(doc, "round_robin key=on", "round_robin key=off")["measures"]
    assert all(d["mean"] == 0 and d["beyond_noise"] is False for d in same.values())
    words = capsys.readouterr().out
    report = (out / "report.md").read_text()
    for text in (words, report):
        assert "5 seeds (0-4)" in text and " ± " in text
        assert f"{ON} vs {OFF} (5 seeds): beyond seed noise: kv_reuse +" in " ".join(text.split())
        assert "round_robin key=on vs round_robin key=off (5 seeds): no difference beyond seed noise" in \
            " ".join(text.split())


def test_compare_seeds_on_a_tiny_scenario(tiny, tmp_path):
    out = tmp_path / "out"
    assert cli(["compare", "--scenario", str(tiny), "--seeds", "0-3", "--out", str(out), "--jobs", "2"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["runs"]) == 48 and len(doc["summary"]) == 12
    assert [p["versus"] for p in doc["paired"]] == [lab.replace("key=on", "key=off") for lab in
                                                    [p["label"] for p in doc["paired"]]]
    assert _pair(doc, ON, OFF)["measures"]["kv_reuse"]["beyond_noise"] is True
    assert _pair(doc, "cache_aware key=on", "cache_aware key=off")["measures"]["kv_reuse"]["beyond_noise"] is False
    report = (out / "report.md").read_text()
    assert "| manual/min_load | on | 4 |" in report and "## Seeds" in report
    assert (out / "reuse.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_versus_one_configuration(tiny, tmp_path):
    out = tmp_path / "out"
    assert cli(["compare", "--scenario", str(tiny), "--seeds", "0,1", "--versus", "round_robin key=off",
                "--out", str(out), "--no-plots"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["paired"]) == 11 and {p["versus"] for p in doc["paired"]} == {"round_robin key=off"}


def test_one_seed_has_no_interval_and_says_so(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(["compare", "--scenario", str(tiny), "--out", str(out), "--no-plots", "--jobs", "1"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["seeds"] == [3] and len(doc["runs"]) == 12  # the scenario's seed
    assert all(m["ci95"] is None for c in doc["summary"] for m in c["measures"].values())
    assert all(d["beyond_noise"] is None for p in doc["paired"] for d in p["measures"].values())
    assert "One seed (3): no confidence intervals" in capsys.readouterr().out
    assert "One seed (3): no confidence intervals" in (out / "report.md").read_text()


def test_run_seeds_rows_and_summary(tiny, capsys):
    assert cli(["run", "--scenario", str(tiny), "--seeds", "0-2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["seed"] for r in doc["runs"]] == [0, 1, 2]
    [conf] = doc["summary"]
    assert conf["seeds"] == [0, 1, 2] and conf["measures"]["kv_reuse"]["n"] == 3
    assert cli(["run", "--scenario", str(tiny), "--seeds", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 1  # one seed: the one row, as with --seed


def test_a_seed_is_the_same_run_alone_or_among_seeds(tiny, capsys):
    assert cli(["run", "--scenario", str(tiny), "--seed", "2", "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert cli(["run", "--scenario", str(tiny), "--seeds", "0-2", "--json"]) == 0
    among = json.loads(capsys.readouterr().out)["runs"][2]
    assert among == {k: v for k, v in alone.items() if k != "results_version"}


def test_sweep_seeds_and_versus(tiny, tmp_path):
    out = tmp_path / "sw"
    assert cli(["sweep", "--scenario", str(tiny), "--assignment-mode", "random", "min_load", "--seeds", "0-2",
                "--versus", "manual/random", "--out", str(out), "--jobs", "2"]) == 0
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["seed"] for r in rows] == ["0", "1", "2"] * 2
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["seeds"] == [0, 1, 2] and len(doc["summary"]) == 2
    [pair] = doc["paired"]
    assert pair["label"].startswith("manual/min_load key=on") and pair["versus"].startswith("manual/random key=on")
    assert pair["seeds"] == [0, 1, 2] and "beyond_noise" in pair["measures"]["kv_reuse"]


@pytest.mark.parametrize("argv,message", [
    (["run", "--seeds", "4-2"], "--seeds: '4-2' is not a range"),
    (["compare", "--seeds", "x"], "--seeds wants a range or a list"),
    (["sweep", "--seed", "1", "--seeds", "0-2"], "--seed and --seeds exclude each other"),
    (["compare", "--versus", "manual/min_lod key=on"], "did you mean 'manual/min_load key=on'"),
    (["sweep", "--assignment-mode", "random", "min_load", "--versus", "key=on"], "names 2 configurations"),
])
def test_bad_seeds_and_versus_are_one_line_errors(argv, message, capsys):
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_versus_names_a_label_or_the_words_only_it_has():
    labels = ["manual/random key=on workers=2", "manual/random --max-idle-secs 60 key=on workers=2"]
    assert resolve_configuration(labels[0], labels) == labels[0]
    assert resolve_configuration("max-idle-secs 60", labels) == labels[1]
    with pytest.raises(ValueError, match="names 2 configurations"):
        resolve_configuration("manual/random", labels)
