"""Results files, the console table, the Markdown report and the plots of a ``compare`` (or ``run``).

Runs under several seeds (``--seeds``) are reported per configuration: the tables show each measure's mean and
95 % interval (``summary``, ``sim.stats``), the findings and plots use the means (bars with the intervals as error
bars), and the paired differences (``paired``) are told in words: beyond seed noise or within it."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from rich.table import Table

from sim.measures import ENGINE_TOTALS
from sim.ranking import RANKED_BY, SHOWN_BESIDE, ranking_lines, rows_by_profile
from sim.results import RESULTS_VERSION, provenance
from sim.runner import COLOCATED, public
from sim.stats import by_configuration

COLUMNS: tuple[tuple[str, str, str], ...] = (
    # key, header, format
    ("kv_reuse", "kv_reuse", "{:.3f}"),
    ("oracle_reuse", "oracle", "{:.3f}"),
    ("eligible_reuse", "eligible", "{:.3f}"),
    ("stickiness", "sticky", "{:.2f}"),
    ("prefill_tokens", "prefill Mtok", "mtok"),
    ("ttft_p50", "ttft p50 s", "{:.3f}"),
    ("ttft_p99", "ttft p99 s", "{:.3f}"),
    ("e2e_p50", "e2e p50 s", "{:.2f}"),
    ("makespan", "makespan s", "{:.1f}"),
    ("imbalance", "imbalance", "{:.2f}"),
    ("requests", "requests", "{}"),
    ("errors", "errors", "{}"),
)
# shown when some run had faults at work (sim.faults; sim.measures names them)
FAULT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("failed_turns", "failed turns", "{}"),
    ("gateway_retries", "gw retries", "{}"),
    ("rollback_retries", "rollback retries", "{}"),
    ("re_pins", "re-pins", "{}"),
    ("record_mismatches", "record mismatches", "{}"),
)

# shown when some run's engines report their own measures (the iteration-level engine; sim.measures names them)
ENGINE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("retractions", "retractions", "{}"),
    ("recomputed_tokens", "recomputed tok", "{}"),
    ("decode_stall_seconds", "decode stall s", "{:.1f}"),
    ("queue_time_p50", "queue p50 s", "{:.3f}"),
    ("queue_time_p99", "queue p99 s", "{:.3f}"),
)
# shown when some run is on a PD pool (sim.measures names them; a co-located baseline row shows "-")
PD_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("decode_kv_reuse", "decode reuse", "{:.3f}"),
    ("transfer_bytes", "transfer GB", "gb"),
    ("ttft_prefill_mean", "ttft prefill s", "{:.3f}"),
    ("ttft_transfer_mean", "ttft transfer s", "{:.3f}"),
    ("ttft_first_decode_mean", "ttft 1st decode s", "{:.3f}"),
)
# shown when some run's workers run HiCache (sim.measures names them; a row without shows "-")
HICACHE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("reuse_device", "reuse GPU", "{:.3f}"),
    ("reuse_host", "reuse host", "{:.3f}"),
    ("reuse_storage", "reuse L3", "{:.3f}"),
    ("ttft_load_back_mean", "ttft load-back s", "{:.3f}"),
    ("ttft_compute_mean", "ttft compute s", "{:.3f}"),
    ("storage_read_bytes", "L3 read GB", "gb"),
    ("storage_write_bytes", "L3 write GB", "gb"),
)
SCALED_FORMATS = {"mtok": 1e-6, "gb": 1e-9}  # column formats shown scaled, with two decimals
SERIES_PREFIX = "series-"  # the per-run time-series plots (write_series_plots)
PD_PLOT = "pd.png"
TIERS_PLOT = "tiers.png"
BANDWIDTH_PLOT = "l3-read-bandwidth.png"
NO_L3 = "no-L3"  # a HiCache scenario's baseline without its storage tier: its rows' ``l3`` is False


def columns(runs: list[dict[str, Any]]) -> tuple[tuple[str, str, str], ...]:
    """``COLUMNS``, plus ``PD_COLUMNS`` when some run is on a PD pool, plus ``HICACHE_COLUMNS`` when some run's
    workers run HiCache, plus ``ENGINE_COLUMNS`` when some run's engines report retractions, stalls or queueing, plus
    ``FAULT_COLUMNS`` when any run failed a turn, retried or re-pinned a key."""
    out = COLUMNS
    if any(row.get("pool") == "pd" for row in runs):
        out += PD_COLUMNS
    if any("reuse_device" in row for row in runs):
        out += HICACHE_COLUMNS
    if any(row.get(k) for row in runs for k in ENGINE_TOTALS):
        out += ENGINE_COLUMNS
    if any(row.get(k) for row in runs for k, _, _ in FAULT_COLUMNS):
        out += FAULT_COLUMNS
    return out


def config_name(row: dict[str, Any]) -> str:
    """policy/mode, a PD leg's own policy (``decode=round_robin``), ``colocated`` for a PD scenario's co-located
    baseline, and ``@profile`` for a row run under one of several profiles (sim.ranking)."""
    mode = row.get("assignment_mode")
    name = f"{row['policy']}/{mode}" if mode else str(row["policy"])
    name += "".join(f" {leg}={row[f'{leg}_policy']}" for leg in ("prefill", "decode")
                    if row.get(f"{leg}_policy") not in (None, row["policy"]))
    if row.get("pool") == COLOCATED:
        name = f"{COLOCATED} {name}"
    if row.get("l3") is False:
        name = f"{NO_L3} {name}"
    return f"{name} @{row['profile']}" if row.get("profile") else name


def _fmt(row: dict[str, Any], key: str, fmt: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    if fmt in SCALED_FORMATS:
        return f"{v * SCALED_FORMATS[fmt]:.2f}"
    return fmt.format(v)


def fmt_summary(stats: dict[str, Any] | None, fmt: str) -> str:
    """``mean ± half-width`` of a 95 % interval (the mean alone for one seed)."""
    if stats is None:
        return "-"
    scale = SCALED_FORMATS.get(fmt, 1.0)
    f = "{:.2f}" if fmt in SCALED_FORMATS else fmt.replace("{}", "{:.1f}")
    mean = f.format(stats["mean"] * scale)
    if stats["ci95"] is None:
        return mean
    return f"{mean} ± {f.format((stats['ci95'][1] - stats['mean']) * scale)}"


def several_seeds(runs: list[dict[str, Any]]) -> bool:
    """Whether some configuration ran under more than one seed."""
    return any(len(group) > 1 for group in by_configuration(runs).values())


def summary_cells(runs: list[dict[str, Any]], summary: list[dict[str, Any]]) -> list[list[str]]:
    """Per configuration: policy, key, seeds, then ``mean ± half-width`` of every column."""
    cols, first = columns(runs), {lab: group[0] for lab, group in by_configuration(runs).items()}
    out = []
    for conf in summary:
        row = first[conf["label"]]
        out.append([config_name(row), "on" if row["routing_key"] else "off", str(len(conf["seeds"])),
                    *[fmt_summary(conf["measures"].get(k), f) for k, _, f in cols]])
    return out


def table(runs: list[dict[str, Any]], title: str = "", summary: list[dict[str, Any]] | None = None) -> Table:
    """The console table; its caption holds the ``notes`` of the runs. With several seeds and their ``summary``,
    one line per configuration: the mean ± the half-width of its 95 % interval."""
    if summary is not None and several_seeds(runs):
        t = Table(title=title or None, caption="\n".join(notes(runs)) or None, caption_justify="left")
        for header in ("policy", "key", "seeds", *[h for _, h, _ in columns(runs)]):
            t.add_column(header, justify="left" if header == "policy" else "right", no_wrap=header == "policy")
        for cells in summary_cells(runs, summary):
            t.add_row(*cells)
        return t

    t = Table(title=title or None, show_lines=False, caption="\n".join(notes(runs)) or None, caption_justify="left")
    t.add_column("policy", no_wrap=True)
    t.add_column("key", justify="center")
    cols = columns(runs)
    for _, header, _ in cols:
        t.add_column(header, justify="right")
    for row in runs:
        t.add_row(config_name(row), "on" if row["routing_key"] else "off", *[_fmt(row, k, f) for k, _, f in cols])
    return t


def markdown_table(runs: list[dict[str, Any]], summary: list[dict[str, Any]] | None = None) -> str:
    cols = columns(runs)
    if summary is not None and several_seeds(runs):
        lines = ["| " + " | ".join(["policy", "key", "seeds", *[h for _, h, _ in cols]]) + " |",
                 "|" + "|".join(["---"] * 2 + ["---:"] * (len(cols) + 1)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in summary_cells(runs, summary)])
    headers = ["policy", "key", *[h for _, h, _ in cols]]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(cols)) + "|"]
    for row in runs:
        cells = [config_name(row), "on" if row["routing_key"] else "off", *[_fmt(row, k, f) for k, _, f in cols]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _find(runs: list[dict[str, Any]], policy: str, mode: str | None, key: bool,
          decode: str | None = None) -> dict[str, Any] | None:
    """The run of ``policy``/``mode`` with the key on or off; on a PD pool, with ``decode`` on the decode leg (None:
    ``policy`` on both legs)."""
    for r in runs:
        if (r["policy"] == policy and r.get("assignment_mode") == mode and r["routing_key"] == key
                and r.get("decode_policy", policy) == (decode or policy)
                and r.get("prefill_policy", policy) == policy):
            return r
    return None


def findings(runs: list[dict[str, Any]]) -> list[str]:
    """Plain sentences on what the table shows (only those the runs support); for a PD scenario's runs, those of
    the PD pool, of its co-located baseline, then ``pd_findings``; for a HiCache scenario's with its no-L3 baseline,
    those of the runs with L3, then ``hicache_findings``."""
    no_l3 = [r for r in runs if r.get("l3") is False]
    if no_l3:
        with_l3 = [r for r in runs if r.get("l3") is not False]
        main = [r for r in with_l3 if r.get("pool") != COLOCATED]
        return [*findings(with_l3)[:-1], *hicache_findings(main, no_l3), _errors_line(runs)]
    baseline = [r for r in runs if r.get("pool") == COLOCATED]
    if not baseline:
        return _pool_findings(runs)
    pd = [r for r in runs if r.get("pool") != COLOCATED]
    return [*_pool_findings(pd)[:-1], *[f"Co-located baseline: {f}" for f in _pool_findings(baseline)[:-1]],
            *pd_findings(pd, baseline), _errors_line(runs)]


def _pool_findings(runs: list[dict[str, Any]]) -> list[str]:
    """``findings`` of runs on one pool."""
    out: list[str] = []
    if not runs:
        return out
    oracle = runs[0]["oracle_reuse"]
    if runs[0].get("pool") == "pd" and runs[0].get("oracle_prompt_only", True):
        out.append(f"The PD oracle (one infinite cache seeing every request, holding prompts only, as a prefill "
                   f"worker's tree) reuses {oracle:.1%} of prompt tokens; no routing can do better on this pool.")
    elif runs[0].get("pool") == "pd":
        out.append(f"The oracle (one infinite cache seeing every request, prompts and answers: the decode workers "
                   f"offload each answer to the shared L3, where a later prefill can find it) reuses {oracle:.1%} "
                   "of prompt tokens; no routing can do better on this pool.")
    else:
        out.append(f"The oracle (one infinite cache seeing every request) reuses {oracle:.1%} of prompt tokens; "
                   "no routing can do better on this workload.")
    best = max(r["kv_reuse"] for r in runs)
    tops = [f"{config_name(r)} key {'on' if r['routing_key'] else 'off'}" for r in runs
            if r["kv_reuse"] >= best - 5e-4]
    out.append(f"Best reuse: {best:.1%}" + (f" ({best / oracle:.1%} of the oracle)" if oracle else "")
               + f", reached by {', '.join(tops)}.")
    rr = _find(runs, "round_robin", None, True) or _find(runs, "round_robin", None, False)
    for mode in ("min_load", "random", "min_group"):
        on, off = _find(runs, "manual", mode, True), _find(runs, "manual", mode, False)
        if on and off:
            share = f"{on['kv_reuse'] / oracle:.0%} of the oracle, " if oracle else ""  # 0: no request answered
            s = (f"manual/{mode}: {on['kv_reuse']:.1%} with the key ({share}"
                 f"stickiness {on['stickiness']:.2f}), {off['kv_reuse']:.1%} without it")
            if rr:
                s += f" (round_robin baseline {rr['kv_reuse']:.1%})"
            s += (f"; prefill work {off['prefill_tokens'] / max(on['prefill_tokens'], 1):.1f}x higher without the key, "
                  f"TTFT p50 {on['ttft_p50']:.3f}s vs {off['ttft_p50']:.3f}s.")
            out.append(s)
            break
    for policy in ("consistent_hashing", "cache_aware"):
        on, off = _find(runs, policy, None, True), _find(runs, policy, None, False)
        if on and off:
            out.append(f"{policy}: {on['kv_reuse']:.1%} with the key, {off['kv_reuse']:.1%} without "
                       f"(imbalance {on['imbalance']:.2f} / {off['imbalance']:.2f}).")
    sticky = [r for r in runs if r["routing_key"] and r["policy"] in ("manual", "consistent_hashing")]
    if sticky:
        worst = max(sticky, key=lambda r: r["imbalance"])
        fairest = min(sticky, key=lambda r: r["imbalance"])
        out.append(f"Among sticky configurations with the key, prefill work is most uneven under {config_name(worst)} "
                   f"(max/mean {worst['imbalance']:.2f}) and most even under {config_name(fairest)} "
                   f"({fairest['imbalance']:.2f}); makespan {worst['makespan']:.1f}s vs {fairest['makespan']:.1f}s.")
    fast = min(runs, key=lambda r: r["makespan"])
    slow = max(runs, key=lambda r: r["makespan"])
    if slow["makespan"] > 1.05 * fast["makespan"]:
        out.append(f"Makespan: shortest {fast['makespan']:.1f}s ({config_name(fast)}, key "
                   f"{'on' if fast['routing_key'] else 'off'}), longest {slow['makespan']:.1f}s ({config_name(slow)}, "
                   f"key {'on' if slow['routing_key'] else 'off'}).")
    for mode in ("min_load", "random", "min_group"):
        on, off = _find(runs, "manual", mode, True), _find(runs, "manual", mode, False)
        if on and off and on["makespan"] > 1.1 * off["makespan"]:
            out.append(f"Stickiness costs time here: manual/{mode} takes {on['makespan'] / off['makespan'] - 1:.0%} "
                       "longer with the key than without, because pinned sessions cannot leave a slow or busy worker.")
            break
    thrashed = [r for r in runs if r.get("retractions")]
    if thrashed:
        worst = max(thrashed, key=lambda r: r["retractions"])
        calm = [r for r in runs if r.get("retractions") == 0]
        out.append(f"KV ran out mid-decode: {len(thrashed)} of {len(runs)} runs retracted running requests, most "
                   f"under {config_name(worst)} key {'on' if worst['routing_key'] else 'off'} "
                   f"({worst['retractions']:.0f} retractions, {worst['recomputed_tokens']:.0f} tokens prefilled "
                   f"again, queue p99 {worst['queue_time_p99']:.2f}s)"
                   + (f"; {len(calm)} runs had none." if calm else "."))
    out.append(_errors_line(runs))
    return out


def _errors_line(runs: list[dict[str, Any]]) -> str:
    errs = sum(r["errors"] for r in runs)
    return "No run had errors." if errs == 0 else f"{errs} errors in total: see `errors` per run."


# the policies run on both a PD pool and its co-located baseline (sim.runner.COLOCATED_BASELINE_POLICIES)
PD_VERSUS = (("manual", "min_load"), ("consistent_hashing", None), ("cache_aware", None))


def _gain(runs: list[dict[str, Any]], policy: str, mode: str | None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    on, off = _find(runs, policy, mode, True), _find(runs, policy, mode, False)
    return (on, off) if on and off else None


def pd_findings(pd: list[dict[str, Any]], colocated: list[dict[str, Any]]) -> list[str]:
    """What the routing key buys on a PD pool against co-located workers of the same total count, in words: the
    reuse and TTFT it gains under each policy run on both, the PD ceiling, manual+key's reuse against the co-located
    figure with the share of the prompt the previous answers make (``answer_share``: what prompt-only insertion
    predicts as the gap), the decode leg's pin, and the KV transfer that no prefill hit shrinks."""
    out: list[str] = []
    if not pd or not colocated:
        return out
    prompt_only = pd[0].get("oracle_prompt_only", True)
    if prompt_only:
        out.append(f"PD ceiling: the prompt-only oracle reuses {pd[0]['oracle_reuse']:.1%}, the co-located oracle "
                   f"{colocated[0]['oracle_reuse']:.1%} (a prefill worker's tree never receives the answers).")
    else:
        out.append(f"PD ceiling: {pd[0]['oracle_reuse']:.1%}, the co-located oracle's: with decode offload the "
                   "answers reach the shared L3, where a prefill finds them (only runs of at least max(256, page) "
                   "tokens are prefetched, so short answers are recomputed).")
    for policy, mode in PD_VERSUS:
        a, b = _gain(pd, policy, mode), _gain(colocated, policy, mode)
        if a is None or b is None:
            continue
        name = policy if mode is None else f"{policy}/{mode}"
        out.append(f"What the key buys under {name}: reuse {a[1]['kv_reuse']:.1%} -> {a[0]['kv_reuse']:.1%} "
                   f"({(a[0]['kv_reuse'] - a[1]['kv_reuse']) * 100:+.1f} points) on the PD pool, "
                   f"{b[1]['kv_reuse']:.1%} -> {b[0]['kv_reuse']:.1%} "
                   f"({(b[0]['kv_reuse'] - b[1]['kv_reuse']) * 100:+.1f} points) co-located; TTFT p50 "
                   f"{a[1]['ttft_p50']:.3f}s -> {a[0]['ttft_p50']:.3f}s in PD, {b[1]['ttft_p50']:.3f}s -> "
                   f"{b[0]['ttft_p50']:.3f}s co-located.")
    on, co = _find(pd, "manual", "min_load", True), _find(colocated, "manual", "min_load", True)
    if on and co and on.get("answer_share") is not None:
        gap = co["kv_reuse"] - on["kv_reuse"]
        out.append(f"manual+key reuses {on['kv_reuse']:.1%} on the PD pool against {co['kv_reuse']:.1%} co-located: "
                   f"{gap * 100:.1f} points lower; each prompt's previous answer makes {on['answer_share']:.1%} of "
                   "the prompt tokens, which a co-located worker's tree holds and a prefill worker's never does "
                   + ("(prompt-only insertion predicts a gap of about that share)." if prompt_only else
                      "(decode offload to L3 gives back what it can prefetch)."))
    split = _find(pd, "manual", "min_load", True, decode="round_robin")
    if on and split:
        out.append(f"Pinning the decode leg as well: manual on both legs {on['kv_reuse']:.1%} reuse "
                   f"(decode reuse {on['decode_kv_reuse']:.1%}), decode round_robin {split['kv_reuse']:.1%} "
                   f"(decode reuse {split['decode_kv_reuse']:.1%}); the prefill leg's pin is where the reuse is"
                   + (" (the decode workers' radix cache is off)." if not on["decode_kv_reuse"] else "."))
    if on:
        off = _find(pd, "manual", "min_load", False)
        per = on["transfer_bytes"] / max(on["requests"], 1)
        line = (f"Every PD turn sends its KV prefill to decode: {per / 1e6:.1f} MB a request with the key "
                f"({on['transfer_bytes'] / 1e9:.2f} GB in all")
        if off:
            line += f"; {off['transfer_bytes'] / 1e9:.2f} GB without it"
        line += ("): a prefill hit does not shrink the transfer; its tail costs "
                 f"{on['ttft_transfer_mean'] * 1e3:.1f} ms of TTFT on average, the prefill "
                 f"{on['ttft_prefill_mean'] * 1e3:.1f} ms, the first decode step "
                 f"{on['ttft_first_decode_mean'] * 1e3:.1f} ms.")
        out.append(line)
    return out


