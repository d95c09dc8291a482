"""Which smg binary: ``--smg-bin PATH``, else ``$SMG_BIN``, else the installed ``smg`` (``sim.real_smg.resolve_smg``).

A path that is missing, not executable or not an smg (its ``--version`` does not begin with ``smg``) is refused
in one line: the commands exit 2 before anything runs. The chosen binary is the one started and the one whose
``--version`` the results' provenance records. A fake smg (a script printing a version) stands in for an upgrade.
"""

from __future__ import annotations

import argparse
import json
import os

import pytest

from sim.cli import main as cli
from sim.live import add_live_args, live_problem, live_setups
from sim.real_smg import SmgBinaryError, gateway_argv, resolve_smg
from sim.results import provenance
from sim.runner import PolicyConfig, make_setup
from sim.workload.scenario import load_scenario


@pytest.fixture
def fake_smg(tmp_path):
    path = tmp_path / "smg-next"
    path.write_text("#!/bin/sh\necho 'smg 9.9.9-test'\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def no_smg_bin_env(monkeypatch):
    """No ``$SMG_BIN`` during the test, and none after it either: the commands export the binary they chose."""
    monkeypatch.setenv("SMG_BIN", "")  # recorded, so that teardown restores the variable as it was
    monkeypatch.delenv("SMG_BIN")


def test_the_path_given_wins_over_the_environment(fake_smg, monkeypatch):
    monkeypatch.setenv("SMG_BIN", "/nonexistent/smg")
    assert resolve_smg(fake_smg).path == fake_smg and resolve_smg(fake_smg).version == "smg 9.9.9-test"
    monkeypatch.setenv("SMG_BIN", fake_smg)
    assert resolve_smg().version == "smg 9.9.9-test"


@pytest.mark.parametrize("path, says", [("/nonexistent/smg", "no such file"), ("{tmp}/plain", "not executable"),
                                        ("/bin/ls", "not an smg binary"), ("no-such-smg", "not found on PATH")])
def test_a_wrong_binary_is_refused_in_one_line(path, says, tmp_path):
    (tmp_path / "plain").write_text("smg 1.13.0\n")
    path = path.format(tmp=tmp_path)
    with pytest.raises(SmgBinaryError) as e:
        resolve_smg(path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"--smg-bin {path}: {says}")


def test_the_gateway_started_is_the_chosen_binary(fake_smg):
    argv = gateway_argv("smg", ["--policy", "manual"], ["http://127.0.0.1:1"], 10, 11, smg_bin=fake_smg)
    assert argv[:2] == [fake_smg, "launch"]


def test_provenance_records_the_chosen_binarys_version(fake_smg, monkeypatch):
    scenario = load_scenario("default").to_dict()
    monkeypatch.setenv("SMG_BIN", fake_smg)
    assert provenance(scenario, [{"gateway": "smg"}])["smg_version"] == "smg 9.9.9-test"
    assert provenance(scenario, [{"gateway": "mock"}])["smg_version"] is None


def test_the_live_options_resolve_the_binary_once_for_every_run(fake_smg, no_smg_bin_env):
    p = argparse.ArgumentParser()
    add_live_args(p)
    args = p.parse_args(["--gateway", "smg", "--smg-bin", fake_smg])
    assert live_problem(args) is None
    assert args.smg_bin == fake_smg and os.environ["SMG_BIN"] == fake_smg  # workers and provenance see it
    setup = make_setup(load_scenario("default"), PolicyConfig("manual", "min_load"), True)
    [live] = live_setups(args, [setup])
    assert live.extra["smg_bin"] == fake_smg and live.extra["gateway"] == "smg"
    assert live_problem(p.parse_args(["--smg-bin", fake_smg])) == "--smg-bin needs --gateway smg"


@pytest.mark.parametrize("argv", [
    ["run", "--gateway", "smg", "--smg-bin", "/nonexistent/smg"],
    ["compare", "--gateway", "smg", "--smg-bin", "/bin/ls"],
    ["conformance", "--smg-bin", "/nonexistent/smg"],
])
def test_commands_refuse_a_wrong_binary_in_one_line_before_running(argv, tmp_path, capsys, no_smg_bin_env):
    assert cli([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: --smg-bin {argv[-1]}: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.real_smg
def test_a_live_run_starts_the_chosen_binary_and_records_its_version(smg_bin, tmp_path, no_smg_bin_env):
    upgrade = tmp_path / "smg-upgrade"  # the installed smg under another version, as an upgrade would be
    upgrade.write_text(f'#!/bin/sh\n[ "$1" = --version ] && {{ echo "smg 1.13.1-rc"; exit 0; }}\n'
                       f'echo started >> {tmp_path}/started\nexec {smg_bin.path} "$@"\n')
    upgrade.chmod(0o755)
    out = tmp_path / "out"
    assert cli(["run", "--gateway", "smg", "--smg-bin", str(upgrade), "--sessions", "4", "--speedup", "30",
                "--out", str(out), "--json"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["provenance"]["smg_version"] == "smg 1.13.1-rc"
    assert (tmp_path / "started").read_text() == "started\n"
