"""The policy a gateway config asks for: ``--policy``, ``--assignment-mode`` and ``--routing-key-override``.

``POLICY_BUILDERS`` maps each ``--policy`` name to what builds it from the context: the policy's class, or for
``manual`` a function giving it its assignment strategy (``ASSIGNMENT_CLASSES``, default ``random``). Under
``--routing-key-override`` every policy but those in ``sticky.UNWRAPPED`` is wrapped in ``StickyOverride``,
whose shared manual map assigns with ``--assignment-mode`` (default ``delegate``: the wrapped policy chooses).
The names are those of ``config.POLICIES`` and of ``config.ASSIGNMENT_MODES``.

A name that is not built in is looked up among the installed plugins: entry points of the group
``smg_testbed.policies`` (``config.POLICY_ENTRY_POINTS``) whose object is a ``Policy`` subclass or any builder
taking the ``PolicyContext``. A plugin that does not load or build a ``Policy`` is a ``PolicyPluginError``
naming the entry point (docs/policies.md).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint

from mock_gateway.config import POLICY_ENTRY_POINTS, policy_plugins
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


class PolicyPluginError(ValueError):
    """A policy plugin that does not load, or whose builder does not give a ``Policy``."""


def _plugin_error(ep: EntryPoint, problem: str) -> PolicyPluginError:
    return PolicyPluginError(f"policy plugin {ep.name!r} (entry point {ep.name} = {ep.value} in group "
                             f"{POLICY_ENTRY_POINTS}) {problem}")


def build_plugin(ep: EntryPoint, ctx: PolicyContext) -> Policy:
    """The policy plugin ``ep`` builds; it is named after the entry point unless its class sets ``name``."""
    try:
        builder = ep.load()
    except Exception as e:  # any import-time failure of foreign code is the plugin's, reported as one line
        raise _plugin_error(ep, f"does not load: {type(e).__name__}: {e}") from e
    if not callable(builder):
        raise _plugin_error(ep, f"is a {type(builder).__name__}, not a Policy subclass or a builder of one")
    try:
        policy = builder(ctx)
    except Exception as e:
        raise _plugin_error(ep, f"failed to build: {type(e).__name__}: {e}") from e
    if not isinstance(policy, Policy):
        raise _plugin_error(ep, f"built a {type(policy).__name__}, not a Policy")
    if not policy.name:
        policy.name = ep.name
    return policy


def make_policy(ctx: PolicyContext) -> Policy:
    """The policy for ``ctx.config``; an unknown policy or assignment mode is a ``ValueError``."""
    cfg = ctx.config
    mode = cfg.assignment_mode
    if mode is not None and mode not in ASSIGNMENT_CLASSES:
        raise ValueError(f"unknown assignment mode {mode!r} (one of {', '.join(ASSIGNMENT_CLASSES)})")
    if cfg.policy in POLICY_BUILDERS:
        policy = POLICY_BUILDERS[cfg.policy](ctx)
    elif (ep := policy_plugins().get(cfg.policy)) is not None:
        policy = build_plugin(ep, ctx)
    else:
        raise ValueError(f"unknown policy {cfg.policy!r} (one of {', '.join(POLICY_BUILDERS)}, "
                         f"or a plugin of entry point group {POLICY_ENTRY_POINTS})")
    if not cfg.routing_key_override or cfg.policy in UNWRAPPED:
        return policy
    return StickyOverride(ctx, policy, ManualPolicy(ctx, assignment(ctx, mode or "delegate", policy)))