# the policies a HiCache scenario also runs without its L3 (sim.commands.compare.NO_L3_POLICIES)
HICACHE_VERSUS = (("manual", "min_load"), ("consistent_hashing", None), ("cache_aware", None))


def _tiers(r: dict[str, Any]) -> str:
    return (f"GPU {r['reuse_device']:.1%} + host {r['reuse_host']:.1%} + L3 {r['reuse_storage']:.1%} = "
            f"{r['kv_reuse']:.1%}")


def hicache_findings(l3: list[dict[str, Any]], no_l3: list[dict[str, Any]]) -> list[str]:
    """What the storage tier does to the routing key's value, in words: per policy run with and without L3, the
    reuse the key buys on each (the no-key loss) and the share of that loss L3 recovers; the TTFT a turn without
    the key pays with L3 against with the key (the cost of a load from L3 instead of a local hit), and how much of
    it is the fetch; the L3 traffic; manual+key's and manual without the key's reuse by tier."""
    out: list[str] = []
    for policy, mode in HICACHE_VERSUS:
        a, b = _gain(l3, policy, mode), _gain(no_l3, policy, mode)
        if a is None or b is None:
            continue
        name = policy if mode is None else f"{policy}/{mode}"
        loss_l3, loss = a[0]["kv_reuse"] - a[1]["kv_reuse"], b[0]["kv_reuse"] - b[1]["kv_reuse"]
        line = (f"{name}: without the key, reuse drops {loss * 100:.1f} points without L3 ({b[0]['kv_reuse']:.1%} -> "
                f"{b[1]['kv_reuse']:.1%}) and {loss_l3 * 100:.1f} with it ({a[0]['kv_reuse']:.1%} -> "
                f"{a[1]['kv_reuse']:.1%})")
        line += (f": L3 recovers {1 - loss_l3 / loss:.0%} of the no-key loss" if loss > 0
                 else ": the key buys no reuse here even without L3")
        on, off = a[0]["ttft_p50"], a[1]["ttft_p50"]
        line += (f". TTFT p50 without the key {off:.3f}s against {on:.3f}s with it ({_relative(off, on)}; without "
                 f"L3 {_relative(b[1]['ttft_p50'], b[0]['ttft_p50'])}); fetching KV from host and L3 costs "
                 f"{a[1]['ttft_load_back_mean'] * 1e3:.1f} ms of mean TTFT without the key, "
                 f"{a[0]['ttft_load_back_mean'] * 1e3:.1f} ms with it.")
        out.append(line)
    on, off = _find(l3, "manual", "min_load", True), _find(l3, "manual", "min_load", False)
    if on and off:
        out.append(f"Reuse by tier, manual/min_load: key on {_tiers(on)}; key off {_tiers(off)}.")
        if on.get("storage_read_bytes") is not None and off.get("storage_read_bytes") is not None:
            out.append(f"L3 traffic, manual/min_load: {on['storage_read_bytes'] / 1e9:.2f} GB read and "
                       f"{on['storage_write_bytes'] / 1e9:.2f} GB written with the key, "
                       f"{off['storage_read_bytes'] / 1e9:.2f} GB and {off['storage_write_bytes'] / 1e9:.2f} GB "
                       "without it.")
    return out


