"""The gateway's flags do what they say or fail loudly (issue 22).

Specification of ``parse_args``: an ``smg launch`` 1.13.0 flag the mock does not model is accepted with its
values and listed by name in ``ignored``; every other mistake is a ``GatewayFlagError`` (a ``ValueError``)
whose one-line message names the fix: an unknown flag (with the closest known flag), a misspelled choice
(with the closest choice), a value given to a switch (``smg launch`` switches take none), a stray value,
and a flag that only other policies read (SMG would ignore it silently). The CLI prints that line and exits 2.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from mock_gateway.cli import main
from mock_gateway.config import POLICY_SPECIFIC, GatewayConfig, GatewayFlagError, build_parser, parse_args
from mock_gateway.smg_flags import BY_NARGS


def refused(*argv: str) -> str:
    with pytest.raises(GatewayFlagError) as e:
        parse_args(list(argv))
    message = str(e.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["--cache-threshld", "0.5"], "--cache-threshold"),
        (["--health-check-failure-threshold", "2"], "--health-failure-threshold"),
        (["--health-check-success-threshold", "1"], "--health-success-threshold"),
        (["--assignment_mode", "min_load"], "--assignment-mode"),
        (["--disable-worker-overload-protections"], "--disable-worker-overload-protection"),
        (["--sticky-session"], "--sticky-sessions"),
        (["--cache-threshld=0.5"], "--cache-threshold"),
    ],
)
def test_an_unknown_flag_is_an_error_that_suggests_the_closest_flag(argv, suggestion):
    name = argv[0].partition("=")[0]
    assert refused(*argv).startswith(f"unknown gateway flag {name} (did you mean {suggestion}?)")


def test_a_flag_far_from_any_known_one_gets_no_suggestion():
    assert "did you mean" not in refused("--frobnicate")


def test_smg_flags_the_mock_does_not_model_are_accepted_with_their_values_and_listed_by_name():
    cfg = parse_args(["--model-path", "m", "--encode", "http://e1", "9000", "--encode-policy", "random",
                      "--enable-igw", "--cors-allowed-origins", "--log-dir=/tmp/x", "--policy", "round_robin"])
    assert cfg.ignored == ["--model-path", "--encode", "--encode-policy", "--enable-igw", "--cors-allowed-origins",
                           "--log-dir"]
    assert cfg.policy == "round_robin"


@pytest.mark.real_smg
def test_every_smg_launch_flag_is_either_modelled_or_ignored_by_name(smg_bin):
    """The installed ``smg launch --help`` (1.13.0, a test dependency) against the parser's two lists."""
    help_text = subprocess.run([smg_bin.path, "launch", "--help"], capture_output=True, text=True, timeout=60,
                               check=True).stdout
    option_lines = [line for line in help_text.splitlines() if line.startswith("  --")]
    help_flags = {f for line in option_lines for f in re.findall(r"(?:^  |, )(--[\w.-]+)", line)}
    unmodelled = {f for flags, _ in BY_NARGS for f in flags}
    modelled = set(build_parser().flags) - unmodelled
    assert help_flags - modelled == unmodelled


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["--policy", "manul"], "manual"),
        (["--policy", "cache-aware"], "cache_aware"),
        (["--policy", "manual", "--assignment-mode", "min_lod"], "min_load"),
        (["--log-level", "warning"], "warn"),
        (["--policy", "power_of_two", "--power-of-two-load-metric", "request"], "requests"),
    ],
)
def test_a_misspelled_name_is_an_error_that_suggests_the_closest_name(argv, suggestion):
    assert f"(did you mean {suggestion}?)" in refused(*argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["--disable-worker-overload-protection", "false"],
        ["--disable-worker-overload-protection", "true"],
        ["--disable-retries=true"],
        ["--routing-key-override", "on"],
        ["--enable-igw", "off"],  # an smg flag the mock does not model is a switch too
    ],
)
def test_a_switch_takes_no_value_as_in_smg_launch(argv):
    switch, _, value = argv[0].partition("=")
    value = value or argv[1]
    message = refused(*argv)
    assert message.startswith(f"{switch} is a switch and takes no value (got {value!r})")
    assert "leave it out for off" in message


