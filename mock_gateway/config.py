"""Gateway configuration: ``parse_args(argv) -> GatewayConfig`` mirrors ``smg launch``'s flags and defaults (1.13.0).

Two defaults differ on purpose: ``--host`` and ``--prometheus-host`` bind loopback (SMG: all interfaces), so a
testbed gateway is never reachable from the network unless the command line says so. ``smg launch`` flags the
mock does not model (``smg_flags``) are accepted and listed by name in ``GatewayConfig.ignored`` (the CLI warns).
Anything else that could not do what the command line asks is a ``GatewayFlagError``: an unknown flag (with a
"did you mean"), a value argparse refuses, a value given to a switch, or a flag only other policies read
(``POLICY_SPECIFIC``; SMG would accept and ignore it). ``--seed`` is a testbed extension: every random choice of
the mock comes from one seeded ``random.Random``. A ``--policy`` that is not built in may name a plugin: an entry
point of the ``smg_testbed.policies`` group (``policies/factory.py``, docs/policies.md).

PD mode (``--pd-disaggregation --prefill URL [BOOTSTRAP_PORT|none] ... --decode URL ...``): each leg runs its own
policy (``--prefill-policy`` / ``--decode-policy``, else ``--policy``); ``leg_config(leg)`` is the configuration a
leg's policy instance sees (``policy`` replaced by the leg's). A flag only some policies read is accepted when any
leg's policy reads it.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from importlib.metadata import EntryPoint, entry_points
from typing import Any, NoReturn

from mock_gateway.smg_flags import BY_NARGS

POLICIES = [
    "random",
    "round_robin",
    "passthrough",
    "cache_aware",
    "power_of_two",
    "least_load",
    "manual",
    "consistent_hashing",
    "prefix_hash",
    "bounded_load",  # testbed extension (mock_gateway/policies/testbed/bounded_load.py)
]
ASSIGNMENT_MODES = ["random", "min_load", "min_group", "delegate", "min_kv"]  # min_kv: testbed extension
POLICY_ENTRY_POINTS = "smg_testbed.policies"
PD_LEGS = ("prefill", "decode")  # SMG's WorkerLeg in PD mode, in selection order


class GatewayFlagError(ValueError):
    """A gateway command line the mock cannot run as asked; the message is one line and names the fix."""


def policy_plugins() -> dict[str, EntryPoint]:
    """The installed policy plugins by name (entry points of ``POLICY_ENTRY_POINTS``; built-in names win)."""
    return {ep.name: ep for ep in entry_points(group=POLICY_ENTRY_POINTS) if ep.name not in POLICIES}


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"  # smg launch: 0.0.0.0
    port: int = 30000
    worker_urls: list[str] = field(default_factory=list)
    policy: str = "cache_aware"
    # routing keys and manual / sticky
    routing_key_headers: list[str] = field(default_factory=lambda: ["x-smg-routing-key"])
    routing_key_override: bool = False
    assignment_mode: str | None = None
    max_idle_secs: float = 14400
    eviction_interval_secs: float = 60
    # cache_aware
    cache_threshold: float = 0.3
    balance_abs_threshold: float = 64
    balance_rel_threshold: float = 1.5
    balance_token_usage_threshold: float = 1.0
    overload_token_usage_threshold: float = 1.0
    max_tree_size: int = 67108864
    block_size: int = 16
    # prefix_hash
    prefix_token_count: int = 256
    prefix_hash_load_factor: float = 1.25
    prefix_hash_balance_abs_threshold: float = 10
    # expected-wait selector
    least_load_kv_pressure_weight: float = 0.15
    least_load_default_throughput: float = 2000.0
    least_load_mean_prefill_tokens: int = 1024
    least_load_max_waiting_requests: int = 0
    power_of_two_load_metric: str = "expected_wait"
    # load monitor and overload protection
    load_monitor_interval: float = 10
    disable_load_monitoring: bool = False
    worker_overload_waiting_requests: int = 8
    worker_overload_token_usage: float = 0.8
    disable_worker_overload_protection: bool = False
    worker_overload_shed: bool = False
    # health, breaker, retries
    health_check_interval_secs: float = 60
    health_check_timeout_secs: float = 5
    health_check_endpoint: str = "/health"
    health_failure_threshold: int = 3
    health_success_threshold: int = 2
    disable_health_check: bool = False
    worker_startup_check_interval: float = 30
    worker_startup_timeout_secs: float = 1800
    retry_max_retries: int = 5
    retry_initial_backoff_ms: float = 50
    retry_max_backoff_ms: float = 30000
    retry_backoff_multiplier: float = 1.5
    retry_jitter_factor: float = 0.2
    disable_retries: bool = False
    cb_failure_threshold: int = 10
    cb_success_threshold: int = 3
    cb_timeout_duration_secs: float = 60
    cb_window_duration_secs: float = 120
    disable_circuit_breaker: bool = False
    request_timeout_secs: float = 1800
    max_payload_size: int = 536870912
    api_key: str | None = None
    # metrics and logging
    prometheus_host: str = "127.0.0.1"  # smg launch: the unspecified address of --host's family
    prometheus_port: int = 29000
    log_level: str = "info"
    # PD disaggregation (smg launch --pd-disaggregation)
    pd_disaggregation: bool = False
    prefill_urls: list[tuple[str, int | None]] = field(default_factory=list)  # (URL, bootstrap port or None)
    decode_urls: list[str] = field(default_factory=list)
    prefill_policy: str | None = None  # None: --policy
    decode_policy: str | None = None  # None: --policy
    # testbed extension
    seed: int | None = None
    # testbed extensions beyond SMG: bounded_load policy, manual --assignment-mode min_kv (docs/beyond-smg.md)
    bounded_load_epsilon: float = 0.25
    bounded_load_measure: str = "requests"
    session_kv_idle_secs: float = 60.0
    kv_capacity_tokens: int | None = None
    kv_repin_queue_ratio: float = 1.5
    kv_hot_min_keys: int = 1
    kv_load_smoothing_secs: float = 20.0
    kv_repin_max_tokens: int = 4096
    kv_repin_headroom: float = 0.2
    kv_repin_cooldown_secs: float = 30.0
    kv_repin_load_epsilon: float | None = None  # min_kv: re-pin off a worker over the bounded-load bound (None: off)
    kv_repin_spill_gap: int | None = None  # min_kv: re-pin off a KV-full worker this many requests busier (None: off)
    ignored: list[str] = field(default_factory=list)

    @property
    def max_attempts(self) -> int:
        """Attempts per request (``--disable-retries`` means one)."""
        return 1 if self.disable_retries else max(1, self.retry_max_retries)

    @property
    def overload_protection(self) -> bool:
        return not self.disable_worker_overload_protection

    def leg_policy(self, leg: str) -> str:
        """The policy of a PD leg (``prefill`` or ``decode``): its own flag, else ``--policy``."""
        own = self.prefill_policy if leg == "prefill" else self.decode_policy
        return own or self.policy

    def leg_config(self, leg: str) -> GatewayConfig:
        """The configuration the leg's policy instance reads: this one with ``policy`` = the leg's policy."""
        return replace(self, policy=self.leg_policy(leg))

    def startup_workers(self) -> list[tuple[str, str, int | None]]:
        """The command line's workers in registration order as (URL, worker type, bootstrap port): the
        ``--worker-urls``, or in PD mode the prefill workers, then the decode workers."""
        if not self.pd_disaggregation:
            return [(url, "regular", None) for url in dict.fromkeys(self.worker_urls)]
        return [*((url, "prefill", port) for url, port in self.prefill_urls),
                *((url, "decode", None) for url in self.decode_urls)]

    def policies(self) -> list[str]:
        """The policies in use: ``--policy``, or in PD mode each leg's (prefill first)."""
        if not self.pd_disaggregation:
            return [self.policy]
        return list(dict.fromkeys(self.leg_policy(leg) for leg in PD_LEGS))


