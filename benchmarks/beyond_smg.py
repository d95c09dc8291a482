"""Beyond SMG, decided by statistics: the testbed's routing rules against every SMG rule, paired by seed.

For each scenario and seed it runs every rule (direct transport, routing key on, the iteration-level engine)
twice: with SMG 1.13.0's defaults (worker overload protection on) and with
``--disable-worker-overload-protection``. SMG's rules are ``manual`` with each assignment mode,
``consistent_hashing``, ``cache_aware`` and the field's own fix, ``cache_aware`` tuned to fall back to the
shortest queue under imbalance (``SHORTEST_QUEUE``).

The verdict (issue 23). The *best SMG configuration* of a scenario is the SMG rule and overload setting with the
lowest mean makespan over the seeds. A testbed configuration **wins** the scenario when, paired by seed against
it, the 95 % intervals (Student t, ``sim.stats``) of its makespan difference and of its TTFT p99 difference both
lie below zero, and its mean ``kv_reuse`` is at least 95 % of the best's. It **loses nothing** when neither
interval lies above zero and its ``kv_reuse`` is within that 5 % (the question asked of ``default``).

    .venv/bin/python benchmarks/beyond_smg.py --scenario hot-worker kv-bound thrash default --seeds 0-9 \\
        --out docs/beyond-smg

It keeps every run in ``OUT/runs.json`` (written as runs finish; runs already there are not run again unless
``--fresh``), and writes ``OUT/summary.md`` (the verdict table with the intervals, then per scenario the mean
and interval of every configuration) and ``OUT/<scenario>.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sim.commands.common import console_for, run_many
from sim.runner import PolicyConfig, make_setup, public
from sim.stats import describe, paired_difference, parse_seeds
from sim.workload.scenario import load_scenario

OFF = ("--disable-worker-overload-protection",)
# SMG's cache_aware spills a request off its prefix holder when the holder's in-flight count is above both
# avg * rel and avg + min(abs, max(4, 2 sqrt(avg))). At the defaults (rel 1.5, abs 64) the margin is the
# in-flight count's natural swing, so a worker holding twice its share of sessions (thrash: 8 of 16 on 4
# workers, avg in flight <= 4) is never gated. abs 1 makes the margin one request and rel 1.1 drops the ratio
# test to a tenth over the average: a holder with more than one request above the average spills to the
# shortest expected wait, which is prime-rl's "shortest queue when imbalanced" (#3255).
SHORTEST_QUEUE = ("--balance-abs-threshold", "1", "--balance-rel-threshold", "1.1")
SMG_RULES: dict[str, PolicyConfig] = {
    "manual/random": PolicyConfig("manual", "random"),
    "manual/min_load": PolicyConfig("manual", "min_load"),
    "manual/min_group": PolicyConfig("manual", "min_group"),
    "manual/delegate": PolicyConfig("manual", "delegate"),
    "consistent_hashing": PolicyConfig("consistent_hashing"),
    "cache_aware": PolicyConfig("cache_aware"),
    "cache_aware/shortest-queue": PolicyConfig("cache_aware", None, SHORTEST_QUEUE),
}
NEW_RULES: dict[str, PolicyConfig] = {
    "bounded_load/requests": PolicyConfig("bounded_load", None, ("--bounded-load-measure", "requests")),
    "bounded_load/kv": PolicyConfig("bounded_load", None, ("--bounded-load-measure", "kv")),
    "manual/min_kv": PolicyConfig("manual", "min_kv"),
    "manual/min_kv+load": PolicyConfig("manual", "min_kv", ("--kv-repin-load-epsilon", "0.5")),
    # issue 23's changes, tuned on seeds 0-4 of thrash and kv-bound (docs/beyond-smg.md, "What we changed")
    "manual/min_kv+load idle10": PolicyConfig("manual", "min_kv", ("--kv-repin-load-epsilon", "0.5",
                                                                   "--session-kv-idle-secs", "10")),
    "manual/min_kv+spill": PolicyConfig("manual", "min_kv", ("--kv-repin-load-epsilon", "0.5", "--kv-repin-spill-gap",
                                                             "2", "--session-kv-idle-secs", "10")),
}
# what runs.json keeps of a run: the verdict's measures and what tells why a rule loses (the engine's counters)
KEPT = ("makespan", "ttft_p99", "kv_reuse", "ttft_p50", "stickiness", "imbalance", "prefill_tokens", "retractions",
        "recomputed_tokens", "queue_time_p50", "queue_time_p99", "decode_stall_seconds", "errors", "re_pins",
        "re_pins_by_cause")
VERDICT_MEASURES = ("makespan", "ttft_p99")
REUSE_TOLERANCE = 0.05


@dataclasses.dataclass(frozen=True)
class Config:
    rule: str
    new: bool
    overload: str  # worker overload protection: "on" (SMG's default) or "off"
    policy: PolicyConfig

    @property
    def label(self) -> str:
        return f"{self.rule} [{self.overload}]"


def configs() -> list[Config]:
    """Every rule under both overload settings, SMG's first."""
    out = []
    for rules, new in ((SMG_RULES, False), (NEW_RULES, True)):
        for name, pc in rules.items():
            out.append(Config(name, new, "on", pc))
            out.append(Config(name, new, "off", dataclasses.replace(pc, extra=pc.extra + OFF)))
    return out