def test_a_switch_alone_is_on_and_absent_is_off():
    assert parse_args(["--disable-worker-overload-protection"]).overload_protection is False
    assert parse_args([]).overload_protection is True
    assert parse_args(["--worker-overload-protection"]).overload_protection is True


def test_a_stray_value_is_an_error():
    assert refused("--policy", "manual", "min_load").startswith("unexpected value 'min_load'")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--policy", "random", "--assignment-mode", "min_load"], "--assignment-mode"),
        (["--policy", "consistent_hashing", "--assignment-mode", "min_kv"], "--assignment-mode"),
        (["--policy", "consistent_hashing", "--routing-key-override", "--assignment-mode", "min_load"],
         "--assignment-mode"),
        (["--policy", "round_robin", "--sticky-key-idle-secs", "5"], "--sticky-key-idle-secs"),
        (["--policy", "manual", "--cache-threshold", "0.5"], "--cache-threshold"),
        (["--policy", "consistent_hashing", "--spill-abs-threshold", "3"], "--spill-abs-threshold"),
        (["--policy", "manual", "--prefix-token-count", "64"], "--prefix-token-count"),
        (["--policy", "round_robin", "--least-load-mean-prefill-tokens", "64"], "--least-load-mean-prefill-tokens"),
        (["--policy", "least_load", "--power-of-two-load-metric", "requests"], "--power-of-two-load-metric"),
        (["--policy", "manual", "--bounded-load-epsilon", "0.1"], "--bounded-load-epsilon"),
        (["--policy", "bounded_load", "--session-kv-idle-secs", "5"], "--session-kv-idle-secs"),
        (["--policy", "manual", "--assignment-mode", "min_load", "--kv-repin-max-tokens", "5"],
         "--kv-repin-max-tokens"),
        (["--policy", "cache_aware", "--kv-capacity-tokens", "1000"], "--kv-capacity-tokens"),
    ],
)
def test_a_flag_the_chosen_policy_does_not_read_is_an_error(argv, flag):
    message = refused(*argv)
    assert message.startswith(f"{flag} applies to ")
    assert f"not to --policy {argv[1]}" in message and "drop it or choose a policy that reads it" in message


@pytest.mark.parametrize(
    "argv",
    [
        ["--policy", "manual", "--assignment-mode", "min_group", "--max-idle-secs", "5",
         "--eviction-interval-secs", "1"],
        ["--policy", "cache_aware", "--routing-key-override", "--assignment-mode", "min_kv", "--kv-hot-min-keys", "2"],
        ["--policy", "round_robin", "--sticky-sessions", "--sticky-key-idle-secs", "5"],
        ["--policy", "cache_aware", "--cache-threshold", "0.5", "--least-load-kv-pressure-weight", "0.2"],
        ["--policy", "power_of_two", "--power-of-two-load-metric", "requests"],
        ["--policy", "prefix_hash", "--prefix-hash-load-factor", "2"],
        ["--policy", "bounded_load", "--bounded-load-measure", "kv", "--session-kv-idle-secs", "5",
         "--max-idle-secs", "9"],
        ["--policy", "manual", "--assignment-mode", "min_kv", "--session-kv-idle-secs", "5",
         "--kv-repin-headroom", "0"],
    ],
)
def test_a_flag_the_chosen_policy_reads_is_accepted(argv):
    assert parse_args(argv).policy == argv[1]


def test_every_policy_specific_flag_names_a_config_field():
    assert set(POLICY_SPECIFIC) <= {f for f in GatewayConfig.__dataclass_fields__}


def test_the_cli_prints_one_line_and_exits_2(capsys):
    for argv in (["--cache-threshld", "0.5"], ["--policy", "random", "--assignment-mode", "min_load"],
                 ["--policy", "manul"], ["--port", "x"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("smg-testbed gateway: error: ") and err.count("\n") == 1


def test_python_m_mock_gateway_refuses_without_a_traceback():
    p = subprocess.run([sys.executable, "-m", "mock_gateway", "--policy", "manul"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2
    assert p.stderr == ("smg-testbed gateway: error: unknown --policy 'manul' (did you mean manual?); one of random, "
                        "round_robin, passthrough, cache_aware, power_of_two, least_load, manual, consistent_hashing, "
                        "prefix_hash, bounded_load\n")