def _relative(x: float, base: float) -> str:
    return f"{x / base - 1:+.0%}" if base > 0 else "n/a"


# the key's TTFT benefit under which stickiness is said to stop mattering (issue 19)
KEY_BENEFIT_THRESHOLD = 0.05


def key_benefit(on: float, off: float) -> float:
    """The key's relative benefit on a latency: (without - with) / without (0 when without is 0)."""
    return (off - on) / off if off > 0 else 0.0


def benefit_sweep(points: list[tuple[float, float, float]], measure: str = "ttft_p50",
                  threshold: float = KEY_BENEFIT_THRESHOLD) -> dict[str, Any]:
    """The key's benefit along a swept parameter: ``points`` are (value, ``measure`` with the key, without it).

    ``crossover``: the value from which on the benefit stays under ``threshold``: interpolated linearly in the log
    of the value between the last point at or above it and the next (the lowest value when every point is under;
    None when the last point is still at or above it)."""
    pts = sorted(points)
    rows = [{"value": v, "on": on, "off": off, "benefit": key_benefit(on, off)} for v, on, off in pts]
    above = [i for i, r in enumerate(rows) if r["benefit"] >= threshold]
    crossover: float | None
    if not rows or (above and above[-1] == len(rows) - 1):
        crossover = None
    elif not above:
        crossover = rows[0]["value"]
    else:
        lo, hi = rows[above[-1]], rows[above[-1] + 1]
        t = (lo["benefit"] - threshold) / (lo["benefit"] - hi["benefit"])
        if lo["value"] > 0:
            crossover = float(math.exp(math.log(lo["value"]) + t * (math.log(hi["value"]) - math.log(lo["value"]))))
        else:
            crossover = lo["value"] + t * (hi["value"] - lo["value"])
    return {"measure": measure, "threshold": threshold, "points": rows, "crossover": crossover,
            "below_throughout": bool(rows) and not above}


