"""The policy factory: every ``--policy`` x ``--assignment-mode`` (x ``--routing-key-override``) the CLI accepts
builds the policy it names; an unknown name is refused with the known ones.

Specification: ``manual`` is ``ManualPolicy`` with the mode's assignment strategy (default ``random``);
any other policy is its class, wrapped under ``--routing-key-override`` (except consistent_hashing) in a
``StickyOverride`` whose shared manual map assigns with the mode (default ``delegate``: the wrapped policy).
A mode given where no manual map reads it is refused by ``parse_args``.
"""

import random
import re

import pytest

from mock_gateway import config
from mock_gateway.config import GatewayConfig, GatewayFlagError, parse_args
from mock_gateway.metrics import GatewayMetrics
from mock_gateway.policies.assignment import DelegateAssignment
from mock_gateway.policies.base import PolicyContext
from mock_gateway.policies.consistent_hashing import ConsistentHashingPolicy
from mock_gateway.policies.factory import ASSIGNMENT_CLASSES, POLICY_BUILDERS, make_policy
from mock_gateway.policies.manual import ManualPolicy
from mock_gateway.policies.sticky import UNWRAPPED, StickyOverride
from mock_gateway.policies.testbed.bounded_load import BoundedLoadPolicy
from mock_gateway.policies.testbed.min_kv import MinKvAssignment
from mock_gateway.workers import WorkerRegistry


def cli_modes() -> list[str]:
    (action,) = [a for a in config.build_parser()._actions if "--assignment-mode" in a.option_strings]
    return list(action.choices)


MODES = [None, *cli_modes()]


def build(cfg: GatewayConfig):
    return make_policy(PolicyContext(cfg, random.Random(0), WorkerRegistry(), GatewayMetrics()))


def test_the_factory_knows_exactly_the_cli_names():
    assert set(POLICY_BUILDERS) == set(config.POLICIES)
    assert set(ASSIGNMENT_CLASSES) == set(cli_modes())


def test_the_testbed_rules_are_the_ones_under_testbed():
    assert POLICY_BUILDERS["bounded_load"] is BoundedLoadPolicy
    assert ASSIGNMENT_CLASSES["min_kv"] is MinKvAssignment
    testbed = {n for n, b in POLICY_BUILDERS.items() if ".testbed." in b.__module__}
    assert testbed == {"bounded_load"}
    assert {n for n, c in ASSIGNMENT_CLASSES.items() if ".testbed." in c.__module__} == {"min_kv"}


@pytest.mark.parametrize("mode", MODES)
def test_manual_is_the_manual_policy_with_the_modes_assignment(mode):
    for override in ([], ["--routing-key-override"]):
        argv = ["--policy", "manual", *override, *(["--assignment-mode", mode] if mode else [])]
        policy = build(parse_args(argv))
        assert type(policy) is ManualPolicy
        assert type(policy.assignment) is ASSIGNMENT_CLASSES[mode or "random"]
        if mode == "delegate":
            assert policy.assignment.delegate is None  # manual itself: min_load


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", [n for n in config.POLICIES if n != "manual"])
def test_other_policies_are_their_class_wrapped_by_the_sticky_override(name, mode):
    modes = ["--assignment-mode", mode] if mode else []
    plain = build(parse_args(["--policy", name]))
    assert type(plain) is POLICY_BUILDERS[name] and plain.name == name
    if mode:  # without a sticky map nothing reads the mode: refused rather than ignored
        with pytest.raises(GatewayFlagError, match=r"^--assignment-mode applies to manual and the "):
            parse_args(["--policy", name, *modes])
    if name in UNWRAPPED:
        policy = build(parse_args(["--policy", name, "--routing-key-override"]))
        assert type(policy) is POLICY_BUILDERS[name] is ConsistentHashingPolicy
        if mode:
            with pytest.raises(GatewayFlagError, match=r"^--assignment-mode applies to manual and the "):
                parse_args(["--policy", name, "--routing-key-override", *modes])
        return
    policy = build(parse_args(["--policy", name, "--routing-key-override", *modes]))
    assert type(policy) is StickyOverride and policy.name == name
    assert type(policy.inner) is POLICY_BUILDERS[name]
    assert type(policy.sticky) is ManualPolicy
    assert type(policy.sticky.assignment) is ASSIGNMENT_CLASSES[mode or "delegate"]
    if mode in (None, "delegate"):
        assert policy.sticky.assignment.delegate is policy.inner
    assert isinstance(policy.sticky.assignment, DelegateAssignment) == (mode in (None, "delegate"))


def test_each_build_is_a_fresh_policy():
    cfg = parse_args(["--policy", "cache_aware", "--routing-key-override"])
    a, b = build(cfg), build(cfg)
    assert a is not b and a.inner is not b.inner and a.sticky.assignment is not b.sticky.assignment


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (GatewayConfig(policy="nope"), "unknown policy 'nope' (one of manual, consistent_hashing, "),
        (GatewayConfig(policy="manual", assignment_mode="fastest"), "unknown assignment mode 'fastest' (one of random"),
        (GatewayConfig(policy="random", assignment_mode="min_kv+load"), "unknown assignment mode 'min_kv+load'"),
    ],
)
def test_unknown_names_are_refused_with_the_known_ones(cfg, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        build(cfg)
