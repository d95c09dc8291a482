"""Measures of one run, named as in DESIGN.md (these names are the keys of ``results.json``).

- ``kv_reuse``: cached prompt tokens / prompt tokens, over successful requests (SGLang's hit rate).
- ``oracle_reuse``: the same for one infinite cache that saw every request in order (``sim.oracle``).
- ``eligible_reuse``: cached tokens / tokens the session's previous request made reusable (its
  prompt + output, as far as the new prompt shares them), over requests after a session's first.
- ``stickiness``: share of requests after a session's first that ran on the session's previous worker.
- ``prefill_tokens``: prompt tokens actually computed (prompt - cached), summed.
- ``ttft_p50``/``ttft_p99`` (and ``ttft_first_*`` for first turns, ``ttft_later_*`` for the rest),
  ``e2e_p50``/``e2e_p99``: percentiles of per-request latency in virtual seconds.
- ``makespan``: last finish - first request (for a rollout step: the step's wall time).
- ``queue_time_p50``/``queue_time_p99``: percentiles of per-request queueing, first scheduled (``start``) -
  arrival at the worker.
- The engines' totals (``ENGINE_TOTALS``), summed over the workers' reports (None when no worker reports them,
  as external workers do not; the arrival-time engine reports 0): ``retractions`` (running requests retracted
  when a decode step found no KV), ``recomputed_tokens`` (prefill work done twice: tokens that had KV before a
  retraction and were prefilled again), ``decode_stall_seconds`` (time running requests waited for prefill
  forwards), ``queue_seconds`` (arrival to first scheduling, summed over requests).
- ``workers``: per worker ``requests``, ``prompt_tokens``, ``cached_tokens``, ``prefill_tokens``,
  ``output_tokens``, ``kv_reuse`` and what the worker reports (``peak_kv_tokens``, the engine totals, ...).
- ``imbalance``: max / mean of per-worker ``prefill_tokens`` (the dominant work of agent traffic);
  ``imbalance_requests`` the same over request counts.
- ``peak_key_in_flight``: the most requests one session (one routing key) had in flight at once, over requests
  that got an answer (sent to finish); 1 for agents that wait for each answer, as SMG's clients do.
- ``errors``: failed requests plus sessions that failed outside a request (create, records, delete).
- PD runs only (``summarize(..., roles=...)``; shared/specs/pd-hicache.md section 2): ``kv_reuse`` is the prefill
  leg's (its radix hits / prompt tokens, as SGLang relays them) and ``stickiness`` the prefill leg's (where the
  reuse is), ``decode_stickiness`` the decode leg's; ``decode_kv_reuse`` the decode workers' own radix matches /
  prompt tokens (0 with their radix cache off); ``transfer_bytes`` the KV sent prefill to decode, summed;
  ``transfer_seconds_mean`` a request's KV bytes / the transfer bandwidth (the link's time, mostly overlapped with
  the prefill); TTFT split in three means: ``ttft_prefill_mean`` (arrival to the prefill's end: queue and compute
  of the uncached part), ``ttft_transfer_mean`` (then until the KV is in place on the decode worker: the
  transfer's tail, or the decode worker's pre-allocation), ``ttft_first_decode_mean`` (then to the first token:
  one decode step in its batch). ``answer_share``: the tokens of each request's previous answer (its session's
  previous turn) / prompt tokens: what a co-located worker's tree holds for a pinned session beyond a PD
  prefill tree, which receives prompts only. Per-worker rows carry ``role``; a prefill worker's row counts the
  requests it prefilled (its hits, its prefill work), a decode worker's the requests it decoded (its
  ``cached_tokens`` are its radix matches, no prefill work); both carry their ``transfer_bytes``. ``imbalance`` is
  then over the prefill workers, ``imbalance_requests`` over the decode workers.
- HiCache runs only (``summarize(..., hicache=True)``; shared/specs/pd-hicache.md section 3): ``kv_reuse`` split by
  the tier the hit came from, each over prompt tokens so that they sum to it: ``reuse_device`` (the GPU tree),
  ``reuse_host`` (the worker's host pool, L2, loaded back over PCIe), ``reuse_storage`` (the pool's shared L3,
  prefetched into host while queued); ``load_back_seconds_mean`` (a request's prefill time spent loading its host
  part back beyond the compute it overlaps) and ``prefetch_seconds_mean`` (its queue time waiting for the L3
  prefetch); ``storage_read_bytes`` and ``storage_write_bytes`` summed over the workers' reports (None when none
  reports them); TTFT split in two means: ``ttft_load_back_mean`` (load-back beyond compute plus the L3 wait: what
  fetching KV from the lower tiers costs) and ``ttft_compute_mean`` (the rest: queueing, the prefill's compute and
  the first decode step; PD: also the transfer).
- Faults (``sim.faults``): ``failed_turns`` (requests the agent got no answer for), ``gateway_retries``
  (``smg_worker_retries_total``: attempts the gateway re-sent), ``rollback_retries`` (the session server's
  retries without ``input_ids`` after a 400 "rollback failed"), ``re_pins`` (keys moved to another worker: the
  branches of ``mock_gateway.policies.base.REPIN_BRANCHES``, e.g. ``occupied_miss`` off an unavailable worker,
  ``min_kv``'s ``repin_queue``), ``re_pins_by_cause`` (the same by branch), ``worker_changes`` (consecutive
  successful requests of a session on different workers), ``record_mismatches`` (sessions whose records
  differ from the agent's own log of successful turns: lost, duplicated or changed; None unless the agents
  kept logs, as they do in fault runs). ``retries`` counts the agents' planned re-asks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from mock_gateway.policies.base import REPIN_BRANCHES
from sim.agents import RequestRecord, WorkloadResult, compare_records

BRANCH_SUFFIX = "_policy_branch"
# the workers' engine counters a row sums (``sim.transports.direct.engine_stats`` reports them per worker)
ENGINE_TOTALS = ("retractions", "recomputed_tokens", "decode_stall_seconds", "queue_seconds")
# the workers' HiCache counters a HiCache run sums (bytes moved between host and the shared L3)
STORAGE_TOTALS = ("storage_read_bytes", "storage_write_bytes")


def percentile(values: Iterable[float] | np.ndarray, q: float) -> float:
    arr = values if isinstance(values, np.ndarray) else np.fromiter(values, dtype=float)
    if arr.size == 0:
        return 0.0
    return float(np.percentile(arr, q))


def _families(metrics_text: str) -> list[Any]:
    return list(text_string_to_metric_families(metrics_text)) if metrics_text else []


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def gateway_branches(metrics_text: str, families: list[Any] | None = None) -> dict[str, dict[str, int]]:
    """``{policy: {branch: count}}`` from ``smg_<policy>_policy_branch_total{branch=...}`` counters."""
    out: dict[str, dict[str, int]] = {}
    for fam in _families(metrics_text) if families is None else families:
        name = fam.name
        if not (name.startswith("smg_") and name.endswith(BRANCH_SUFFIX)):
            continue
        policy = name[len("smg_"):-len(BRANCH_SUFFIX)]
        for s in fam.samples:
            if not s.name.endswith("_total") or "branch" not in s.labels:
                continue
            out.setdefault(policy, {})
            branch = s.labels["branch"]
            out[policy][branch] = out[policy].get(branch, 0) + int(s.value)
    return {p: dict(sorted(b.items())) for p, b in sorted(out.items())}


def re_pins_by_cause(branches: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """``{branch: count}`` of the re-pin branches (``REPIN_BRANCHES``) in ``gateway_branches`` output."""
    out: dict[str, int] = {}
    for policy, counts in branches.items():
        for branch in sorted(REPIN_BRANCHES.get(policy, frozenset()) & counts.keys()):
            if counts[branch]:
                out[branch] = out.get(branch, 0) + counts[branch]
    return dict(sorted(out.items()))


CUMULATIVE_TYPES = ("counter", "histogram", "summary")  # families whose samples only grow (except quantiles)


def _render_labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    esc = {k: v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for k, v in labels.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in esc.items()) + "}"


def counter_increase(before: str, after: str) -> str:
    """Prometheus text of ``after`` with every cumulative sample (counters, histogram and summary sums and
    counts) reduced by its value in ``before``: what happened between two readings of a long-running gateway.
    A sample that went down (the gateway restarted) keeps its ``after`` value; gauges keep theirs; counters that
    did not move are left out, as a fresh gateway has no sample for them."""
    old = {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in _families(before) for s in fam.samples}
    lines: list[str] = []
    for fam in _families(after):
        lines.append(f"# TYPE {fam.name}{'_total' if fam.type == 'counter' else ''} {fam.type}")  # as SMG writes
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            value = s.value
            if fam.type in CUMULATIVE_TYPES and "quantile" not in s.labels:
                prev = old.get((s.name, tuple(sorted(s.labels.items()))), 0.0)
                value = value - prev if value >= prev else value
                if fam.type == "counter" and value == 0:  # as a fresh gateway shows it: no sample yet
                    continue
            lines.append(f"{s.name}{_render_labels(s.labels)} {value!r}")
    return "\n".join(lines) + "\n" if lines else ""


def selection_policies(metrics_text: str, families: list[Any] | None = None) -> dict[str, int]:
    """``{policy: selections}`` from ``smg_worker_selection_total{policy=...}``: the policy the gateway itself
    says chose the workers (SMG and the mock both label it), without zero counts."""
    out: dict[str, int] = {}
    for fam in _families(metrics_text) if families is None else families:
        for s in fam.samples:
            if s.name == "smg_worker_selection_total" and s.value and "policy" in s.labels:
                out[s.labels["policy"]] = out.get(s.labels["policy"], 0) + int(s.value)
    return out


def metric_total(metrics_text: str, name: str, families: list[Any] | None = None) -> int:
    """The sum of a counter's ``<name>_total`` samples over all labels (0 when absent)."""
    total = 0.0
    for fam in _families(metrics_text) if families is None else families:
        for s in fam.samples:
            if s.name == f"{name}_total":
                total += s.value
    return int(total)