def benefit_lines(sweep: dict[str, Any], parameter: str, unit: str = "") -> list[str]:
    """``benefit_sweep`` in words: the benefit at each value, then the crossover (or that there is none)."""
    pts, m, pct = sweep["points"], sweep["measure"], f"{sweep['threshold']:.0%}"
    if not pts:
        return []
    out = ["The key's " + m + " benefit ((without - with) / without) by " + parameter + ": "
           + ", ".join(f"{p['value']:g}{unit} {p['benefit']:+.1%} ({p['on']:.3f}s vs {p['off']:.3f}s)" for p in pts)
           + "."]
    if sweep["crossover"] is None:
        out.append(f"No crossover in the range swept: the key still buys {pts[-1]['benefit']:.1%} at "
                   f"{pts[-1]['value']:g}{unit}, over the {pct} threshold.")
    elif sweep["below_throughout"]:
        out.append(f"The benefit is under {pct} already at the lowest {parameter} swept ({pts[0]['value']:g}{unit}): "
                   "stickiness does not matter for TTFT anywhere in this range.")
    else:
        out.append(f"Crossover: the key's benefit falls under {pct} at about {sweep['crossover']:.3g}{unit} "
                   f"(interpolated in log {parameter}); above it stickiness stops mattering for TTFT.")
    return out


# manual's assignment modes that choose by one number each; they cannot differ when the numbers are equal
EQUAL_WHEN_ONE_PER_KEY = ("min_load", "min_group")


def notes(runs: list[dict[str, Any]]) -> list[str]:
    """What the runs themselves show cannot differ between configurations (only what holds for these runs).

    ``min_load`` places a key on the worker with the fewest requests in flight, ``min_group`` on the one with the
    fewest keys in flight. When every request carries a key (no ``no_routing_id`` branch) and no key ever had more
    than one request in flight (``peak_key_in_flight`` 1), the two counts are equal on every worker at every
    decision, so both modes make the same choices with the same random draws: the same row."""
    out = []
    for r in runs:
        if r["policy"] != "manual" or r.get("assignment_mode") not in EQUAL_WHEN_ONE_PER_KEY or not r["routing_key"]:
            continue
        unkeyed = (r.get("gateway_branches") or {}).get("manual", {}).get("no_routing_id", 0)
        if r.get("peak_key_in_flight") == 1 and unkeyed == 0 and r["requests"]:
            a, b = EQUAL_WHEN_ONE_PER_KEY
            out.append(f"manual/{a} and manual/{b} cannot differ on this workload with the routing key: no key had "
                       "more than one request in flight (peak_key_in_flight 1), so each worker's keys in flight "
                       f"({b}) equal its requests in flight ({a}) at every decision and both modes choose alike "
                       f"(seen in {config_name(r)}).")
            break
    return out


# the measures whose paired differences the reports tell in words
PAIRED_MEASURES = ("kv_reuse", "prefill_tokens", "ttft_p50", "ttft_p99", "makespan", "imbalance")