def _suggestion(word: str, candidates: list[str]) -> str:
    """`` (did you mean X?)`` for the closest candidate, or nothing."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class _Unmodelled(argparse.Action):
    """An ``smg launch`` flag the mock does not model: its values are consumed, its name listed in ``ignored``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        namespace.ignored = [*(getattr(namespace, "ignored", None) or []), option_string]


class GatewayArgumentParser(argparse.ArgumentParser):
    """argparse for the gateway: it knows each flag's action and raises ``GatewayFlagError`` instead of exiting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.flags: dict[str, argparse.Action] = {}  # every option string -> its action
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.flags.update(dict.fromkeys(action.option_strings, action))
        return action

    def error(self, message: str) -> NoReturn:
        if m := re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message):
            message += _suggestion(m[1], re.findall(r"'([^']*)'", m[2]))
        if m := re.match(r"argument (\S+?)(?:/\S+)?: ignored explicit argument '(.*)'$", message):
            message = _switch_value(m[1], m[2])
        raise GatewayFlagError(message)


def _switch_value(flag: str, value: str) -> str:
    return (f"{flag} is a switch and takes no value (got {value!r}), as in smg launch: "
            f"give {flag} alone to turn it on, leave it out for off")


def build_parser() -> GatewayArgumentParser:
    d = GatewayConfig()
    p = GatewayArgumentParser(
        prog="smg-testbed gateway",
        description="Mock SMG gateway: takes smg launch (1.13.0) flags. Flags of smg launch the mock does not model "
        "are accepted with a warning; any other unknown flag is an error, and so is a flag the chosen policy does "
        "not read (e.g. --assignment-mode without manual or --routing-key-override, --cache-threshold without "
        "cache_aware). Switches take no value, as in smg launch.",
        allow_abbrev=False,
    )
    a = p.add_argument
    a("--host", default=d.host,
      help="bind address (default 127.0.0.1, loopback; smg launch binds 0.0.0.0): another address exposes an "
      "unauthenticated gateway to the network, and the gateway warns")
    a("--port", type=int, default=d.port)
    a("--worker-urls", nargs="*", default=[])
    a("--policy", default=d.policy, metavar="POLICY",
      help=f"one of {', '.join(POLICIES)}, or a plugin's name (entry point group {POLICY_ENTRY_POINTS}; "
      "docs/policies.md)")
    a("--routing-key-headers", nargs="*", default=None)
    a("--routing-key-override", "--sticky-sessions", action="store_true")
    a("--assignment-mode", choices=ASSIGNMENT_MODES, default=None,
      help="manual's assignment (default random), or the --routing-key-override map's (default delegate)")
    a("--max-idle-secs", "--sticky-key-idle-secs", type=float, default=d.max_idle_secs)
    a("--eviction-interval-secs", type=float, default=d.eviction_interval_secs)
    a("--cache-threshold", "--cache-match-threshold", type=float, default=d.cache_threshold)
    a("--balance-abs-threshold", "--spill-abs-threshold", type=float, default=d.balance_abs_threshold)
    a("--balance-rel-threshold", "--spill-rel-threshold", type=float, default=d.balance_rel_threshold)
    a("--balance-token-usage-threshold", type=float, default=d.balance_token_usage_threshold)
    a("--overload-token-usage-threshold", type=float, default=d.overload_token_usage_threshold)
    a("--max-tree-size", type=int, default=d.max_tree_size)
    a("--block-size", type=int, default=d.block_size)
    a("--prefix-token-count", type=int, default=d.prefix_token_count)
    a("--prefix-hash-load-factor", type=float, default=d.prefix_hash_load_factor)
    a("--prefix-hash-balance-abs-threshold", type=float, default=d.prefix_hash_balance_abs_threshold)
    a("--least-load-kv-pressure-weight", type=float, default=d.least_load_kv_pressure_weight)
    a("--least-load-default-throughput", type=float, default=d.least_load_default_throughput)
    a("--least-load-mean-prefill-tokens", type=int, default=d.least_load_mean_prefill_tokens)
    a("--least-load-max-waiting-requests", type=int, default=d.least_load_max_waiting_requests)
    a(
        "--power-of-two-load-metric",
        choices=["expected_wait", "requests", "least_requests"],
        default=d.power_of_two_load_metric,
    )
    a("--load-monitor-interval", type=float, default=d.load_monitor_interval)
    a("--disable-load-monitoring", action="store_true")
    a("--worker-overload-waiting-requests", type=int, default=d.worker_overload_waiting_requests)
    a("--worker-overload-token-usage", type=float, default=d.worker_overload_token_usage)
    a("--worker-overload-protection", action="store_true")
    a("--disable-worker-overload-protection", action="store_true")
    a("--worker-overload-shed", action="store_true")
    a("--health-check-interval-secs", type=float, default=d.health_check_interval_secs)
    a("--health-check-timeout-secs", type=float, default=d.health_check_timeout_secs)
    a("--health-check-endpoint", default=d.health_check_endpoint)
    a("--health-failure-threshold", type=int, default=d.health_failure_threshold)
    a("--health-success-threshold", type=int, default=d.health_success_threshold)
    a("--disable-health-check", action="store_true")
    a("--worker-startup-check-interval", type=float, default=d.worker_startup_check_interval)
    a("--worker-startup-timeout-secs", type=float, default=d.worker_startup_timeout_secs)
    a("--retry-max-retries", type=int, default=d.retry_max_retries)
    a("--retry-initial-backoff-ms", type=float, default=d.retry_initial_backoff_ms)
    a("--retry-max-backoff-ms", type=float, default=d.retry_max_backoff_ms)
    a("--retry-backoff-multiplier", type=float, default=d.retry_backoff_multiplier)
    a("--retry-jitter-factor", type=float, default=d.retry_jitter_factor)
    a("--disable-retries", action="store_true")
    a("--cb-failure-threshold", type=int, default=d.cb_failure_threshold)
    a("--cb-success-threshold", type=int, default=d.cb_success_threshold)
    a("--cb-timeout-duration-secs", type=float, default=d.cb_timeout_duration_secs)
    a("--cb-window-duration-secs", type=float, default=d.cb_window_duration_secs)
    a("--disable-circuit-breaker", action="store_true")
    a("--request-timeout-secs", type=float, default=d.request_timeout_secs)
    a("--max-payload-size", type=int, default=d.max_payload_size)
    a("--api-key", default=None)
    a("--prometheus-host", default=None,
      help="bind address of the metrics port (default loopback of --host's family: 127.0.0.1 or ::1; smg launch "
      "binds the unspecified address)")
    a("--prometheus-port", type=int, default=d.prometheus_port)
    a("--log-level", choices=["debug", "info", "warn", "error"], default=d.log_level)
    a("--seed", type=int, default=None, help="testbed extension: seed of the mock's random choices")
    a("--pd-disaggregation", action="store_true",
      help="PD mode: prefill and decode workers (--prefill, --decode), one worker of each per request")
    a("--prefill", nargs="+", action="append", default=None, metavar="PREFILL",
      help="PD: a prefill worker, --prefill URL [BOOTSTRAP_PORT|none] (no port: none); repeat for more")
    a("--decode", action="append", default=None, metavar="URL", help="PD: a decode worker URL; repeat for more")
    a("--prefill-policy", default=None, metavar="POLICY", help="PD: the prefill leg's policy (default --policy)")
    a("--decode-policy", default=None, metavar="POLICY", help="PD: the decode leg's policy (default --policy)")
    # testbed extensions beyond SMG (docs/beyond-smg.md)
    a("--bounded-load-epsilon", type=float, default=d.bounded_load_epsilon, help="bounded_load: bound (1+eps)*avg")
    a(
        "--bounded-load-measure",
        choices=["requests", "kv"],
        default=d.bounded_load_measure,
        help="bounded_load: load = in-flight requests or projected resident session KV",
    )
    a(
        "--session-kv-idle-secs",
        type=float,
        default=d.session_kv_idle_secs,
        help="bounded_load kv / min_kv: a key's context counts in its worker's working set until idle this long",
    )
    a(
        "--kv-capacity-tokens",
        type=int,
        default=None,
        help="min_kv: KV capacity per worker in tokens (default: polled max_total_num_tokens)",
    )
    a("--kv-repin-queue-ratio", type=float, default=d.kv_repin_queue_ratio,
      help="min_kv: a worker is hot when its smoothed in-flight per live key is this many times the median")
    a("--kv-hot-min-keys", type=int, default=d.kv_hot_min_keys,
      help="min_kv: a worker's busy share is measured only while it holds this many live keys")
    a("--kv-load-smoothing-secs", type=float, default=d.kv_load_smoothing_secs)
    a("--kv-repin-max-tokens", type=int, default=d.kv_repin_max_tokens,
      help="min_kv: move a key off a hot worker only while its context is at most this (a move is a cold prefill)")
    a("--kv-repin-headroom", type=float, default=d.kv_repin_headroom)
    a("--kv-repin-cooldown-secs", type=float, default=d.kv_repin_cooldown_secs)
    a("--kv-repin-load-epsilon", type=float, default=d.kv_repin_load_epsilon,
      help="min_kv: re-pin a key off a worker whose in-flight requests reach ceil((1+eps)*average) (default off)")
    a("--kv-repin-spill-gap", type=int, default=d.kv_repin_spill_gap,
      help="min_kv: re-pin a key off a KV-full worker with this many more in-flight requests than one with room "
           "(default off)")
    for flags, nargs in BY_NARGS:
        for flag in flags:
            a(flag, action=_Unmodelled, nargs=nargs, dest="ignored", default=None, help=argparse.SUPPRESS)
    return p


def _sticky_map(c: GatewayConfig) -> bool:
    """manual, or the shared manual map ``--routing-key-override`` wraps every policy but consistent_hashing in."""
    return c.policy == "manual" or (c.routing_key_override and c.policy != "consistent_hashing")


def _min_kv(c: GatewayConfig) -> bool:
    return _sticky_map(c) and c.assignment_mode == "min_kv"


def _policy_is(*names: str) -> Callable[[GatewayConfig], bool]:
    return lambda c: c.policy in names


# Flags only some configurations read (shared/specs/smg-policies.md, docs/beyond-smg.md): field -> (who reads
# it, whether this config does). Given to another policy SMG accepts such a flag and ignores it; the testbed refuses,
# since the run could not do what the command line asks.
_EXPECTED_WAIT = ("the expected-wait selector (cache_aware, least_load, power_of_two)",
                  _policy_is("cache_aware", "least_load", "power_of_two"))
_CACHE_AWARE = ("cache_aware", _policy_is("cache_aware"))
_PREFIX_HASH = ("prefix_hash", _policy_is("prefix_hash"))
_BOUNDED_LOAD = ("bounded_load", _policy_is("bounded_load"))
_MIN_KV = ("--assignment-mode min_kv (with manual or --routing-key-override)", _min_kv)
POLICY_SPECIFIC: dict[str, tuple[str, Callable[[GatewayConfig], bool]]] = {
    "assignment_mode": ("manual and the --routing-key-override map", _sticky_map),
    "max_idle_secs": ("manual, bounded_load and the --routing-key-override map",
                      lambda c: _sticky_map(c) or c.policy == "bounded_load"),
    "eviction_interval_secs": ("manual, cache_aware, bounded_load and the --routing-key-override map",
                               lambda c: _sticky_map(c) or c.policy in ("cache_aware", "bounded_load")),
    "cache_threshold": _CACHE_AWARE,
    "balance_abs_threshold": _CACHE_AWARE,
    "balance_rel_threshold": _CACHE_AWARE,
    "balance_token_usage_threshold": _CACHE_AWARE,
    "overload_token_usage_threshold": _CACHE_AWARE,
    "max_tree_size": _CACHE_AWARE,
    "prefix_token_count": _PREFIX_HASH,
    "prefix_hash_load_factor": _PREFIX_HASH,
    "prefix_hash_balance_abs_threshold": _PREFIX_HASH,
    "least_load_kv_pressure_weight": _EXPECTED_WAIT,
    "least_load_default_throughput": _EXPECTED_WAIT,
    "least_load_mean_prefill_tokens": _EXPECTED_WAIT,
    "least_load_max_waiting_requests": _EXPECTED_WAIT,
    "power_of_two_load_metric": ("power_of_two", _policy_is("power_of_two")),
    "bounded_load_epsilon": _BOUNDED_LOAD,
    "bounded_load_measure": _BOUNDED_LOAD,
    "session_kv_idle_secs": ("bounded_load --bounded-load-measure kv and --assignment-mode min_kv",
                             lambda c: (c.policy == "bounded_load" and c.bounded_load_measure == "kv") or _min_kv(c)),
    "kv_capacity_tokens": _MIN_KV,
    "kv_repin_queue_ratio": _MIN_KV,
    "kv_hot_min_keys": _MIN_KV,
    "kv_load_smoothing_secs": _MIN_KV,
    "kv_repin_max_tokens": _MIN_KV,
    "kv_repin_headroom": _MIN_KV,
    "kv_repin_cooldown_secs": _MIN_KV,
    "kv_repin_load_epsilon": _MIN_KV,
    "kv_repin_spill_gap": _MIN_KV,
}


def _unknown_tokens(p: GatewayArgumentParser, argv: list[str], unknown: list[str]) -> str | None:
    """What is wrong with the tokens argparse could not place: an unknown flag, or a value no flag takes."""
    for token in unknown:
        if token.startswith("-"):
            name = token.partition("=")[0]
            return f"unknown gateway flag {name}{_suggestion(name, list(p.flags))} (not an smg launch flag either)"
    for i, token in enumerate(argv[1:], 1):
        action = p.flags.get(argv[i - 1])
        if token in unknown and action is not None and action.nargs == 0:
            return _switch_value(argv[i - 1], token)
    return f"unexpected value {unknown[0]!r}: a value must follow the flag it belongs to"


def _not_applicable(cfg: GatewayConfig, given: dict[str, str]) -> str | None:
    """The first flag given that no policy in use would read (PD: neither leg's), as an error message."""
    readers = [cfg.leg_config(leg) for leg in PD_LEGS] if cfg.pd_disaggregation else [cfg]
    for dest, spelling in given.items():
        if dest in POLICY_SPECIFIC and not any(POLICY_SPECIFIC[dest][1](c) for c in readers):
            mode = f" --assignment-mode {cfg.assignment_mode}" if cfg.assignment_mode and _sticky_map(cfg) else ""
            policy = " / ".join(f"--policy {c.policy}" for c in readers)
            return (f"{spelling} applies to {POLICY_SPECIFIC[dest][0]} only, not to {policy}{mode}: "
                    "the run would ignore it (smg does so silently), so drop it or choose a policy that reads it")
    return None


def _prefill_urls(values: list[list[str]]) -> list[tuple[str, int | None]]:
    """``--prefill URL [BOOTSTRAP_PORT|none]`` occurrences as (URL, port), as smg's ``_parse_prefill_urls``."""
    out: list[tuple[str, int | None]] = []
    for args in values:
        if len(args) > 2:
            raise GatewayFlagError(f"--prefill takes a URL and at most one bootstrap port, got {' '.join(args)}")
        port: int | None = None
        if len(args) == 2 and args[1].lower() != "none":
            try:
                port = int(args[1])
            except ValueError:
                raise GatewayFlagError(f"Invalid bootstrap port: {args[1]}. Must be a number or 'none'") from None
            if not 0 < port < 65536:
                raise GatewayFlagError(f"Invalid bootstrap port: {args[1]}. Must be in 1..65535")
        out.append((args[0].rstrip("/"), port))
    return out


def _pd_problem(cfg: GatewayConfig, values: dict[str, Any]) -> str | None:
    """What is wrong with the PD flags, or None."""
    pd_only = [f for f, v in (("--prefill", values["prefill"]), ("--decode", values["decode"]),
                              ("--prefill-policy", cfg.prefill_policy), ("--decode-policy", cfg.decode_policy)) if v]
    if not cfg.pd_disaggregation:
        return f"{pd_only[0]} needs --pd-disaggregation" if pd_only else None
    if cfg.worker_urls:
        return "--worker-urls is not used with --pd-disaggregation: give the workers with --prefill and --decode"
    return None


def switch_flags() -> frozenset[str]:
    """Every flag the gateway takes without a value: its own switches and SMG's that it does not model."""
    return frozenset(flag for flag, action in build_parser().flags.items() if action.nargs == 0)


def parse_args(argv: list[str] | None = None) -> GatewayConfig:
    """Parse ``smg launch``-style arguments; anything that cannot be run as asked raises ``GatewayFlagError``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    ns, unknown = p.parse_known_args(argv)
    if unknown:
        raise GatewayFlagError(_unknown_tokens(p, argv, unknown))
    given = {p.flags[t.partition("=")[0]].dest: t.partition("=")[0]
             for t in argv if t.startswith("--") and t.partition("=")[0] in p.flags}
    values = vars(ns)
    names = {f.name for f in fields(GatewayConfig)} - {"ignored"}
    cfg = GatewayConfig(**{k: v for k, v in values.items() if k in names and v is not None})
    cfg.ignored = values["ignored"] or []
    if values["routing_key_headers"]:
        cfg.routing_key_headers = [h.lower() for h in values["routing_key_headers"]]
    if values["prometheus_host"] is None and ":" in cfg.host:
        cfg.prometheus_host = "::1"
    if values["prefill"]:
        cfg.prefill_urls = _prefill_urls(values["prefill"])
    if values["decode"]:
        cfg.decode_urls = [u.rstrip("/") for u in values["decode"]]
    if problem := _pd_problem(cfg, values):
        raise GatewayFlagError(problem)
    for flag, name in (("--policy", cfg.policy), ("--prefill-policy", cfg.prefill_policy),
                       ("--decode-policy", cfg.decode_policy)):
        if name is not None and name not in POLICIES and name not in (plugins := policy_plugins()):
            known = [*POLICIES, *plugins]
            raise GatewayFlagError(f"unknown {flag} {name!r}{_suggestion(name, known)}; one of {', '.join(known)}")
    if problem := _not_applicable(cfg, given):
        raise GatewayFlagError(problem)
    return cfg
