"""Every configuration's gateway flags are checked before anything runs: one line, exit 2, nothing written."""

from __future__ import annotations

import csv

import pytest

from sim.cli import main as cli
from sim.commands.gateway_flags import check_gateway_argv, switch_args
from sim.commands.sweep import build_parser, grid_setups


@pytest.mark.parametrize("argv, says", [
    (["--cache-threshld", "0.5"], "unknown gateway flag --cache-threshld (did you mean --cache-threshold?)"),
    (["--disable-worker-overload-protection", "true"], "--disable-worker-overload-protection is a switch"),
    (["--disable-retries", "false"], "--disable-retries is a switch"),
    (["--seed", "1", "--disable-retries", "1"], "--disable-retries is a switch and takes no value (got '1')"),
    (["--disable-retries=false"], "--disable-retries"),
    (["--cache-threshold", "lots"], "invalid float value: 'lots'"),
    (["--policy", "random", "--assignment-mode", "min_load"], "not to --policy random"),
    (["--policy", "consistent_hashing", "--assignment-mode", "min_kv"], "not to --policy consistent_hashing"),
    (["--policy", "manual", "0.5"], "unexpected value '0.5'"),
    (["--policy", "manual", "--cache-threshold", "0.5"], "applies to cache_aware only"),
])
def test_a_flag_the_gateway_cannot_apply_is_an_error(argv, says):
    with pytest.raises(ValueError) as e:
        check_gateway_argv(argv)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_smg_flags_the_mock_does_not_model_are_returned_for_a_warning():
    assert check_gateway_argv(["--policy", "cache_aware", "--tokenizer-path", "/m", "--enable-igw",
                               "--cache-threshold", "0.5"]) == ["--tokenizer-path", "--enable-igw"]


@pytest.mark.parametrize("on, off", [("true", "false"), ("on", "off"), ("1", "0"), ("yes", "no"), ("True", "NO")])
def test_a_switch_takes_on_off_values(on, off):
    assert switch_args("--disable-retries", on) == ("--disable-retries",)
    assert switch_args("--disable-retries", off) == ()
    with pytest.raises(ValueError, match="is a switch"):
        switch_args("--disable-retries", "maybe")


def test_sweep_grid_of_a_switch_runs_both_configurations(tiny):
    args = build_parser().parse_args(["--scenario", str(tiny), "--assignment-mode", "min_load",
                                      "--grid", "disable-worker-overload-protection=true,false"])
    on, off = grid_setups(args)
    assert "--disable-worker-overload-protection" in on.gateway_args
    assert "--disable-worker-overload-protection" not in off.gateway_args
    assert on.label != off.label and "--disable-worker-overload-protection=off" in off.label
    for s in (on, off):
        check_gateway_argv(s.gateway_args)


def test_sweep_switch_rows_name_their_value(tiny, tmp_path):
    out = tmp_path / "sw"
    assert cli(["sweep", "--scenario", str(tiny), "--assignment-mode", "min_load", "--grid",
                "disable-retries=on,off", "--out", str(out), "--jobs", "1"]) == 0
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["grid_flags"] for r in rows] == ["--disable-retries", "--disable-retries=off"]


@pytest.mark.parametrize("argv, says", [
    (["run", "--cache-threshld", "0.5"], "did you mean --cache-threshold?"),
    (["run", "--disable-worker-overload-protection", "false"], "is a switch"),
    (["run", "--policy", "random", "--assignment-mode", "min_load"], "applies to --policy manual only"),
    (["run", "--policy", "consistent_hashing", "--assignment-mode", "min_kv"], "applies to --policy manual only"),
    (["sweep", "--grid", "cache-threshld=0.1,0.3"], "did you mean --cache-threshold?"),
    (["sweep", "--grid", "disable-retries=maybe"], "is a switch"),
    (["sweep", "--policy", "cache_aware", "--grid", "cache-threshold=0.1,lots"], "invalid float value: 'lots'"),
    (["sweep", "--policy", "random", "--assignment-mode", "min_load"], "applies to --policy manual only"),
    (["sweep", "--policy", "manual", "--grid", "policy=random"], "use sweep's --policy"),
    (["sweep", "--grid", "assignment-mode=min_kv"], "use sweep's --assignment-mode"),
])
def test_commands_refuse_bad_gateway_flags_before_running(tiny, tmp_path, capsys, argv, says):
    out = tmp_path / "out"
    assert cli([*argv, "--scenario", str(tiny), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and err.startswith("error:") and "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_unmodelled_smg_flags_still_run_with_a_warning(tiny, capsys):
    assert cli(["run", "--scenario", str(tiny), "--enable-igw", "--json"]) == 0
    assert "does not model --enable-igw" in capsys.readouterr().err