def seed_lines(summary: list[dict[str, Any]], paired: list[dict[str, Any]] | None = None) -> list[str]:
    """In words: how many seeds, and per paired difference which measures moved beyond seed noise (the 95 %
    interval of the mean per-seed difference excludes 0) and which stayed within it. One seed: no interval."""
    seeds = sorted({s for conf in summary for s in conf["seeds"]})
    if all(len(conf["seeds"]) < 2 for conf in summary):
        return [f"One seed ({', '.join(map(str, seeds))}): no confidence intervals, so no difference can be told "
                "from seed noise; run with --seeds (e.g. 0-4) for intervals."]
    out = [f"{len(seeds)} seeds ({_seed_list(seeds)}); ± is the half-width of the 95 % interval of the mean "
           "(Student t)" + ("; differences are paired by seed." if paired else ".")]
    for pair in paired or []:
        beyond, within = [], []
        for m in PAIRED_MEASURES:
            d = pair["measures"].get(m)
            if d is None or d["beyond_noise"] is None:
                continue
            lo, hi = d["ci95"]
            (beyond if d["beyond_noise"] else within).append(f"{m} {d['mean']:+.4g} [{lo:+.4g}, {hi:+.4g}]")
        head = f"{pair['label']} vs {pair['versus']} ({len(pair['seeds'])} seeds): "
        if not beyond and not within:
            out.append(head + "fewer than two shared seeds, no interval.")
            continue
        out.append(head + (f"beyond seed noise: {', '.join(beyond)}" if beyond else "no difference beyond seed noise")
                   + (f"; within seed noise: {', '.join(within)}." if within else "."))
    return out


def _seed_list(seeds: list[int]) -> str:
    return f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2 \
        else ", ".join(map(str, seeds))


def mean_rows(runs: list[dict[str, Any]], summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration for the findings and plots: its first seed's row with every summarized measure
    replaced by its mean over seeds, ``errors`` by their total, the workers' prefill tokens by their means and
    the TTFT samples of all seeds pooled."""
    groups = by_configuration(runs)
    out = []
    for conf in summary:
        group = groups[conf["label"]]
        row = {**group[0], **{m: st["mean"] for m, st in conf["measures"].items()},
               "errors": sum(r["errors"] for r in group)}
        row["workers"] = [{**w, "prefill_tokens": sum(r["workers"][j]["prefill_tokens"] for r in group) / len(group)}
                          for j, w in enumerate(group[0]["workers"])]
        metas = [r.get("_meta", {}) for r in group]
        row["_meta"] = {k: [x for m in metas for x in m.get(k, [])] for k in ("ttft_first", "ttft_later")}
        out.append(row)
    return out


def branch_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in runs:
        if r.get("gateway_branches"):
            parts = "; ".join(f"{p}: " + ", ".join(f"{b}={n}" for b, n in br.items())
                              for p, br in r["gateway_branches"].items())
            lines.append(f"- {config_name(r)} key={'on' if r['routing_key'] else 'off'}: {parts} "
                         f"({r['sessions']} sessions, {r['requests']} requests)")
    return lines


def write_results(out: Path, scenario: dict[str, Any], runs: list[dict[str, Any]], **extra: Any) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    doc = {"results_version": RESULTS_VERSION, "provenance": provenance(scenario, runs), "scenario": scenario,
           "notes": notes(runs), **extra, "runs": [public(r) for r in runs]}
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


def pool_text(s: dict[str, Any]) -> str:
    """The report's pool line: workers and KV per worker; a PD pool's prefill and decode workers apart; HiCache's
    tiers (``hicache_text``)."""
    return _workers_text(s) + hicache_text(s)


def hicache_text(s: dict[str, Any]) -> str:
    """HiCache's tiers in the pool line ("" when off)."""
    if not s.get("enable_hierarchical_cache"):
        return ""
    host = f"{s['hicache_size']:g} GB" if s["hicache_size"] else f"{s['hicache_ratio']:g}x the GPU pool"
    text = (f"; HiCache: host pool (L2) {host} per worker, {s['hicache_write_policy']}, load-back at "
            f"{s['hicache_pcie_bandwidth_gb_s']:g} GB/s, pages of {s.get('page_size', 1)} tokens")
    if not s["hicache_storage_backend"]:
        return text + ", no L3"
    cap = s["hicache_storage_capacity_tokens"]
    return (text + f"; L3 `{s['hicache_storage_backend']}` shared by the pool ("
            + (f"{cap:,} tokens" if cap else "unbounded") + f"), read {s['hicache_storage_read_bandwidth_gb_s']:g} "
            f"GB/s and write {s['hicache_storage_write_bandwidth_gb_s']:g} GB/s per worker, prefetch "
            f"{s['hicache_storage_prefetch_policy']}"
            + ("; decode workers offload to L3" if s.get("disaggregation_decode_enable_offload_kvcache") else ""))


def _workers_text(s: dict[str, Any]) -> str:
    def kv(capacity: Any) -> str:
        return f"{capacity:,}" if isinstance(capacity, int) else str(capacity or "unbounded")

    if not s.get("prefill_workers"):
        return f"{s['workers']} workers, KV {kv(s['kv_capacity_tokens'])} tokens each"
    return (f"PD: {s['prefill_workers']} prefill workers (KV {kv(s['prefill_kv_capacity_tokens'])} tokens each) + "
            f"{s['decode_workers']} decode workers (KV {kv(s['decode_kv_capacity_tokens'])} tokens each; radix cache "
            f"{'on' if s['decode_radix_cache'] else 'off'}), KV transfer at {s['transfer_bandwidth_gb_s']:g} GB/s; "
            f"co-located baseline: {s['workers']} workers, KV {kv(s['kv_capacity_tokens'])} tokens each")


def write_markdown(out: Path, scenario: dict[str, Any], runs: list[dict[str, Any]], plots: list[str],
                   command: str = "smg-testbed compare", summary: list[dict[str, Any]] | None = None,
                   paired: list[dict[str, Any]] | None = None, ranking: dict[str, Any] | None = None,
                   read_bandwidth: dict[str, Any] | None = None) -> Path:
    """report.md; with ``summary`` of several seeds, means ± 95 % intervals and the paired differences in words;
    with the ``ranking`` of several profiles (sim.ranking), the findings per profile and "Ranking by profile"; with
    ``read_bandwidth`` (a ``benefit_sweep`` over the L3 read bandwidth), its section."""
    s = scenario
    seeds = summary is not None and several_seeds(runs)
    shown = mean_rows(runs, summary) if seeds and summary is not None else runs
    lines = [f"# {command}: scenario `{s['name']}`", ""]
    if s.get("description"):
        lines += [s["description"], ""]
    lines += [pool_text(s) + "; "
              f"{s['sessions']} sessions (groups of {s['group_size']}), arrivals `{s['arrival']}`; "
              + (f"seeds {_seed_list(sorted({r['seed'] for r in runs}))}; " if seeds else f"seed {s['seed']}; ")
              + f"transport `{runs[0]['transport'] if runs else '-'}`.", "",
              markdown_table(runs, summary), "",
              "Columns: `kv_reuse` cached / prompt tokens; `oracle` the same for one infinite cache seeing every "
              "request (the ceiling); `eligible` cached / tokens the session's previous turn made reusable; "
              "`sticky` share of later turns on the session's previous worker; `prefill Mtok` prompt tokens "
              "computed; latencies in virtual seconds; `imbalance` max / mean prefill work per worker."
              + (" `retractions` running requests the engines retracted when KV ran out; `recomputed tok` prefill "
                 "work done twice after them; `decode stall s` time running requests waited for prefills; `queue` "
                 "arrival to first scheduling per request." if ENGINE_COLUMNS[0] in columns(runs) else "")
              + (" PD: `kv_reuse` is the prefill leg's (its hits, as SGLang relays them), `oracle` holds prompts only "
                 "(a prefill worker's tree never receives the answers), `sticky` is the prefill leg's; `decode reuse` "
                 "the decode workers' own radix matches / prompt tokens; `transfer GB` the KV sent prefill to "
                 "decode; TTFT split into its means: `ttft prefill` (arrival to the prefill's end), `ttft transfer` "
                 "(then until the KV is in place on the decode worker), `ttft 1st decode` (then one decode step); "
                 "`imbalance` over the prefill workers. `colocated` rows: the same workload on co-located workers "
                 "of the same total count." if PD_COLUMNS[0] in columns(runs) else "")
              + (" HiCache: `kv_reuse` split by the tier each hit came from (`reuse GPU` the device tree, `reuse "
                 "host` the worker's host pool, `reuse L3` the pool's shared storage; they sum to it); TTFT split "
                 "into its means: `ttft load-back` (loading host KV back beyond the compute it overlaps, plus the "
                 "wait for the L3 prefetch) and `ttft compute` (the rest); `L3 read/write GB` the workers' storage "
                 f"traffic. `{NO_L3}` rows: the same pool without its L3 (host pools kept)."
                 if HICACHE_COLUMNS[0] in columns(runs) else ""), "",
              "## What it shows", ""]
    for name, group in rows_by_profile(shown).items():
        lines += [f"On `{name}`:", ""] if name is not None else []
        lines += [f"- {f}" for f in findings(group)] + ([""] if name is not None else [])
    lines += [f"- Note: {n}" for n in notes(runs)]
    if ranking is not None:
        lines += ["", *ranking_markdown(ranking)]
    if summary is not None:
        lines += ["", "## Seeds", "", *[f"- {line}" for line in seed_lines(summary, paired)]]
    bl = branch_lines(runs)
    if bl:
        lines += ["", "## Gateway branch counters", "", *bl]
    if PD_PLOT in plots:
        lines += ["", "## What the routing key buys: PD against co-located", "",
                  "Per policy run on both pools: the reuse with and without the key (the oracles dashed), and what "
                  "the key buys in reuse points and in TTFT p50, on the PD pool and on co-located workers of the "
                  "same total count (in words above: `What the key buys under ...`).", "", f"![{PD_PLOT}]({PD_PLOT})"]
    if TIERS_PLOT in plots:
        lines += ["", "## Reuse by tier", "",
                  "Per policy, with the key (solid) and without it (hatched): the share of prompt tokens found on the "
                  f"GPU, in the worker's host pool and in the shared L3 (`{NO_L3}`: the same pool without L3); the "
                  "oracle dashed. What L3 recovers of the no-key loss is in words above.", "",
                  f"![{TIERS_PLOT}]({TIERS_PLOT})"]
    if read_bandwidth is not None:
        lines += ["", "## L3 read bandwidth: where stickiness stops mattering", "",
                  "manual/min_load with and without the key at each L3 read bandwidth (GB/s per worker; everything "
                  "else as above). Command: `smg-testbed compare --scenario "
                  f"{s['name']} --read-bandwidth-sweep "
                  + ",".join(f"{p['value']:g}" for p in read_bandwidth["points"]) + "`, or for any parameter "
                  "`smg-testbed sweep --scenario " + s["name"] + " --routing-key on off --scenario-set "
                  "workers.hicache_storage_read_bandwidth_gb_s="
                  + ",".join(f"{p['value']:g}" for p in read_bandwidth["points"]) + "`.", "",
                  *[f"- {line}" for line in benefit_lines(read_bandwidth, "read bandwidth", " GB/s")]]
        if BANDWIDTH_PLOT in plots:
            lines += ["", f"![{BANDWIDTH_PLOT}]({BANDWIDTH_PLOT})"]
    general = [p for p in plots if not p.startswith(SERIES_PREFIX) and p not in (PD_PLOT, TIERS_PLOT, BANDWIDTH_PLOT)]
    if general:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in general]
    series = [p for p in plots if p.startswith(SERIES_PREFIX)]
    if series:
        lines += ["", "## Time series per worker", "",
                  "Per run, each worker's hit rate (cached / prompt tokens of the prefills first scheduled in each "
                  "interval), KV in use against its capacity, running and waiting requests, and retractions per "
                  "interval. A thrash spiral shows as KV pinned at capacity with retractions, a growing waiting "
                  "queue and a falling hit rate, until the queue drains." + (" With several seeds: the first "
                                                                              "seed's run." if seeds else ""),
                  ""] + [f"![{p}]({p})" for p in series]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# the ranking's measure, then those shown beside it, formatted as in the results table