def peak_key_in_flight(records: Iterable[RequestRecord]) -> int:
    """The most answered requests of one session in flight at once (an answer frees its slot before a request
    sent at the same instant takes one)."""
    events: dict[int, list[tuple[float, int]]] = {}
    for r in records:
        if r.ok and r.finish > r.sent:
            events.setdefault(r.session, []).extend(((r.sent, 1), (r.finish, -1)))
    peak = 0
    for evs in events.values():
        level = 0
        for _, step in sorted(evs):
            level += step
            peak = max(peak, level)
    return peak


def worker_table(records: list[RequestRecord], workers: list[str],
                 stats: Mapping[str, Mapping[str, Any]] | None = None,
                 roles: Mapping[str, str | None] | None = None) -> list[dict[str, Any]]:
    """Per-worker rows (see the module docstring); ``roles`` (worker name -> ``prefill``/``decode``) for a PD pool."""
    if roles:
        return _pd_worker_table(records, workers, stats or {}, roles)
    names = list(workers)
    seen = {r.worker for r in records if r.ok and r.worker is not None} - set(names)
    names += sorted(seen, key=lambda n: (len(n), n))  # workers known only from answers (external): w2 < w10
    pos = {n: i for i, n in enumerate(names)}
    served = [(pos[r.worker], r.prompt_tokens, r.cached_tokens, r.output_tokens) for r in records
              if r.error is None and r.worker is not None]
    cols = np.array(served, dtype=np.int64).reshape(-1, 4)
    who = cols[:, 0]
    sums = [np.bincount(who, minlength=len(names)).tolist()]
    for c in (1, 2, 3):  # integer sums per worker (exact, unlike float weights)
        acc = np.zeros(len(names), dtype=np.int64)
        np.add.at(acc, who, cols[:, c])
        sums.append(acc.tolist())
    rows = {n: {"name": n, "requests": sums[0][i], "prompt_tokens": sums[1][i], "cached_tokens": sums[2][i],
                "prefill_tokens": sums[1][i] - sums[2][i], "output_tokens": sums[3][i]} for i, n in enumerate(names)}
    for n, row in rows.items():
        row["kv_reuse"] = _ratio(row["cached_tokens"], row["prompt_tokens"])
        extra = (stats or {}).get(n) or {}
        for k, v in extra.items():
            row.setdefault(k, v)
    return list(rows.values())