def run(scenarios: Sequence[str], seeds: Sequence[int], jobs: int, cache: Path) -> list[dict[str, Any]]:
    """Every (scenario, configuration, seed) not yet in ``cache``; the cache is rewritten as each run finishes."""
    console = console_for()
    done: list[dict[str, Any]] = json.loads(cache.read_text()) if cache.exists() else []
    have = {(r["scenario"], r["label"], r["seed"]) for r in done}
    todo, meta = [], {}
    for name in scenarios:
        base = load_scenario(name)
        for seed in seeds:
            sc = base.replace(seed=seed)
            for c in configs():
                if (name, c.label, seed) in have:
                    continue
                key = f"{name}|{c.label}|{seed}"  # the setup's label: it names the run, it changes nothing in it
                todo.append(dataclasses.replace(make_setup(sc, c.policy, True, seed), label=key))
                meta[key] = {"scenario": name, "rule": c.rule, "new": c.new, "overload": c.overload,
                             "label": c.label, "seed": seed}
    console.print(f"beyond_smg: {len(todo)} runs to do ({len(done)} cached in {cache})")
    cache.parent.mkdir(parents=True, exist_ok=True)

    def keep(row: dict[str, Any]) -> None:
        pub = public(row)
        done.append({**meta[pub["label"]], **{k: pub[k] for k in KEPT if k in pub}})
        cache.write_text(json.dumps(done, indent=1) + "\n")

    if todo:
        run_many(todo, "direct", jobs, console, on_row=keep)
    return done


def rows_of(runs: Sequence[dict[str, Any]], scenario: str, seeds: Sequence[int]) -> list[dict[str, Any]]:
    order = {c.label: i for i, c in enumerate(configs())}
    rows = [r for r in runs if r["scenario"] == scenario and r["seed"] in seeds and r["label"] in order]
    return sorted(rows, key=lambda r: (order[r["label"]], r["seed"]))


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration: rule, overload, new, seeds, errors and ``describe`` of every kept numeric measure."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["label"], []).append(r)
    out = []
    for label, rs in groups.items():
        s = {"label": label, "rule": rs[0]["rule"], "overload": rs[0]["overload"], "new": rs[0]["new"],
             "seeds": [r["seed"] for r in rs], "errors": sum(r.get("errors", 0) for r in rs)}
        for m in KEPT:
            if m not in ("errors", "re_pins_by_cause") and all(isinstance(r.get(m), int | float) for r in rs):
                s[m] = describe([float(r[m]) for r in rs])
        out.append(s)
    return out


