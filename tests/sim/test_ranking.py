"""sim.ranking: the configurations with the routing key ranked by makespan per profile, and the rank changes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sim.ranking import configuration, ordinal, profile_label, rank_by_profile, ranking_lines

A, B = "llama-3.1-8b-h200-tp1", "qwen3-30b-a3b-h100-tp1"


def row(config: str, profile: str | None, makespan: float, seed: int = 0, key: bool = True, **measures: float):
    label = f"{config} key={'on' if key else 'off'}"
    out = {"label": profile_label(label, profile) if profile else label, "routing_key": key, "seed": seed,
           "makespan": makespan, "ttft_p99": 0.5, "kv_reuse": 0.8, **measures}
    return {**out, "profile": profile} if profile else out


def ranks(ranking, profile):
    return {e["configuration"]: e["rank"] for p in ranking["profiles"] if p["profile"] == profile
            for e in p["ranking"]}


def test_a_rows_configuration_is_its_label_without_the_profile():
    assert configuration(row("manual/random", A, 1.0)) == "manual/random key=on"
    assert configuration(row("manual/random", None, 1.0)) == "manual/random key=on"


def test_the_shortest_mean_makespan_ranks_first_and_key_off_rows_are_left_out():
    rows = [row("manual/random", A, 100.0, seed=0), row("manual/random", A, 140.0, seed=1),
            row("round_robin", A, 110.0, seed=0), row("round_robin", A, 110.0, seed=1),
            row("manual/min_load", A, 50.0, key=False)]
    [profile] = rank_by_profile(rows)["profiles"]
    assert [(e["rank"], e["configuration"], e["makespan"], e["seeds"]) for e in profile["ranking"]] == [
        (1, "round_robin key=on", 110.0, [0, 1]), (2, "manual/random key=on", 120.0, [0, 1])]


def test_a_configuration_that_moves_is_told_in_words():
    rows = [row("manual/random", A, 100.0), row("manual/min_load", A, 105.0), row("cache_aware", A, 110.0),
            row("manual/random", B, 300.0), row("manual/min_load", B, 200.0), row("cache_aware", B, 250.0)]
    ranking = rank_by_profile(rows, {A: 917_036, B: 165_907})
    assert ranks(ranking, A) == {"manual/random key=on": 1, "manual/min_load key=on": 2, "cache_aware key=on": 3}
    assert ranks(ranking, B) == {"manual/random key=on": 3, "manual/min_load key=on": 1, "cache_aware key=on": 2}
    assert [p["kv_capacity_tokens"] for p in ranking["profiles"]] == [917_036, 165_907]
    assert ranking["changes"][0] == {"configuration": "manual/random key=on", "ranks": {A: 1, B: 3}}
    lines = ranking_lines(ranking)
    assert f"manual/random key=on is 1st on {A} but 3rd on {B}." in lines
    assert f"Shortest makespan: manual/random key=on on {A}; manual/min_load key=on on {B}." in lines
    assert any(line.startswith("One seed:") for line in lines)


def test_the_same_order_everywhere_reports_no_change():
    rows = [row(c, p, m * (3 if p == B else 1)) for p in (A, B) for c, m in (("x", 1.0), ("y", 2.0))]
    ranking = rank_by_profile(rows)
    assert ranking["changes"] == []
    assert ranking_lines(ranking)[:2] == ["x key=on has the shortest makespan on every profile.",
                                          "Every configuration keeps its rank on every profile."]


def test_ordinals():
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"]


CONFIGS = [f"policy{i}" for i in range(6)]
makespans = st.lists(st.sampled_from([10.0, 20.0, 30.0, 40.0, 50.0, 60.0]), min_size=len(CONFIGS),
                     max_size=len(CONFIGS))


@given(makespans, makespans)
def test_ranks_are_a_permutation_and_every_move_is_reported(on_a, on_b):
    rows = [row(c, p, m) for p, ms in ((A, on_a), (B, on_b)) for c, m in zip(CONFIGS, ms, strict=True)]
    ranking = rank_by_profile(rows)
    ra, rb = ranks(ranking, A), ranks(ranking, B)
    assert sorted(ra.values()) == sorted(rb.values()) == list(range(1, len(CONFIGS) + 1))
    for by_rank in (ra, rb):  # a shorter makespan never ranks below a longer one
        order = sorted(by_rank, key=by_rank.get)
        ms = dict(zip([f"{c} key=on" for c in CONFIGS], on_a if by_rank is ra else on_b, strict=True))
        assert [ms[c] for c in order] == sorted(ms.values())
    moved = {c for c in ra if ra[c] != rb[c]}
    assert {ch["configuration"] for ch in ranking["changes"]} == moved
    assert {ch["configuration"]: ch["ranks"] for ch in ranking["changes"]} == {c: {A: ra[c], B: rb[c]} for c in moved}
    spreads = [abs(ch["ranks"][A] - ch["ranks"][B]) for ch in ranking["changes"]]
    assert spreads == sorted(spreads, reverse=True)
    lines = " ".join(ranking_lines(ranking))
    assert all(f"{c} is {ordinal(ra[c])} on {A} but {ordinal(rb[c])} on {B}." in lines for c in moved)
