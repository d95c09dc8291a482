"""Run one configuration of a scenario through a transport and return its measures.

``run_setup(setup, transport="http")`` is what ``run``, ``compare`` and ``sweep`` call, once per
configuration (possibly in worker processes). A result row holds the configuration (``policy``,
``assignment_mode``, ``routing_key``, ``gateway_args``, ``transport``, ``seed``) and every measure of
``sim.measures.summarize`` (an ``external`` row also ``warnings``: ``external_warnings``; a run under the
co-simulated clock ``timeseries``, the workers' time series: ``sim.series``); ``wall_seconds``
and per-request samples are kept apart (``_meta``), since results must repeat bit for bit for a seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sim.agents import AgentRunner, RequestRecord
from sim.faults import with_faults
from sim.measures import selection_policies, summarize
from sim.real_smg import flag_value
from sim.transports.base import Transport
from sim.transports.pool import Setup
from sim.workload.scenario import Scenario
from sim.worst_worker import RequestHit

TRANSPORTS = ("http", "direct", "external", "live")


@dataclass(frozen=True)
class PolicyConfig:
    """A gateway policy under test: ``--policy`` plus optional ``--assignment-mode`` and further flags; on a PD pool
    optionally a leg's own policy (``--prefill-policy`` / ``--decode-policy``; None: ``--policy``)."""

    policy: str
    assignment_mode: str | None = None
    extra: tuple[str, ...] = ()
    prefill_policy: str | None = None
    decode_policy: str | None = None

    @property
    def legs(self) -> tuple[tuple[str, str], ...]:
        """The legs with a policy of their own: (``prefill``/``decode``, policy)."""
        return tuple((leg, p) for leg, p in (("prefill", self.prefill_policy), ("decode", self.decode_policy)) if p)

    @property
    def name(self) -> str:
        base = self.policy if self.assignment_mode is None else f"{self.policy}/{self.assignment_mode}"
        base += "".join(f" {leg}={p}" for leg, p in self.legs)
        return base + (" " + " ".join(self.extra) if self.extra else "")

    def gateway_args(self) -> tuple[str, ...]:
        args: list[str] = ["--policy", self.policy]
        if self.assignment_mode is not None:
            args += ["--assignment-mode", self.assignment_mode]
        for leg, p in self.legs:
            args += [f"--{leg}-policy", p]
        return (*args, *self.extra)


# compare: the sticky modes of manual, the two other key-aware policies, and the no-affinity baseline
COMPARE_POLICIES: tuple[PolicyConfig, ...] = (
    PolicyConfig("manual", "random"),
    PolicyConfig("manual", "min_load"),
    PolicyConfig("manual", "min_group"),
    PolicyConfig("consistent_hashing"),
    PolicyConfig("cache_aware"),
    PolicyConfig("round_robin"),
)


# compare on a PD pool (issue 18): both legs manual, prefill manual with decode round_robin, consistent_hashing (one
# ring over both worker types), cache_aware; each with the key on and off
PD_COMPARE_POLICIES: tuple[PolicyConfig, ...] = (
    PolicyConfig("manual", "min_load"),
    PolicyConfig("manual", "min_load", decode_policy="round_robin"),
    PolicyConfig("consistent_hashing"),
    PolicyConfig("cache_aware"),
)
# ... and the same workload on a co-located pool of the same total worker count: what the key buys there
COLOCATED_BASELINE_POLICIES: tuple[PolicyConfig, ...] = (
    PolicyConfig("manual", "min_load"),
    PolicyConfig("consistent_hashing"),
    PolicyConfig("cache_aware"),
)
COLOCATED = "colocated"  # a row's ``pool`` when it is a PD scenario's co-located baseline (a PD run's: ``pd``)


def make_setup(scenario: Scenario, policy: PolicyConfig, routing_key: bool, seed: int | None = None) -> Setup:
    """One configuration; on a PD pool the gateway runs in PD mode (``--pd-disaggregation``), each leg with its
    policy (the row says both: ``prefill_policy``, ``decode_policy``)."""
    seed = scenario.seed if seed is None else seed
    label = f"{policy.name} key={'on' if routing_key else 'off'}"
    extra: dict[str, Any] = {"policy": policy.policy, "assignment_mode": policy.assignment_mode}
    args = policy.gateway_args()
    if scenario.pd:
        args = ("--pd-disaggregation", *args)
        extra.update(pool="pd", prefill_policy=policy.prefill_policy or policy.policy,
                     decode_policy=policy.decode_policy or policy.policy,
                     oracle_prompt_only=scenario.prompt_only_ceiling)
    return Setup(scenario, args, routing_key, seed, label, extra=extra)


