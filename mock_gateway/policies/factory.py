"""The policy a gateway config asks for: ``--policy``, ``--assignment-mode`` and ``--routing-key-override``.

``POLICY_BUILDERS`` maps each ``--policy`` name to what builds it from the context: the policy's class, or for
``manual`` a function giving it its assignment strategy (``ASSIGNMENT_CLASSES``, default ``random``). Under
``--routing-key-override`` every policy but those in ``sticky.UNWRAPPED`` is wrapped in ``StickyOverride``,
whose shared manual map assigns with ``--assignment-mode`` (default ``delegate``: the wrapped policy chooses).
The names are those of ``config.POLICIES`` and of the ``--assignment-mode`` choices.
"""

from __future__ import annotations

from collections.abc import Callable

from mock_gateway.policies.assignment import (
    Assignment,
    DelegateAssignment,
    MinGroupAssignment,
    MinLoadAssignment,
    RandomAssignment,
)
from mock_gateway.policies.base import Policy, PolicyContext
from mock_gateway.policies.cache_aware import CacheAwarePolicy
from mock_gateway.policies.consistent_hashing import ConsistentHashingPolicy
from mock_gateway.policies.least_load import LeastLoadPolicy
from mock_gateway.policies.manual import ManualPolicy
from mock_gateway.policies.power_of_two import PowerOfTwoPolicy
from mock_gateway.policies.prefix_hash import PrefixHashPolicy
from mock_gateway.policies.random import PassthroughPolicy, RandomPolicy
from mock_gateway.policies.round_robin import RoundRobinPolicy
from mock_gateway.policies.sticky import UNWRAPPED, StickyOverride
from mock_gateway.policies.testbed.bounded_load import BoundedLoadPolicy
from mock_gateway.policies.testbed.min_kv import MinKvAssignment

ASSIGNMENT_CLASSES: dict[str, type[Assignment]] = {
    "random": RandomAssignment,
    "min_load": MinLoadAssignment,
    "min_group": MinGroupAssignment,
    "delegate": DelegateAssignment,
    "min_kv": MinKvAssignment,  # testbed extension
}


def assignment(ctx: PolicyContext, mode: str, wrapped: Policy | None = None) -> Assignment:
    """The ``mode`` strategy; ``delegate`` asks ``wrapped`` (the sticky override's policy) when there is one."""
    return DelegateAssignment(ctx, wrapped) if mode == "delegate" else ASSIGNMENT_CLASSES[mode](ctx)


def manual(ctx: PolicyContext) -> ManualPolicy:
    """``manual`` with ``--assignment-mode`` (default ``random``)."""
    return ManualPolicy(ctx, assignment(ctx, ctx.config.assignment_mode or "random"))


POLICY_BUILDERS: dict[str, Callable[[PolicyContext], Policy]] = {
    "manual": manual,
    "consistent_hashing": ConsistentHashingPolicy,
    "cache_aware": CacheAwarePolicy,
    "prefix_hash": PrefixHashPolicy,
    "round_robin": RoundRobinPolicy,
    "random": RandomPolicy,
    "passthrough": PassthroughPolicy,
    "power_of_two": PowerOfTwoPolicy,
    "least_load": LeastLoadPolicy,
    "bounded_load": BoundedLoadPolicy,  # testbed extension
}


def make_policy(ctx: PolicyContext) -> Policy:
    """The policy for ``ctx.config``; an unknown policy or assignment mode is a ``ValueError``."""
    cfg = ctx.config
    if cfg.policy not in POLICY_BUILDERS:
        raise ValueError(f"unknown policy {cfg.policy!r} (one of {', '.join(POLICY_BUILDERS)})")
    mode = cfg.assignment_mode
    if mode is not None and mode not in ASSIGNMENT_CLASSES:
        raise ValueError(f"unknown assignment mode {mode!r} (one of {', '.join(ASSIGNMENT_CLASSES)})")
    policy = POLICY_BUILDERS[cfg.policy](ctx)
    if not cfg.routing_key_override or cfg.policy in UNWRAPPED:
        return policy
    return StickyOverride(ctx, policy, ManualPolicy(ctx, assignment(ctx, mode or "delegate", policy)))
