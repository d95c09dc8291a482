"""``POLICY[/ASSIGNMENT_MODE]``: the one parser of policy names for every command (run, sweep, replay, conformance).

The names are the mock gateway's (its ``--policy`` and ``--assignment-mode`` choices, and the policies plugged in
through the ``smg_testbed.policies`` entry point group); a mistyped one is a one-line error with a "did you mean"
suggestion, and an assignment mode applies to ``manual`` only.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from mock_gateway.config import ASSIGNMENT_MODES, POLICIES, policy_plugins
from sim.runner import PolicyConfig


def unknown_name(kind: str, name: str, known: Sequence[str]) -> str:
    """``unknown policy 'manul' (did you mean 'manual'?); choose from ...``"""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; choose from {', '.join(known)}"


def check_policy(policy: str, mode: str | None = None) -> PolicyConfig:
    """The configuration of ``policy`` with assignment ``mode``; ValueError (one line) when either is unknown or
    the mode is given to a policy other than manual."""
    if policy not in POLICIES and policy not in (plugins := policy_plugins()):
        raise ValueError(unknown_name("policy", policy, [*POLICIES, *plugins]))
    if mode is not None:
        if mode not in ASSIGNMENT_MODES:
            raise ValueError(unknown_name("assignment mode", mode, ASSIGNMENT_MODES))
        if policy != "manual":
            raise ValueError(f"--assignment-mode {mode} applies to --policy manual only, not {policy!r}; "
                             "drop it or use manual")
    return PolicyConfig(policy, mode)


def parse_policy(text: str, default_mode: str | None = None) -> PolicyConfig:
    """``manual/min_load`` -> PolicyConfig("manual", "min_load"); ``consistent_hashing`` -> no mode; a manual
    policy without a mode gets ``default_mode``."""
    policy, sep, mode = text.strip().partition("/")
    if not policy or (sep and not mode):
        raise ValueError(f"bad policy {text!r}: write POLICY or manual/ASSIGNMENT_MODE")
    return check_policy(policy, mode or (default_mode if policy == "manual" else None))