def _pd_worker_table(records: list[RequestRecord], workers: list[str], stats: Mapping[str, Mapping[str, Any]],
                     roles: Mapping[str, str | None]) -> list[dict[str, Any]]:
    """A PD pool's rows: each request counted on its prefill worker (hits, prefill work) and on its decode worker."""
    rows = {n: {"name": n, "role": roles.get(n), "requests": 0, "prompt_tokens": 0, "cached_tokens": 0,
                "prefill_tokens": 0, "output_tokens": 0, "transfer_bytes": 0} for n in workers}

    def row(name: str, role: str) -> dict[str, Any]:
        if name not in rows:  # a worker known only from answers
            rows[name] = {"name": name, "role": role, **dict.fromkeys(
                ("requests", "prompt_tokens", "cached_tokens", "prefill_tokens", "output_tokens", "transfer_bytes"), 0)}
        return rows[name]

    for r in records:
        if r.error is not None or r.worker is None or r.prefill_worker is None:
            continue
        p = row(r.prefill_worker, "prefill")
        p["requests"] += 1
        p["prompt_tokens"] += r.prompt_tokens
        p["cached_tokens"] += r.cached_tokens
        p["prefill_tokens"] += r.prompt_tokens - r.cached_tokens
        p["transfer_bytes"] += r.transfer_bytes
        d = row(r.worker, "decode")
        d["requests"] += 1
        d["prompt_tokens"] += r.prompt_tokens
        d["cached_tokens"] += r.decode_prefix_tokens
        d["output_tokens"] += r.output_tokens
        d["transfer_bytes"] += r.transfer_bytes
    for n, w in rows.items():
        w["kv_reuse"] = _ratio(w["cached_tokens"], w["prompt_tokens"])
        for k, v in (stats.get(n) or {}).items():
            w.setdefault(k, v)
    return list(rows.values())


