"""Beyond SMG: the testbed's new routing rules against every SMG header rule, over several seeds.

For each scenario and seed it runs every rule (direct transport, routing key on) twice: with SMG 1.13.0's
defaults (worker overload protection on) and with ``--disable-worker-overload-protection``. It writes
``OUT/runs.json`` (every run's measures), ``OUT/summary.md`` (mean over seeds, verdicts) and, per
scenario, ``OUT/<scenario>.png`` (makespan, TTFT p99 and kv_reuse per rule).

    .venv/bin/python benchmarks/beyond_smg.py --scenario kv-pressure hot-worker default --seeds 0 1 2 \\
        --out docs/beyond-smg

The verdict for a new rule on a scenario: it beats a rule when its mean makespan and mean TTFT p99 are both
lower, and its mean kv_reuse is at least 95% of the best SMG rule's. SMG rules count under both overload
settings (each SMG rule is taken at its better setting per measure), so a win is never bought by a
setting that SMG could use too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from sim.commands.common import console_for, run_many
from sim.runner import PolicyConfig, make_setup, public
from sim.workload.scenario import load_scenario

OFF = ("--disable-worker-overload-protection",)
SMG_RULES: dict[str, PolicyConfig] = {
    "manual/random": PolicyConfig("manual", "random"),
    "manual/min_load": PolicyConfig("manual", "min_load"),
    "manual/min_group": PolicyConfig("manual", "min_group"),
    "manual/delegate": PolicyConfig("manual", "delegate"),
    "consistent_hashing": PolicyConfig("consistent_hashing"),
    "cache_aware": PolicyConfig("cache_aware"),
}
NEW_RULES: dict[str, PolicyConfig] = {
    "manual/min_kv": PolicyConfig("manual", "min_kv"),
    "manual/min_kv+load": PolicyConfig("manual", "min_kv", ("--kv-repin-load-epsilon", "0.5")),
    "bounded_load/requests": PolicyConfig("bounded_load", None, ("--bounded-load-measure", "requests")),
    "bounded_load/kv": PolicyConfig("bounded_load", None, ("--bounded-load-measure", "kv")),
}
MEASURES = ("makespan", "ttft_p99", "kv_reuse", "ttft_p50", "stickiness", "imbalance", "prefill_tokens")


def configs() -> list[tuple[str, bool, str, PolicyConfig]]:
    """(rule, is_new, overload, config) for every rule under both overload settings."""
    out = []
    for rules, new in ((SMG_RULES, False), (NEW_RULES, True)):
        for name, pc in rules.items():
            out.append((name, new, "on", pc))
            out.append((name, new, "off", PolicyConfig(pc.policy, pc.assignment_mode, pc.extra + OFF)))
    return out


def run(scenarios: Sequence[str], seeds: Sequence[int], jobs: int, out: Path) -> list[dict[str, Any]]:
    console = console_for()
    cache = out / "runs.json"
    done: list[dict[str, Any]] = json.loads(cache.read_text()) if cache.exists() else []
    have = {(r["scenario"], r["rule"], r["overload"], r["seed"]) for r in done}
    todo, meta = [], []
    for name in scenarios:
        base = load_scenario(name)
        for seed in seeds:
            sc = base.replace(seed=seed)
            for rule, new, ov, pc in configs():
                if (name, rule, ov, seed) in have:
                    continue
                todo.append(make_setup(sc, pc, True, seed))
                meta.append({"scenario": name, "rule": rule, "new": new, "overload": ov, "seed": seed})
    console.print(f"beyond_smg: {len(todo)} runs to do ({len(done)} cached in {cache})")
    rows = run_many(todo, "direct", jobs, console) if todo else []
    for m, r in zip(meta, rows, strict=True):
        done.append({**m, **{k: v for k, v in public(r).items() if k in MEASURES or k in ("errors", "branches")}})
    out.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(done, indent=1) + "\n")
    return done


def summarize(runs: list[dict[str, Any]], scenario: str) -> list[dict[str, Any]]:
    """Mean over seeds per (rule, overload)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        if r["scenario"] == scenario:
            groups.setdefault((r["rule"], r["overload"]), []).append(r)
    out = []
    for (rule, ov), rs in groups.items():
        row = {"rule": rule, "overload": ov, "new": rs[0]["new"], "seeds": len(rs),
               "errors": sum(x["errors"] for x in rs)}
        for m in MEASURES:
            row[m] = mean(x[m] for x in rs)
        out.append(row)
    order = list(SMG_RULES) + list(NEW_RULES)
    out.sort(key=lambda r: (order.index(r["rule"]), r["overload"] != "on"))
    return out


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    smg = [r for r in rows if not r["new"]]
    best_mk = min(r["makespan"] for r in smg)
    best_p99 = min(r["ttft_p99"] for r in smg)
    best_reuse = max(r["kv_reuse"] for r in smg)
    lines = [f"best SMG rule (any overload setting): makespan {best_mk:.1f} s, TTFT p99 {best_p99:.3f} s, "
             f"kv_reuse {best_reuse:.3f}"]
    for r in rows:
        if not r["new"]:
            continue
        ok_mk, ok_p99 = r["makespan"] < best_mk, r["ttft_p99"] < best_p99
        ok_reuse = r["kv_reuse"] >= 0.95 * best_reuse
        win = ok_mk and ok_p99 and ok_reuse
        lines.append(
            f"{'WINS' if win else 'does not win'}: {r['rule']} (overload protection {r['overload']}): makespan "
            f"{r['makespan']:.1f} ({'<' if ok_mk else '>='} best), TTFT p99 {r['ttft_p99']:.3f} "
            f"({'<' if ok_p99 else '>='} best), kv_reuse {r['kv_reuse']:.3f} "
            f"({r['kv_reuse'] / best_reuse - 1:+.1%} vs best SMG)"
        )
    return lines


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| rule | overload protection | makespan s | TTFT p99 s | TTFT p50 s | kv_reuse | stickiness | imbalance |"
            "\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    lines = [head]
    for r in rows:
        name = f"**{r['rule']}** (new)" if r["new"] else r["rule"]
        lines.append(f"| {name} | {r['overload']} | {r['makespan']:.1f} | {r['ttft_p99']:.3f} | {r['ttft_p50']:.3f} | "
                     f"{r['kv_reuse']:.3f} | {r['stickiness']:.3f} | {r['imbalance']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], scenario: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rules = list(dict.fromkeys(r["rule"] for r in rows))
    by = {(r["rule"], r["overload"]): r for r in rows}
    x = np.arange(len(rules))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, m, label in zip(axes, ("makespan", "ttft_p99", "kv_reuse"),
                            ("makespan (s, lower is better)", "TTFT p99 (s, lower is better)",
                             "kv_reuse (higher is better)"), strict=True):
        for i, (ov, color) in enumerate((("on", "tab:blue"), ("off", "tab:orange"))):
            vals = [by[(rule, ov)][m] if (rule, ov) in by else np.nan for rule in rules]
            bars = ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, color=color, label=f"overload protection {ov}")
            for b, rule in zip(bars, rules, strict=True):
                if by.get((rule, ov), {}).get("new"):
                    b.set_hatch("//")
        smg = [r[m] for r in rows if not r["new"]]
        best = max(smg) if m == "kv_reuse" else min(smg)
        ax.axhline(best, color="k", ls="--", lw=1, label="best SMG rule")
        if m == "kv_reuse":
            ax.axhline(0.95 * best, color="grey", ls=":", lw=1, label="95% of best SMG")
        ax.set_xticks(x, rules, rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=7, loc="lower left")
    axes[2].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{scenario}: mean over seeds; hatched = new rules (testbed extensions)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", nargs="+", default=["kv-pressure", "hot-worker", "default"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="docs/beyond-smg")
    p.add_argument("--fresh", action="store_true", help="ignore OUT/runs.json and run everything again")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    out = Path(args.out)
    if args.fresh and (out / "runs.json").exists():
        (out / "runs.json").unlink()
    runs = run(args.scenario, args.seeds, args.jobs, out)
    import subprocess

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    md = [f"# Beyond SMG: results (seeds {' '.join(map(str, args.seeds))}, mean over seeds; tree at {head})", "",
          "Regenerate: `.venv/bin/python benchmarks/beyond_smg.py --scenario "
          f"{' '.join(args.scenario)} --seeds {' '.join(map(str, args.seeds))} --out {args.out} --fresh`", ""]
    for name in args.scenario:
        rows = summarize(runs, name)
        plot(rows, name, out / f"{name}.png")
        md += [f"## {name}", "", table(rows), "", *[f"- {v}" for v in verdicts(rows)], "", f"![{name}]({name}.png)", ""]
        print(f"\n== {name}")
        print(table(rows))
        print("\n".join(verdicts(rows)))
    (out / "summary.md").write_text("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
