"""``smg-testbed profiles`` lists the shipped profiles; ``--profile`` of run, compare and sweep sets the workers'
latency model and KV capacity, is named in the results, and yields to ``--kv-capacity-tokens``."""

from __future__ import annotations

import json

import pytest

from sim.cli import main as cli
from sim.profiles.catalog import load_profile, shipped_names
from sim.profiles.profile import profile_from_toml

SMALL = "llama-3.1-8b-h200-tp1"


def test_profiles_lists_every_shipped_profile_with_its_capacity_and_basis(capsys):
    assert cli(["profiles"]) == 0
    out = capsys.readouterr().out
    for name in shipped_names():
        p = load_profile(name)
        [line] = [ln for ln in out.splitlines() if f" {name} " in ln]
        assert f"{p.kv_capacity_tokens:,}" in line and p.basis in line and p.gpu in line


def test_profiles_name_prints_its_toml(capsys):
    assert cli(["profiles", SMALL]) == 0
    assert profile_from_toml(capsys.readouterr().out) == load_profile(SMALL)


def test_an_unknown_profile_is_a_one_line_error(capsys):
    assert cli(["profiles", "llama-8b"]) == 2
    assert cli(["run", "--scenario", "default", "--profile", "llama-8b"]) == 2
    err = capsys.readouterr().err
    assert err.count("error: unknown profile 'llama-8b'") == 2


def _scenario(out_dir) -> dict:
    return json.loads((out_dir / "results.json").read_text())["scenario"]


def test_run_profile_sets_capacity_and_names_the_profile_in_results(tiny, tmp_path):
    assert cli(["run", "--scenario", str(tiny), "--profile", SMALL, "--json", "--out", str(tmp_path / "a")]) == 0
    s = _scenario(tmp_path / "a")
    assert (s["profile"], s["kv_capacity_tokens"]) == (SMALL, load_profile(SMALL).kv_capacity_tokens)
    assert cli(["run", "--scenario", str(tiny), "--profile", SMALL, "--kv-capacity-tokens", "9000", "--json",
                "--out", str(tmp_path / "b")]) == 0
    assert _scenario(tmp_path / "b")["kv_capacity_tokens"] == 9000  # the command line's capacity wins


def test_a_profile_changes_the_modelled_latency(tiny, capsys):
    def ttft(*extra: str) -> float:
        assert cli(["run", "--scenario", str(tiny), "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)["ttft_p50"]

    assert ttft("--profile", "qwen3-32b-h200-tp1") > ttft("--profile", SMALL)


@pytest.mark.slow
def test_compare_and_sweep_take_profile(tiny, tmp_path):
    assert cli(["compare", "--scenario", str(tiny), "--profile", SMALL, "--jobs", "2",
                "--out", str(tmp_path / "c")]) == 0
    assert _scenario(tmp_path / "c")["profile"] == SMALL
    assert cli(["sweep", "--scenario", str(tiny), "--profile", SMALL, "--jobs", "2", "--workers", "2",
                "--out", str(tmp_path / "s")]) == 0
    doc = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert doc["scenario"]["profile"] == SMALL
    assert {r["kv_capacity_tokens"] for r in doc["runs"]} == {load_profile(SMALL).kv_capacity_tokens}
