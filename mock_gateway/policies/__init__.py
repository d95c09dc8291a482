"""SMG's routing policies, one per file; see ``base.py`` for the interface and the registry."""

from mock_gateway.policies.base import REGISTRY, Choice, Policy, PolicyContext, RouteInput, policy_class

__all__ = ["REGISTRY", "Choice", "Policy", "PolicyContext", "RouteInput", "policy_class"]