def colocated_setup(scenario: Scenario, policy: PolicyConfig, routing_key: bool, seed: int | None = None) -> Setup:
    """A PD scenario's co-located baseline under ``policy``: ``scenario.colocated()``, labelled ``colocated ...``."""
    setup = make_setup(scenario.colocated(), policy, routing_key, seed)
    return dataclasses.replace(setup, label=f"{COLOCATED} {setup.label}", extra={**setup.extra, "pool": COLOCATED})


@contextlib.contextmanager
def open_transport(kind: str, setup: Setup, *, session_url: str | None = None, gateway_url: str | None = None,
                   worker_urls: Sequence[str] | None = None, metrics_url: str | None = None) -> Iterator[Transport]:
    """A transport for one run; everything it started is stopped on exit."""
    if kind == "direct":
        from sim.transports.direct import DirectTransport

        tr: Any = DirectTransport(setup, list(worker_urls) if worker_urls else None)
    elif kind == "http":
        from sim.transports.http import HttpTransport

        tr = HttpTransport(setup, list(worker_urls) if worker_urls else None)
    elif kind == "live":  # live time, mock or real smg gateway (setup.extra: gateway, speedup; sim.live)
        from sim.live import LiveTransport

        tr = LiveTransport(setup, list(worker_urls) if worker_urls else None)
    elif kind == "external":
        from sim.transports.http import ExternalTransport

        tr = ExternalTransport(setup, session_url=session_url, gateway_url=gateway_url,
                               worker_urls=list(worker_urls or []), metrics_url=metrics_url)
    else:
        raise ValueError(f"unknown transport {kind!r} (one of {', '.join(TRANSPORTS)})")
    try:
        yield tr
    finally:
        tr.close()


def run_setup(setup: Setup, transport: str = "direct", *, on_request: Callable[[RequestRecord], None] | None = None,
              session_url: str | None = None, gateway_url: str | None = None,
              worker_urls: Sequence[str] | None = None, metrics_url: str | None = None) -> dict[str, Any]:
    """Run the scenario once under ``setup``; the row of measures (see module docstring)."""
    t0 = time.perf_counter()
    with open_transport(transport, setup, session_url=session_url, gateway_url=gateway_url,
                        worker_urls=worker_urls, metrics_url=metrics_url) as tr:
        t1 = time.perf_counter()
        faults = setup.scenario.faults
        if faults:  # virtual-time faults (sim.faults); the agents then check their records against their own log
            if transport not in ("http", "direct"):
                raise RuntimeError(f"scenario faults need the http or direct transport, not {transport!r}")
            tr = with_faults(tr, faults)
        live = getattr(tr, "agent_runner", None)  # a live transport paces the agents against the wall clock
        runner = (live(setup.scenario, on_request) if live
                  else AgentRunner(setup.scenario, tr, on_request=on_request, keep_log=bool(faults)))
        with _gc_for(transport):
            result = runner.run()
        t2 = time.perf_counter()
        ss = getattr(tr, "session_core", None)
        metrics = tr.gateway_metrics()
        scenario = setup.scenario
        roles = {name: scenario.role_of(i) for i, name in enumerate(tr.workers)} if scenario.pd else None
        measures = summarize(result, list(tr.workers), tr.worker_stats(), metrics,
                             rollback_retries=getattr(ss, "rollback_retries", None), roles=roles,
                             transfer_bandwidth=scenario.transfer_bandwidth_gb_s * 1e9 if scenario.pd else None,
                             hicache=scenario.hicache)
    row: dict[str, Any] = {
        "label": setup.label,
        "policy": setup.extra.get("policy", _flag(setup.gateway_args, "--policy")),
        "assignment_mode": setup.extra.get("assignment_mode", _flag(setup.gateway_args, "--assignment-mode")),
        # a PD scenario's rows: which pool, and each leg's policy (absent from a plain co-located run's row)
        **{k: setup.extra[k] for k in ("pool", "prefill_policy", "decode_policy", "oracle_prompt_only")
           if k in setup.extra},
        "routing_key": bool(setup.routing_key),
        "gateway_args": list(setup.gateway_args),
        "transport": transport,
        "seed": setup.seed,
        **measures,
    }
    if transport == "live":
        row["gateway"], row["speedup"] = setup.extra.get("gateway", "mock"), setup.extra.get("speedup")
    if transport == "external":
        row["warnings"] = external_warnings(row, result.requests, selection_policies(metrics))
        for w in row["warnings"]:
            warnings.warn(f"{setup.label}: {w}", RuntimeWarning, stacklevel=2)
    if result.series is not None:
        row["timeseries"] = result.series.table(result.requests)
    ok = [r for r in result.requests if r.ok]
    row["_meta"] = {
        "wall_seconds": time.perf_counter() - t0,
        "startup_seconds": t1 - t0,
        "sim_seconds": t2 - t1,
        "requests_per_second": len(result.requests) / (t2 - t1) if t2 > t1 else 0.0,
        "ttft_first": [r.ttft for r in ok if r.turn == 0 and not r.retry],
        "ttft_later": [r.ttft for r in ok if not (r.turn == 0 and not r.retry)],
        "errors": [s.error for s in result.sessions if s.error][:20],
        # where each prompt's hit was: its worker, PD its prefill worker
        "hits": [RequestHit(r.prefill_worker or r.worker, r.arrival, r.prompt_tokens, r.cached_tokens)
                 for r in ok if r.worker],
    }
    return row


