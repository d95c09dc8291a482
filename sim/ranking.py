"""``compare`` under several profiles: the configurations ranked by makespan on each, and which change rank.

A row run under one of several profiles carries ``profile`` (the profile's name) and a label ending in
`` @<profile>`` (``profile_label``), so every (configuration, profile) pair is a configuration of its own for the
seed statistics. The ranking takes the configurations with the routing key, orders them by mean makespan over
their seeds (ties by label, so the ranks of a profile are always 1..n) and reports, for the configurations ranked
on every profile, those whose rank differs between profiles."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

RANKED_BY = "makespan"
SHOWN_BESIDE = ("ttft_p99", "kv_reuse")


def profile_label(label: str, profile: str) -> str:
    """A configuration's label under one of several profiles."""
    return f"{label} @{profile}"


def configuration(row: Mapping[str, Any]) -> str:
    """The row's configuration label without its profile (the label itself for a row without one)."""
    profile = row.get("profile")
    return row["label"].removesuffix(f" @{profile}") if profile else row["label"]


def rows_by_profile(rows: Sequence[Mapping[str, Any]]) -> dict[str | None, list[Mapping[str, Any]]]:
    """The rows grouped by ``profile`` (None for rows without one), in first-seen order."""
    out: dict[str | None, list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(r.get("profile"), []).append(r)
    return out


def _mean(values: Sequence[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return sum(nums) / len(nums) if nums else None


def rank_by_profile(rows: Sequence[Mapping[str, Any]],
                    kv_capacity: Mapping[str | None, float | None] | None = None) -> dict[str, Any]:
    """Per profile, the configurations with the routing key ranked by mean makespan (1 = shortest), each with its
    seeds and mean ``ttft_p99`` and ``kv_reuse`` (and the profile's ``kv_capacity_tokens`` when ``kv_capacity``
    gives it); and ``changes``: the configurations ranked on every profile whose rank is not the same on all of
    them, the largest rank difference first (``ranks`` by profile)."""
    profiles = []
    for name, group in rows_by_profile([r for r in rows if r["routing_key"]]).items():
        configs: dict[str, list[Mapping[str, Any]]] = {}
        for r in group:
            configs.setdefault(configuration(r), []).append(r)
        entries = [{"configuration": c, "seeds": [r["seed"] for r in rs],
                    **{m: _mean([r.get(m) for r in rs]) for m in (RANKED_BY, *SHOWN_BESIDE)}}
                   for c, rs in configs.items()]
        entries.sort(key=lambda e: (math.inf if e[RANKED_BY] is None else e[RANKED_BY], e["configuration"]))
        capacity = {"kv_capacity_tokens": kv_capacity[name]} if kv_capacity and name in kv_capacity else {}
        profiles.append({"profile": name, **capacity, "ranking": [{"rank": i + 1, **e} for i, e in enumerate(entries)]})
    ranks = [{e["configuration"]: e["rank"] for e in p["ranking"]} for p in profiles]
    everywhere = [c for c in (ranks[0] if ranks else {}) if all(c in rk for rk in ranks)]
    changes = [{"configuration": c, "ranks": {p["profile"]: rk[c] for p, rk in zip(profiles, ranks, strict=True)}}
               for c in everywhere if len({rk[c] for rk in ranks}) > 1]
    changes.sort(key=lambda ch: (min(ch["ranks"].values()) - max(ch["ranks"].values()), ranks[0][ch["configuration"]]))
    return {"ranked_by": RANKED_BY, "profiles": profiles, "changes": changes}


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def ranking_lines(ranking: Mapping[str, Any]) -> list[str]:
    """In words: the shortest makespan on each profile, and which configurations changed rank between profiles."""
    profiles = ranking["profiles"]
    if not profiles or not any(p["ranking"] for p in profiles):
        return ["No configuration ran with the routing key: nothing to rank."]
    firsts = [(p["profile"], p["ranking"][0]["configuration"]) for p in profiles if p["ranking"]]
    if len({c for _, c in firsts}) == 1:
        out = [f"{firsts[0][1]} has the shortest makespan on every profile."]
    else:
        out = ["Shortest makespan: " + "; ".join(f"{c} on {p}" for p, c in firsts) + "."]
    changes = ranking["changes"]
    if not changes:
        out.append("Every configuration keeps its rank on every profile.")
    for ch in changes:
        places = [f"{ordinal(rank)} on {p}" for p, rank in ch["ranks"].items()]
        joined = " but ".join(places) if len(places) == 2 else ", ".join(places)
        out.append(f"{ch['configuration']} is {joined}.")
    if all(len(e["seeds"]) < 2 for p in profiles for e in p["ranking"]):
        out.append("One seed: configurations whose makespans lie within a few percent may swap ranks under another "
                   "seed; --seeds (e.g. 0-4) ranks by the mean over seeds.")
    return out
