"""One parser of POLICY[/MODE] for every command: the same names accepted everywhere, one-line errors."""

from __future__ import annotations

import pytest

from mock_gateway.config import ASSIGNMENT_MODES
from sim.cli import main as cli
from sim.commands.policy_names import parse_policy
from sim.commands.replay import parse_policies
from sim.runner import PolicyConfig


def test_policy_names_parse():
    assert parse_policy("manual/min_load") == PolicyConfig("manual", "min_load")
    assert parse_policy("consistent_hashing") == PolicyConfig("consistent_hashing")
    assert parse_policy("manual", default_mode="min_group") == PolicyConfig("manual", "min_group")
    assert parse_policy("random", default_mode="min_group") == PolicyConfig("random")
    for bad in ("/min_load", "manual/", ""):
        with pytest.raises(ValueError):
            parse_policy(bad)


def test_every_gateway_mode_is_accepted():
    assert {"random", "min_load", "min_group", "min_kv"} <= set(ASSIGNMENT_MODES)
    assert parse_policies(["manual/min_kv"], None) == [PolicyConfig("manual", "min_kv")]


@pytest.mark.parametrize("text, says", [
    ("manul", "unknown policy 'manul' (did you mean 'manual'?); choose from random, round_robin"),
    ("manual/min_lod", "unknown assignment mode 'min_lod' (did you mean 'min_load'?)"),
    ("random/min_load", "applies to --policy manual only, not 'random'"),
])
def test_bad_names_say_what_to_write(text, says):
    with pytest.raises(ValueError) as e:
        parse_policy(text)
    assert says in str(e.value)


@pytest.mark.parametrize("argv", [
    ["run", "--policy", "manul"],
    ["sweep", "--policy", "manul"],
    ["replay", "tests/data/NOFILE", "--policy", "manul"],
    ["conformance", "--policies", "manul"],
])
def test_every_command_refuses_a_bad_policy_in_one_line(tiny, tmp_path, capsys, monkeypatch, argv):
    code = cli([*argv, "--out", str(tmp_path / "o")] + (["--scenario", str(tiny)] if argv[0] != "replay" else []))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("error: unknown policy 'manul' (did you mean 'manual'?); choose from random, ")


def test_replay_refuses_a_mode_without_manual():
    with pytest.raises(ValueError, match="applies to manual policies only"):
        parse_policies(["random"], "min_load")