def _stickiness(records: Iterable[RequestRecord], worker: Any) -> tuple[int, int]:
    """(requests after a session's first, those on the session's previous worker), ``worker(r)`` the leg's."""
    last: dict[int, str | None] = {}
    follow = same = 0
    for r in records:
        w = worker(r)
        if r.session in last:
            follow += 1
            same += last[r.session] == w
        last[r.session] = w
    return follow, same


def answer_tokens_in_prompts(records: Iterable[RequestRecord]) -> int:
    """The tokens of each successful request's previous answer (its session's previous turn's kept answer: a
    retry's replaces the answer it re-asked for), summed: what a pinned session's prompt holds beyond its previous
    prompt, before the tool output."""
    kept: dict[tuple[int, int], int] = {}
    total = 0
    for r in records:
        if r.error is not None:
            continue
        total += kept.get((r.session, r.turn - 1), 0)
        kept[(r.session, r.turn)] = r.output_tokens
    return total


def pd_measures(ok: list[RequestRecord], transfer_bandwidth: float | None) -> dict[str, Any]:
    """The PD measures of the module docstring, over successful requests."""
    cols = np.array([(r.arrival, r.prefill_end, r.transfer_ready, r.first_token) for r in ok],
                    dtype=float).reshape(-1, 4)
    prompt = sum(r.prompt_tokens for r in ok)
    sent = sum(r.transfer_bytes for r in ok)
    follow, same = _stickiness(ok, lambda r: r.worker)

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else 0.0

    return {
        "decode_kv_reuse": _ratio(sum(r.decode_prefix_tokens for r in ok), prompt),
        "decode_stickiness": _ratio(same, follow),
        "transfer_bytes": sent,
        "transfer_seconds_mean": _ratio(sent / transfer_bandwidth, len(ok)) if transfer_bandwidth else None,
        "ttft_prefill_mean": mean(cols[:, 1] - cols[:, 0]),
        "ttft_transfer_mean": mean(cols[:, 2] - cols[:, 1]),
        "ttft_first_decode_mean": mean(cols[:, 3] - cols[:, 2]),
        "answer_share": _ratio(answer_tokens_in_prompts(ok), prompt),
    }