def best_smg(summary: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The SMG configuration (rule and overload setting) with the lowest mean makespan."""
    return min((s for s in summary if not s["new"]), key=lambda s: s["makespan"]["mean"])


def verdict(rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], label: str) -> dict[str, Any]:
    """``label`` against the scenario's best SMG configuration, paired by seed (see the module docstring)."""
    best = best_smg(summary)
    by = {s["label"]: s for s in summary}
    diff = paired_difference(rows, label, best["label"], ("makespan", "ttft_p99", "kv_reuse"))["measures"]
    reuse = by[label]["kv_reuse"]["mean"] / best["kv_reuse"]["mean"] - 1
    reuse_ok = reuse >= -REUSE_TOLERANCE
    below = all(diff[m]["ci95"] is not None and diff[m]["ci95"][1] < 0 for m in VERDICT_MEASURES)
    above = any(diff[m]["ci95"] is not None and diff[m]["ci95"][0] > 0 for m in VERDICT_MEASURES)
    word = "wins" if below and reuse_ok else "loses nothing" if not above and reuse_ok else "loses"
    return {"label": label, "versus": best["label"], "diff": diff, "reuse": reuse, "verdict": word}


def fmt_ci(d: dict[str, Any], digits: int) -> str:
    lo, hi = d["ci95"] or (float("nan"), float("nan"))
    return f"{d['mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def verdict_table(items: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """One line per (scenario, testbed configuration): the paired differences with their 95 % intervals."""
    lines = ["| scenario | testbed rule [overload protection] | vs best SMG | makespan diff s [95 % CI] | "
             "TTFT p99 diff s [95 % CI] | kv_reuse vs best | verdict |",
             "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for scenario, v in items:
        word = f"**{v['verdict']}**" if v["verdict"] == "wins" else v["verdict"]
        lines.append(f"| {scenario} | {v['label']} | {v['versus']} | {fmt_ci(v['diff']['makespan'], 1)} | "
                     f"{fmt_ci(v['diff']['ttft_p99'], 3)} | {v['reuse']:+.1%} | {word} |")
    return "\n".join(lines)


def mean_ci(d: dict[str, Any], digits: int) -> str:
    if d["ci95"] is None:
        return f"{d['mean']:.{digits}f}"
    return f"{d['mean']:.{digits}f} ± {(d['ci95'][1] - d['ci95'][0]) / 2:.{digits}f}"


def scenario_table(summary: Sequence[dict[str, Any]]) -> str:
    """Mean ± half the 95 % interval of each configuration, plus the engine's counters (means)."""
    lines = ["| rule | overload protection | makespan s | TTFT p99 s | kv_reuse | stickiness | queue p99 s | "
             "retractions | recomputed tokens | errors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in summary:
        name = f"**{s['rule']}** (testbed)" if s["new"] else s["rule"]
        lines.append(f"| {name} | {s['overload']} | {mean_ci(s['makespan'], 1)} | {mean_ci(s['ttft_p99'], 3)} | "
                     f"{mean_ci(s['kv_reuse'], 3)} | {s['stickiness']['mean']:.3f} | "
                     f"{s['queue_time_p99']['mean']:.2f} | {s['retractions']['mean']:.1f} | "
                     f"{s['recomputed_tokens']['mean']:.0f} | {s['errors']} |")
    return "\n".join(lines)


def plot(summary: Sequence[dict[str, Any]], scenario: str, path: Path) -> None:
    """Per rule and overload setting: mean and 95 % interval of makespan, TTFT p99 and kv_reuse."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rules = list(dict.fromkeys(s["rule"] for s in summary))
    by = {(s["rule"], s["overload"]): s for s in summary}
    best = best_smg(summary)
    x = np.arange(len(rules))
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for ax, m, title in zip(axes, ("makespan", "ttft_p99", "kv_reuse"),
                            ("makespan (s, lower is better)", "TTFT p99 (s, lower is better)",
                             "kv_reuse (higher is better)"), strict=True):
        for i, (ov, color) in enumerate((("on", "tab:blue"), ("off", "tab:orange"))):
            cells = [by.get((rule, ov)) for rule in rules]
            vals = [c[m]["mean"] if c else np.nan for c in cells]
            err = [[c[m]["mean"] - c[m]["ci95"][0] if c and c[m]["ci95"] else 0 for c in cells],
                   [c[m]["ci95"][1] - c[m]["mean"] if c and c[m]["ci95"] else 0 for c in cells]]
            bars = ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, yerr=err, capsize=2, color=color,
                          label=f"overload protection {ov}")
            for b, c in zip(bars, cells, strict=True):
                if c and c["new"]:
                    b.set_hatch("//")
        ax.axhline(best[m]["mean"], color="k", ls="--", lw=1, label=f"best SMG ({best['label']})")
        if m == "kv_reuse":
            ax.axhline((1 - REUSE_TOLERANCE) * best[m]["mean"], color="grey", ls=":", lw=1, label="95 % of it")
        ax.set_xticks(x, rules, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7, loc="lower left")
    axes[2].legend(fontsize=7, loc="lower left")
    seeds = summary[0]["seeds"]
    fig.suptitle(f"{scenario}: mean and 95 % interval over seeds {seeds[0]}-{seeds[-1]} ({len(seeds)}); "
                 "hatched = testbed rules")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(runs: Sequence[dict[str, Any]], scenarios: Sequence[str], seeds: Sequence[int], out: Path,
           command: str) -> str:
    """The verdict table, then per scenario its configurations; the figures beside it. Returns the markdown."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    items, sections = [], []
    for name in scenarios:
        rows = rows_of(runs, name, seeds)
        summary = summarize(rows)
        for s in summary:
            if s["new"]:
                items.append((name, verdict(rows, summary, s["label"])))
        plot(summary, name, out / f"{name}.png")
        sections += [f"## {name}", "", f"Best SMG configuration (lowest mean makespan): {best_smg(summary)['label']}.",
                     "", scenario_table(summary), "", f"![{name}]({name}.png)", ""]
    md = [f"# Beyond SMG: verdicts over seeds {seeds[0]}-{seeds[-1]} ({len(seeds)} seeds; tree at {head})", "",
          f"Regenerate: `{command}`", "",
          "Differences are testbed rule minus the scenario's best SMG configuration, paired by seed; "
          "intervals are 95 % Student t. **wins**: both intervals below zero and kv_reuse within 5 %; "
          "**loses nothing**: no interval above zero and kv_reuse within 5 %.", "",
          verdict_table(items), "", "Per scenario: mean ± half the 95 % interval.", "", *sections]
    text = "\n".join(md)
    (out / "summary.md").write_text(text)
    return verdict_table(items)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", nargs="+", default=["hot-worker", "kv-bound", "thrash", "default"])
    p.add_argument("--seeds", default="0-9", help="a range or a list: 0-9, 0,3,5, 0-4,8")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="docs/beyond-smg")
    p.add_argument("--fresh", action="store_true", help="ignore OUT/runs.json and run everything again")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        p.error(str(e))
    out = Path(args.out)
    cache = out / "runs.json"
    if args.fresh and cache.exists():
        cache.unlink()
    runs = run(args.scenario, seeds, args.jobs, cache)
    command = (f".venv/bin/python benchmarks/beyond_smg.py --scenario {' '.join(args.scenario)} --seeds {args.seeds} "
               f"--out {args.out}")
    print(report(runs, args.scenario, seeds, out, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