RANKING_COLUMNS: tuple[tuple[str, str, str], ...] = tuple(next(c for c in COLUMNS if c[0] == key)
                                                          for key in (RANKED_BY, *SHOWN_BESIDE))


def _ranking_cells(entry: dict[str, Any]) -> list[str]:
    return [str(entry["rank"]), entry["configuration"], str(len(entry["seeds"])),
            *[_fmt(entry, k, f) for k, _, f in RANKING_COLUMNS]]


def _ranking_title(profile: dict[str, Any], ranked_by: str) -> str:
    cap = profile.get("kv_capacity_tokens")
    kv = "" if "kv_capacity_tokens" not in profile else f", KV {cap:,} tokens per worker" if cap else ", KV unbounded"
    return f"{profile['profile']}{kv}: ranked by mean {ranked_by}"


def ranking_tables(ranking: dict[str, Any]) -> list[Table]:
    """The console tables of ``sim.ranking.rank_by_profile``: one per profile."""
    out = []
    for p in ranking["profiles"]:
        t = Table(title=_ranking_title(p, ranking["ranked_by"]))
        for header in ("rank", "configuration", "seeds", *[h for _, h, _ in RANKING_COLUMNS]):
            t.add_column(header, justify="left" if header == "configuration" else "right", no_wrap=True)
        for entry in p["ranking"]:
            t.add_row(*_ranking_cells(entry))
        out.append(t)
    return out


def ranking_markdown(ranking: dict[str, Any]) -> list[str]:
    """report.md's "Ranking by profile": a table per profile, then which configurations changed rank, in words."""
    lines = ["## Ranking by profile", "",
             "The configurations with the routing key, ranked on each profile by makespan (the mean over seeds), "
             "with TTFT p99 and KV reuse beside.", ""]
    for p in ranking["profiles"]:
        lines += [f"### {_ranking_title(p, ranking['ranked_by'])}", "",
                  "| " + " | ".join(["rank", "configuration", "seeds", *[h for _, h, _ in RANKING_COLUMNS]]) + " |",
                  "|---:|---|" + "---:|" * (1 + len(RANKING_COLUMNS))]
        lines += ["| " + " | ".join(_ranking_cells(entry)) + " |" for entry in p["ranking"]] + [""]
    return lines + [f"- {line}" for line in ranking_lines(ranking)]