@contextlib.contextmanager
def _gc_for(transport: str) -> Iterator[None]:
    """The cyclic GC tuned to the transport for the run; results are unaffected either way.

    ``direct``: no cyclic GC. Sessions keep every request and answer (many small containers) that the
    collector would scan again and again for next to no garbage (a few hundred cyclic objects per 5,000
    requests, measured; collecting cost ~25 µs per request even with raised thresholds). Reference counting
    still frees everything else, and what cycles there are go at the next collection after the run.

    ``http`` and ``external``: the collector stays on (the servers' short-lived cycles hold whole bodies:
    without it peak RSS grew 2.5x), but the young generation is collected every 10,000 net allocations instead
    of 700. Each pass then finds those cycles still young, and few objects are promoted, so full passes over
    the long-lived heap (the session server's records, the workers' radix trees: ~200 ms each at 300 sessions,
    0.7 ms per request with the default thresholds) almost never come due. Measured on 300 sessions of
    ``large``: GC 0.93 -> 0.22 ms per request, the same peak RSS.

    ``live`` keeps Python's defaults: its wall-clock pacing would feel the longer young passes (~7 ms)."""
    if transport == "direct":
        was = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            if was:
                gc.enable()
    elif transport in ("http", "external"):
        before = gc.get_threshold()
        gc.set_threshold(10_000, *before[1:])
        try:
            yield
        finally:
            gc.set_threshold(*before)
    else:
        yield


def external_warnings(row: dict[str, Any], records: Sequence[RequestRecord], told: dict[str, int]) -> list[str]:
    """What a gateway somebody else started says against the command line; corrects ``row`` where it tells.

    - The policy: the gateway labels its selections with the policy that made them
      (``smg_worker_selection_total{policy}``); when that is one policy other than the command line's, the row
      takes it (and no assignment mode, which the gateway does not tell).
    - Warm workers: a session's first turn can hit only what this run sent before it (the oracle's ``cached``
      bound: the shared system prompt, a group's task). More means the workers kept a previous run's KV, and
      the reuse figures are not this configuration's."""
    out = []
    if len(told) == 1 and row["policy"] not in told:
        [policy] = told
        out.append(f"the gateway routed with policy {policy!r}, not {row['policy']!r} as the command line says; "
                   "the row says the gateway's")
        row["policy"], row["assignment_mode"] = policy, None
    elif len(told) > 1:
        out.append(f"the gateway's selections name several policies {sorted(told)}: another client shared it")
    first = [r for r in records if r.ok and r.turn == 0 and not r.retry]
    warm = [r for r in first if r.cached_tokens > r.oracle_cached]
    if warm:
        out.append(f"{len(warm)} of {len(first)} first turns hit cached tokens this run never sent (the workers "
                   "still hold a previous run's KV): restart the workers, or flush their caches, for cold figures")
    return out


def _flag(args: Sequence[str], name: str) -> str | None:
    """A gateway flag's value; ``--policy`` defaults to ``cache_aware`` as in ``smg launch``."""
    value = flag_value(args, name)
    if value is None and name == "--policy":
        return "cache_aware"
    return value


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its non-deterministic ``_meta`` (what results files hold)."""
    return {k: v for k, v in row.items() if not k.startswith("_")}