def hicache_measures(ok: list[RequestRecord], table: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The HiCache measures of the module docstring, over successful requests and the worker rows."""
    cols = np.array([(r.prompt_tokens, r.cached_device, r.cached_host, r.cached_storage) for r in ok],
                    dtype=np.int64).reshape(-1, 4)
    times = np.array([(r.first_token - r.arrival, r.load_back_seconds, r.prefetch_seconds) for r in ok],
                     dtype=float).reshape(-1, 3)
    prompt = int(cols[:, 0].sum())
    rows = list(table)

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else 0.0

    def total(key: str) -> int | None:
        values = [w[key] for w in rows if w.get(key) is not None]
        return int(sum(values)) if values else None

    fetch = times[:, 1] + times[:, 2]
    return {
        "reuse_device": _ratio(int(cols[:, 1].sum()), prompt),
        "reuse_host": _ratio(int(cols[:, 2].sum()), prompt),
        "reuse_storage": _ratio(int(cols[:, 3].sum()), prompt),
        "load_back_seconds_mean": mean(times[:, 1]),
        "prefetch_seconds_mean": mean(times[:, 2]),
        **{key: total(key) for key in STORAGE_TOTALS},
        "ttft_load_back_mean": mean(fetch),
        "ttft_compute_mean": mean(times[:, 0] - fetch),
    }


def engine_totals(table: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``ENGINE_TOTALS`` summed over the worker rows that report them (None when none does)."""
    rows = list(table)
    out: dict[str, Any] = {}
    for key in ENGINE_TOTALS:
        values = [w[key] for w in rows if w.get(key) is not None]
        out[key] = sum(values) if values else None
    return out


def summarize(result: WorkloadResult, workers: list[str],
              worker_stats: Mapping[str, Mapping[str, Any]] | None = None, metrics_text: str = "",
              rollback_retries: int | None = None, roles: Mapping[str, str | None] | None = None,
              transfer_bandwidth: float | None = None, hicache: bool = False) -> dict[str, Any]:
    """All measures of one run as a flat dict (plus ``workers`` and ``gateway_branches``); with ``roles`` (worker
    name -> PD role) and the ``transfer_bandwidth`` (bytes/s) of a PD pool, the PD measures too; with ``hicache``
    (the workers run HiCache), the tier measures."""
    reqs = result.requests
    ok = [r for r in reqs if r.error is None]
    # one pass over the records into columns; sums over int64, times as float64 (the same IEEE arithmetic)
    ints = np.array([(r.prompt_tokens, r.cached_tokens, r.output_tokens, r.eligible_tokens,
                      r.turn == 0 and not r.retry, r.retry) for r in ok], dtype=np.int64).reshape(-1, 6)
    times = np.array([(r.arrival, r.first_token, r.finish, r.start) for r in ok], dtype=float).reshape(-1, 4)
    prompt_col, cached_col, later_m = ints[:, 0], ints[:, 1], ints[:, 4] == 0
    prompt = int(prompt_col.sum())
    cached = int(cached_col.sum())
    eligible = int(ints[later_m, 3].sum())
    eligible_hit = int(np.minimum(cached_col[later_m], ints[later_m, 3]).sum())
    ttft = times[:, 1] - times[:, 0]
    e2e = times[:, 2] - times[:, 0]
    queued = times[:, 3] - times[:, 0]
    # stickiness: consecutive successful requests of a session on the same worker (PD: the same prefill worker)
    if roles:
        follow, same = _stickiness(ok, lambda r: r.prefill_worker)
    else:
        last_worker: dict[int, str | None] = {}
        follow = same = 0
        for r in ok:
            prev = last_worker.get(r.session, "")
            if prev != "":
                follow += 1
                same += prev == r.worker
            last_worker[r.session] = r.worker
    families = _families(metrics_text)
    branches = gateway_branches(metrics_text, families)
    read = [s for s in result.sessions if s.records is not None]  # agents that kept a log (keep_log)
    mismatches = sum(1 for s in read if compare_records(s.log, s.records or [])) if read else None
    repins = re_pins_by_cause(branches)
    table = worker_table(reqs, workers, worker_stats, roles)
    # PD: prefill work over the prefill workers, requests over the decode workers (a co-located row has no role)
    prefill_per = [w["prefill_tokens"] for w in table if w.get("role") != "decode"]
    req_per = [w["requests"] for w in table if w.get("role") != "prefill"]
    mean_prefill = sum(prefill_per) / max(len(prefill_per), 1)
    mean_req = sum(req_per) / max(len(req_per), 1)
    failed_sessions = sum(1 for s in result.sessions if s.error is not None)
    request_errors = sum(1 for r in reqs if not r.ok)
    session_only_errors = sum(1 for s in result.sessions
                              if s.error is not None and not s.error.startswith("turn "))
    makespan = (float(times[:, 2].max()) - min(r.sent for r in reqs)) if ok else 0.0
    out: dict[str, Any] = {
        "kv_reuse": _ratio(cached, prompt),
        "oracle_reuse": result.oracle.reuse,
        "eligible_reuse": _ratio(eligible_hit, eligible),
        "stickiness": _ratio(same, follow),
        "prefill_tokens": prompt - cached,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "output_tokens": int(ints[:, 2].sum()),
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "ttft_first_p50": percentile(ttft[~later_m], 50),
        "ttft_first_p99": percentile(ttft[~later_m], 99),
        "ttft_later_p50": percentile(ttft[later_m], 50),
        "ttft_later_p99": percentile(ttft[later_m], 99),
        "e2e_p50": percentile(e2e, 50),
        "e2e_p99": percentile(e2e, 99),
        "makespan": makespan,
        "queue_time_p50": percentile(queued, 50),
        "queue_time_p99": percentile(queued, 99),
        **engine_totals(table),
        "imbalance": _ratio(max(prefill_per, default=0), mean_prefill),
        "imbalance_requests": _ratio(max(req_per, default=0), mean_req),
        "requests": len(ok),
        "retries": int(ints[:, 5].sum()),
        "peak_key_in_flight": peak_key_in_flight(reqs),
        "sessions": len(result.sessions),
        "failed_sessions": failed_sessions,
        "errors": request_errors + session_only_errors,
        "failed_turns": request_errors,
        "gateway_retries": metric_total(metrics_text, "smg_worker_retries", families),
        "rollback_retries": rollback_retries,
        "re_pins": sum(repins.values()),
        "re_pins_by_cause": repins,
        "worker_changes": follow - same,
        "record_mismatches": mismatches,
        "gateway_branches": branches,
        "workers": table,
    }
    if roles:
        out.update(pd_measures(ok, transfer_bandwidth))
    if hicache:
        out.update(hicache_measures(ok, table))
    return out