# reference lines of reuse.png a row may carry (a replay's trace baselines, sim.replay.baselines): key, label, style
REFERENCE_LINES: tuple[tuple[str, str, str], ...] = (
    ("single_pool_reuse", "single pool (trace)", ":"),
    ("random_baseline_reuse", "random routing (expected)", "-."),
)


def write_plots(out: Path, runs: list[dict[str, Any]], summary: list[dict[str, Any]] | None = None) -> list[str]:
    """reuse.png, ttft.png (when some run has TTFT samples), workers.png; returns the file names written.

    Only the key states some run has get a bar or a panel. With the ``summary`` of several seeds, one bar per
    configuration at its mean with its 95 % interval as error bar, CDFs of all seeds' samples pooled, and mean
    per-worker shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    intervals: dict[tuple[str, bool], list[float]] = {}
    if summary is not None and several_seeds(runs):
        for conf, row in zip(summary, mean_rows(runs, summary), strict=True):
            ci = conf["measures"]["kv_reuse"]["ci95"]
            intervals[(config_name(row), row["routing_key"])] = ci
        runs = mean_rows(runs, summary)
    names: list[str] = []
    configs: list[str] = []
    for r in runs:
        c = config_name(r)
        if c not in configs:
            configs.append(c)
    by = {(config_name(r), r["routing_key"]): r for r in runs}
    x = np.arange(len(configs))

    # 1. reuse with and/or without the key, against the oracle and, for a trace, its two baselines
    keys = [k for k in (True, False) if any(r["routing_key"] == k for r in runs)]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(configs)), 4))
    w = 0.76 / max(len(keys), 1)
    for i, key in enumerate(keys):
        vals = [by[(c, key)]["kv_reuse"] if (c, key) in by else np.nan for c in configs]
        err = None
        if intervals:  # asymmetric error bars from each mean to its interval's ends
            cis = [intervals.get((c, key)) or [v, v] for c, v in zip(configs, vals, strict=True)]
            err = np.array([[v - lo for v, (lo, _) in zip(vals, cis, strict=True)],
                            [hi - v for v, (_, hi) in zip(vals, cis, strict=True)]])
        ax.bar(x + (i - (len(keys) - 1) / 2) * w, vals, w, yerr=err, capsize=3 if intervals else 0,
               label=f"key {'on' if key else 'off'}", color="tab:blue" if key else "tab:orange")
    if runs:
        ax.axhline(runs[0]["oracle_reuse"], color="k", ls="--", lw=1, label="oracle")
    for key, label, style in REFERENCE_LINES:
        if runs and runs[0].get(key) is not None:
            ax.axhline(runs[0][key], color="0.4", ls=style, lw=1, label=label)
    ax.set_xticks(x, configs, rotation=20, ha="right")
    ax.set_ylabel("kv_reuse (cached / prompt tokens)")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title("KV reuse per policy" + (", with and without X-SMG-Routing-Key" if len(keys) == 2
                                          else f", key {'on' if keys and keys[0] else 'off'}")
                 + ("\n(mean and 95% interval over seeds)" if intervals else ""))
    fig.tight_layout()
    fig.savefig(out / "reuse.png", dpi=110)
    plt.close(fig)
    names.append("reuse.png")

    # 2. TTFT distributions as CDFs, of later turns (where stickiness matters) unless no run has any (a trace of
    # single requests: then of all requests); one panel per key state with samples
    def samples(r: dict[str, Any], later: bool) -> np.ndarray:
        meta = r.get("_meta", {})
        return np.sort(np.asarray(meta.get("ttft_later", []) + ([] if later else meta.get("ttft_first", [])),
                                  dtype=float))

    later = any(r.get("_meta", {}).get("ttft_later") for r in runs)
    curves = {key: [(c, samples(by[(c, key)], later)) for c in configs if (c, key) in by] for key in (True, False)}
    panels = [key for key in (True, False) if any(v.size for _, v in curves[key])]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), sharey=True, squeeze=False)
        for ax, key in zip(axes[0], panels, strict=True):
            for c, v in curves[key]:
                if v.size:
                    ax.plot(v, np.arange(1, v.size + 1) / v.size, label=c)
            ax.set_xscale("log")
            ax.set_xlabel(f"TTFT of {'later turns' if later else 'all requests'} (virtual s)")
            ax.set_title(f"key {'on' if key else 'off'}")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("CDF")
        axes[0][-1].legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(out / "ttft.png", dpi=110)
        plt.close(fig)
        names.append("ttft.png")

    # 3. per-worker prefill work (share of the total), one row per configuration
    labels = [f"{config_name(r)} key={'on' if r['routing_key'] else 'off'}" for r in runs]
    workers = [w["name"] for w in runs[0]["workers"]] if runs else []
    mat = np.zeros((len(runs), len(workers)))
    for i, r in enumerate(runs):
        tot = max(sum(w["prefill_tokens"] for w in r["workers"]), 1)
        for j, w in enumerate(r["workers"][: len(workers)]):
            mat[i, j] = w["prefill_tokens"] / tot
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(workers) + 4), 0.4 * len(runs) + 1.5))
    im = ax.imshow(mat, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xticks(range(len(workers)), workers)
    ax.set_title("Per-worker share of prefill work")
    fig.colorbar(im, ax=ax, label="share")
    fig.tight_layout()
    fig.savefig(out / "workers.png", dpi=110)
    plt.close(fig)
    names.append("workers.png")
    if write_pd_plot(out, [r for r in runs if r.get("l3") is not False]):
        names.append(PD_PLOT)
    if write_tiers_plot(out, runs):
        names.append(TIERS_PLOT)
    return names + write_series_plots(out, runs)


TIER_STYLES = (("reuse_device", "GPU (L1)", "tab:blue"), ("reuse_host", "host (L2)", "tab:orange"),
               ("reuse_storage", "L3", "tab:green"))


def write_tiers_plot(out: Path, runs: list[dict[str, Any]]) -> bool:
    """tiers.png, when some run has HiCache's tier measures: per configuration, its reuse stacked by tier with the
    key (solid) and without it (hatched), the oracle dashed. False otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = [r for r in runs if "reuse_device" in r]
    if not runs:
        return False
    configs = list(dict.fromkeys(config_name(r) for r in runs))
    by = {(config_name(r), r["routing_key"]): r for r in runs}
    x = np.arange(len(configs))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(configs)), 4.5))
    for i, key in enumerate((True, False)):
        bottom = np.zeros(len(configs))
        for measure, label, color in TIER_STYLES:
            vals = np.array([by[(c, key)][measure] if (c, key) in by else 0.0 for c in configs])
            ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, bottom=bottom, color=color, hatch=None if key else "//",
                   edgecolor="white" if key else "k", linewidth=0.5,
                   label=f"{label}, key {'on' if key else 'off'}")
            bottom += vals
    ax.axhline(runs[0]["oracle_reuse"], color="k", ls="--", lw=1, label="oracle")
    ax.set_xticks(x, configs, rotation=20, ha="right")
    ax.set_ylim(0, 1.25)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("kv_reuse by tier (cached / prompt tokens)")
    ax.set_title("KV reuse by tier per policy, with the key (left, solid) and without it (right, hatched)")
    ax.legend(fontsize=7, ncol=4, loc="upper center")
    fig.tight_layout()
    fig.savefig(out / TIERS_PLOT, dpi=110)
    plt.close(fig)
    return True


