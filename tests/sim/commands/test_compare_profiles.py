"""``compare --profile A B``: every configuration under each profile, and the ranking of the configurations per
profile in the console, report.md and results.json."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from sim.cli import main as cli
from sim.commands.compare import build_parser
from sim.profiles.catalog import load_profile

A, B = "glm-4.7-flash-h200-tp1", "qwen3-30b-a3b-h100-tp1"


def test_two_profiles_run_every_configuration_under_each_and_rank_them(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(["compare", "--scenario", str(tiny), "--profile", A, B, "--out", str(out), "--jobs", "2",
                "--no-plots", "--worst-worker", "off"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["runs"]) == 24
    for name in (A, B):
        runs = [r for r in doc["runs"] if r["profile"] == name]
        assert len(runs) == 12 and all(r["label"].endswith(f" @{name}") for r in runs)
    assert doc["profiles"] == [{"name": n, "profile": n, "kv_capacity_tokens": load_profile(n).kv_capacity_tokens}
                               for n in (A, B)]
    assert all(p["label"].rsplit(" @", 1)[1] == p["versus"].rsplit(" @", 1)[1] for p in doc["paired"])
    assert len(doc["paired"]) == 12  # key on against key off, per policy and profile

    ranking = doc["ranking_by_profile"]
    assert [p["profile"] for p in ranking["profiles"]] == [A, B]
    for p in ranking["profiles"]:
        assert [e["rank"] for e in p["ranking"]] == [1, 2, 3, 4, 5, 6]
        makespans = {r["label"].removesuffix(f" @{p['profile']}"): r["makespan"] for r in doc["runs"]
                     if r["profile"] == p["profile"] and r["routing_key"]}
        assert [e["makespan"] for e in p["ranking"]] == sorted(makespans.values())
        assert {e["configuration"] for e in p["ranking"]} == set(makespans)

    report = (out / "report.md").read_text()
    assert "## Ranking by profile" in report
    assert f"### {A}, KV {load_profile(A).kv_capacity_tokens:,} tokens per worker: ranked by mean makespan" in report
    assert f"On `{A}`:" in report and f"On `{B}`:" in report
    assert f"| manual/min_load @{B} | on |" in report
    console = " ".join(capsys.readouterr().out.split())
    assert "24 runs (2 profiles) over direct" in console
    assert f"{B}, KV {load_profile(B).kv_capacity_tokens:,} tokens per worker: ranked by mean makespan" in console
    moved = ranking["changes"]
    assert all(f"{ch['configuration']} is " in console and f"{ch['configuration']} is " in report for ch in moved)


def test_versus_pairs_each_configuration_with_it_under_the_same_profile(tiny, tmp_path):
    out = tmp_path / "out"
    assert cli(["compare", "--scenario", str(tiny), "--profile", A, B, "--versus", "round_robin key=off",
                "--out", str(out), "--jobs", "2", "--no-plots", "--worst-worker", "off"]) == 0
    pairs = json.loads((out / "results.json").read_text())["paired"]
    assert len(pairs) == 22
    assert {p["versus"] for p in pairs} == {f"round_robin key=off @{A}", f"round_robin key=off @{B}"}
    assert all(p["label"].endswith(p["versus"].rsplit(" @", 1)[1]) for p in pairs)


def test_one_profile_leaves_the_rows_and_the_report_as_without_the_ranking(tiny, tmp_path):
    out = tmp_path / "out"
    assert cli(["compare", "--scenario", str(tiny), "--profile", A, "--out", str(out), "--jobs", "2",
                "--no-plots", "--worst-worker", "off"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["scenario"]["profile"] == A
    assert doc["scenario"]["kv_capacity_tokens"] == load_profile(A).kv_capacity_tokens
    assert "ranking_by_profile" not in doc and "profiles" not in doc
    assert all("profile" not in r and "@" not in r["label"] for r in doc["runs"])
    assert "Ranking by profile" not in (out / "report.md").read_text()


def test_the_same_profile_twice_is_a_usage_error(tiny, tmp_path, capsys):
    assert cli(["compare", "--scenario", str(tiny), "--profile", A, A, "--out", str(tmp_path / "out")]) == 2
    assert f"--profile names {A!r} twice" in capsys.readouterr().err


def test_the_documented_two_profile_command_names_shipped_profiles_about_8x_apart_in_kv():
    text = (Path(__file__).parents[3] / "docs" / "profiles.md").read_text()
    command = text.split("## Comparing profiles", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    argv = shlex.split(command.replace("\\\n", " "), comments=True)
    assert argv[:2] == ["smg-testbed", "compare"]
    args = build_parser().parse_args(argv[2:])
    assert args.scenario == "thrash" and args.profile == [A, B]
    big, small = (load_profile(n).kv_capacity_tokens for n in args.profile)
    assert 7 < big / small < 12


@pytest.mark.slow
def test_on_thrash_round_robin_goes_from_last_with_the_large_kv_to_first_with_the_small(tmp_path):
    """docs/profiles.md's example with the scenario's one seed: the ranking turns over with the KV capacity."""
    out = tmp_path / "out"
    assert cli(["compare", "--scenario", "thrash", "--profile", A, B, "--out", str(out), "--jobs", "2",
                "--no-plots", "--worst-worker", "off"]) == 0
    ranking = json.loads((out / "results.json").read_text())["ranking_by_profile"]
    change = next(ch for ch in ranking["changes"] if ch["configuration"] == "round_robin key=on")
    assert change["ranks"] == {A: 6, B: 1}
    assert f"round_robin key=on is 6th on {A} but 1st on {B}." in (out / "report.md").read_text()