def write_benefit_plot(out: Path, sweep: dict[str, Any], parameter: str, name: str = BANDWIDTH_PLOT) -> str:
    """A ``benefit_sweep``'s plot: the measure with and without the key against the swept value (log scale), and
    the key's relative benefit with the threshold and the crossover. Returns the file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sweep["points"]
    values = [p["value"] for p in pts]
    fig, (lat, gain) = plt.subplots(1, 2, figsize=(11, 4))
    lat.plot(values, [p["on"] for p in pts], "o-", color="tab:blue", label="key on")
    lat.plot(values, [p["off"] for p in pts], "s--", color="tab:orange", label="key off")
    lat.set_ylabel(f"{sweep['measure']} (virtual s)")
    lat.legend()
    gain.plot(values, [p["benefit"] * 100 for p in pts], "o-", color="tab:green")
    gain.axhline(sweep["threshold"] * 100, color="k", ls="--", lw=1, label=f"{sweep['threshold']:.0%}")
    if sweep["crossover"] is not None:
        gain.axvline(sweep["crossover"], color="tab:red", ls=":", label=f"crossover {sweep['crossover']:.3g}")
    gain.set_ylabel("key's benefit (%): (off - on) / off")
    gain.legend()
    for ax in (lat, gain):
        ax.set_xscale("log")
        ax.set_xlabel(parameter)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def write_pd_plot(out: Path, runs: list[dict[str, Any]]) -> bool:
    """pd.png, when the runs hold a PD pool and its co-located baseline: per policy run on both, the reuse with and
    without the key on each (oracles dashed), and the key's gain in reuse points and in TTFT p50. False otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pd = [r for r in runs if r.get("pool") == "pd"]
    co = [r for r in runs if r.get("pool") == COLOCATED]
    pairs = [(policy if mode is None else f"{policy}/{mode}", _gain(pd, policy, mode), _gain(co, policy, mode))
             for policy, mode in PD_VERSUS]
    pairs = [(name, a, b) for name, a, b in pairs if a and b]
    if not pairs:
        return False
    x = np.arange(len(pairs))
    fig, (reuse, gain, ttft) = plt.subplots(1, 3, figsize=(15, 4.2))
    bars = (("PD key on", 0, 0, "tab:blue"), ("PD key off", 0, 1, "lightsteelblue"),
            ("co-located key on", 1, 0, "tab:green"), ("co-located key off", 1, 1, "palegreen"))
    for i, (label, pool, key, color) in enumerate(bars):
        reuse.bar(x + (i - 1.5) * 0.2, [p[1 + pool][key]["kv_reuse"] for p in pairs], 0.2, label=label, color=color)
    reuse.axhline(pd[0]["oracle_reuse"], color="tab:blue", ls="--", lw=1, label="PD oracle (prompts only)")
    reuse.axhline(co[0]["oracle_reuse"], color="tab:green", ls="--", lw=1, label="co-located oracle")
    reuse.set_ylim(0, 1.3)
    reuse.set_yticks(np.linspace(0, 1, 6))
    reuse.set_ylabel("kv_reuse (cached / prompt tokens)")
    reuse.set_title("KV reuse")
    reuse.legend(fontsize=7, loc="upper center", ncol=2)
    for k, (label, color) in enumerate((("PD", "tab:blue"), ("co-located", "tab:green"))):
        gain.bar(x + (k - 0.5) * 0.35, [(p[1 + k][0]["kv_reuse"] - p[1 + k][1]["kv_reuse"]) * 100 for p in pairs],
                 0.35, label=label, color=color)
        ttft.bar(x + (k - 0.5) * 0.35, [p[1 + k][1]["ttft_p50"] / max(p[1 + k][0]["ttft_p50"], 1e-12) for p in pairs],
                 0.35, label=label, color=color)
    gain.axhline(0, color="k", lw=0.8)
    gain.set_ylabel("reuse with the key - without (points)")
    gain.set_title("What the key buys: reuse")
    ttft.axhline(1, color="k", lw=0.8)
    ttft.set_ylabel("TTFT p50 without the key / with it")
    ttft.set_title("What the key buys: TTFT p50")
    for ax in (reuse, gain, ttft):
        ax.set_xticks(x, [p[0] for p in pairs], rotation=15, ha="right")
    gain.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / PD_PLOT, dpi=110)
    plt.close(fig)
    return True


def write_series_plots(out: Path, runs: list[dict[str, Any]]) -> list[str]:
    """``series-NN-<configuration>.png`` per run with a ``timeseries`` (``sim.series``): four panels over virtual
    time, one line per worker: hit rate, KV used (capacity dashed), running (solid) and waiting (dashed)
    requests, retractions per interval. Returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = []
    for i, r in enumerate(runs):
        ts = r.get("timeseries")
        if not ts or not ts["t"]:
            continue
        t = np.asarray(ts["t"], dtype=float)
        fig, axes = plt.subplots(4, 1, figsize=(9, 9), sharex=True)
        hit, kv, queue, retracted = axes
        colors = plt.get_cmap("tab10" if len(ts["workers"]) <= 10 else "tab20")
        capacities = set()
        for j, (name, w) in enumerate(ts["workers"].items()):
            c = colors(j % colors.N)
            hit.plot(t, np.array([np.nan if h is None else h for h in w["hit_rate"]], dtype=float), color=c,
                     label=name, marker=".", ms=3, lw=1)
            kv.plot(t, w["kv_used"], color=c, lw=1)
            queue.plot(t, w["running"], color=c, lw=1)
            queue.plot(t, w["waiting"], color=c, lw=1, ls="--")
            retracted.plot(t, w["retractions"], color=c, lw=1, drawstyle="steps-mid")
            if w["kv_capacity"]:
                capacities.add(w["kv_capacity"])
        for cap in capacities:
            kv.axhline(cap, color="k", ls="--", lw=0.8)
        hit.set_ylabel("hit rate")
        hit.set_ylim(-0.02, 1.02)
        kv.set_ylabel("KV used (tokens)")
        queue.set_ylabel("running — / waiting --")
        retracted.set_ylabel(f"retractions / {ts['interval']:g} s")
        retracted.set_xlabel("virtual time (s)")
        for ax in axes:
            ax.grid(alpha=0.3)
        hit.legend(fontsize=7, ncol=min(len(ts["workers"]), 8), loc="upper right")
        label = f"{config_name(r)} key={'on' if r['routing_key'] else 'off'}"
        hit.set_title(f"{label}: per-worker time series (a point every {ts['interval']:g} virtual s)")
        fig.tight_layout()
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
        name = f"{SERIES_PREFIX}{i + 1:02d}-{slug}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        names.append(name)
    return names
