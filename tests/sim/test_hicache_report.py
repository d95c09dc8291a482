"""compare on a HiCache scenario: the no-L3 baseline and the read-bandwidth sweep it adds, the tier columns, the
findings (how much of the no-key loss L3 recovers, at what TTFT cost), tiers.png, and the crossover where the key's
TTFT benefit falls under 5 % (benefit_sweep). Rows here are synthetic: the report's arithmetic is under test."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.commands.compare import (
    NO_L3_POLICIES,
    bandwidths,
    no_l3_setups,
    read_bandwidth_setups,
    read_bandwidth_sweep,
)
from sim.report import (
    BANDWIDTH_PLOT,
    HICACHE_COLUMNS,
    TIERS_PLOT,
    benefit_lines,
    benefit_sweep,
    columns,
    config_name,
    findings,
    hicache_findings,
    key_benefit,
    write_benefit_plot,
    write_markdown,
    write_plots,
)
from sim.workload.scenario import load_scenario


def row(policy: str, mode: str | None, key: bool, tiers: tuple[float, float, float], *, l3: bool = True,
        ttft: float = 0.2, fetch: float = 0.01) -> dict[str, Any]:
    device, host, storage = tiers
    r: dict[str, Any] = {"label": f"{policy} key={'on' if key else 'off'}", "policy": policy, "assignment_mode": mode,
                         "routing_key": key, "kv_reuse": device + host + storage, "oracle_reuse": 0.9,
                         "eligible_reuse": 0.8, "stickiness": 1.0 if key else 0.2, "prefill_tokens": 10**6,
                         "ttft_p50": ttft, "ttft_p99": 2 * ttft, "e2e_p50": 1.0, "makespan": 100.0, "imbalance": 1.1,
                         "requests": 1000, "errors": 0, "sessions": 64, "peak_key_in_flight": 1,
                         "transport": "direct", "seed": 0, "gateway_branches": {},
                         "workers": [{"name": f"w{i}", "prefill_tokens": 10**5} for i in range(4)],
                         "reuse_device": device, "reuse_host": host, "reuse_storage": storage,
                         "load_back_seconds_mean": fetch / 2, "prefetch_seconds_mean": fetch / 2,
                         "ttft_load_back_mean": fetch, "ttft_compute_mean": ttft - fetch,
                         "storage_read_bytes": 2 * 10**9 if l3 else 0, "storage_write_bytes": 3 * 10**9 if l3 else 0}
    if not l3:
        r["l3"] = False
    return r


def runs() -> list[dict[str, Any]]:
    return [row("manual", "min_load", True, (0.6, 0.2, 0.0), ttft=0.10),
            row("manual", "min_load", False, (0.2, 0.05, 0.45), ttft=0.13, fetch=0.03),
            row("consistent_hashing", None, True, (0.6, 0.2, 0.0)),
            row("consistent_hashing", None, False, (0.2, 0.05, 0.45)),
            row("manual", "min_load", True, (0.6, 0.2, 0.0), l3=False, ttft=0.10),
            row("manual", "min_load", False, (0.2, 0.1, 0.0), l3=False, ttft=0.30),
            row("consistent_hashing", None, True, (0.6, 0.2, 0.0), l3=False),
            row("consistent_hashing", None, False, (0.6, 0.2, 0.0), l3=False)]


def test_compare_on_a_scenario_with_l3_adds_a_no_l3_baseline_and_the_sweep():
    s = load_scenario("hicache")
    base = no_l3_setups(s, [0, 1])
    assert len(base) == 2 * 2 * len(NO_L3_POLICIES)
    assert all(not x.scenario.storage and x.scenario.hicache and x.extra["l3"] is False for x in base)
    assert base[0].label == "no-L3 manual/min_load key=on"
    swept = read_bandwidth_setups(s, (0.5, 8.0), [0])
    assert [(x.scenario.hicache_storage_read_bandwidth_gb_s, x.routing_key) for x in swept] == \
        [(0.5, True), (0.5, False), (8.0, True), (8.0, False)]
    assert {x.extra["policy"] for x in swept} == {"manual"} and swept[0].extra["l3_read_gb_s"] == 0.5
    assert no_l3_setups(s.without_storage(), [0]) == read_bandwidth_setups(load_scenario("default"), (1.0,), [0]) == []


def test_the_pd_hicache_baseline_without_l3_stays_pd_without_the_offload():
    [x, *_] = no_l3_setups(load_scenario("pd-hicache"), [0])
    assert x.scenario.pd and not x.scenario.storage and not x.scenario.disaggregation_decode_enable_offload_kvcache
    assert x.extra["pool"] == "pd" and "--pd-disaggregation" in x.gateway_args


def test_read_bandwidth_sweep_option():
    assert bandwidths("32,0.5,2,2") == (0.5, 2.0, 32.0) and bandwidths("off") == ()
    for bad in ("0,1", "fast", "", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            bandwidths(bad)


def test_rows_without_l3_are_named_and_tier_columns_shown():
    rs = runs()
    assert config_name(rs[4]) == "no-L3 manual/min_load" and config_name(rs[0]) == "manual/min_load"
    assert set(HICACHE_COLUMNS) <= set(columns(rs))
    assert not set(HICACHE_COLUMNS) & set(columns([{k: v for k, v in r.items() if "reuse_" not in k} for r in rs]))


def test_the_findings_say_how_much_of_the_no_key_loss_l3_recovers_and_the_ttft_cost():
    rs = runs()
    lines = hicache_findings(rs[:4], rs[4:])
    manual = next(line for line in lines if line.startswith("manual/min_load:"))
    # without L3: 80% -> 30% (50 points); with L3: 80% -> 70% (10 points): L3 recovers 80 % of the loss
    assert "drops 50.0 points without L3" in manual and "10.0 with it" in manual
    assert "L3 recovers 80% of the no-key loss" in manual
    assert "TTFT p50 without the key 0.130s against 0.100s with it (+30%; without L3 +200%)" in manual
    assert "30.0 ms of mean TTFT without the key" in manual
    ch = next(line for line in lines if line.startswith("consistent_hashing:"))
    assert "the key buys no reuse here even without L3" in ch
    assert any("key off GPU 20.0% + host 5.0% + L3 45.0% = 70.0%" in line for line in lines)
    assert any("2.00 GB read and 3.00 GB written with the key" in line for line in lines)
    assert findings(rs)[-1] == "No run had errors." and sum(line in findings(rs) for line in lines) == len(lines)


def test_the_report_has_the_tier_plot_and_the_read_bandwidth_section(tmp_path):
    rs = runs()
    plots = write_plots(tmp_path, rs)
    assert TIERS_PLOT in plots and (tmp_path / TIERS_PLOT).stat().st_size > 0
    sweep = benefit_sweep([(0.5, 0.1, 0.3), (2.0, 0.1, 0.15), (8.0, 0.1, 0.102), (32.0, 0.1, 0.1)])
    plots.append(write_benefit_plot(tmp_path, sweep, "L3 read bandwidth (GB/s)"))
    scenario = load_scenario("hicache").to_dict()
    text = write_markdown(tmp_path, scenario, rs, plots, read_bandwidth=sweep).read_text()
    assert "L3 `mooncake` shared by the pool (unbounded), read 40 GB/s" in text
    assert f"![{TIERS_PLOT}]({TIERS_PLOT})" in text and f"![{BANDWIDTH_PLOT}]({BANDWIDTH_PLOT})" in text
    assert "## L3 read bandwidth: where stickiness stops mattering" in text
    assert "--read-bandwidth-sweep 0.5,2,8,32" in text and "Crossover" in text


def test_the_crossover_is_where_the_benefit_falls_under_the_threshold_interpolated_in_log_bandwidth():
    sweep = benefit_sweep([(8.0, 1.0, 1.0), (0.5, 1.0, 2.0), (2.0, 1.0, 1.1)])
    assert [p["value"] for p in sweep["points"]] == [0.5, 2.0, 8.0]
    assert [p["benefit"] for p in sweep["points"]] == pytest.approx([0.5, 1 / 11, 0.0])
    t = (1 / 11 - 0.05) / (1 / 11)
    assert sweep["crossover"] == pytest.approx(2.0 * 4 ** t)
    assert "Crossover" in benefit_lines(sweep, "read bandwidth", " GB/s")[-1]


def test_no_crossover_when_the_key_still_pays_at_the_top_and_the_lowest_when_it_never_does():
    high = benefit_sweep([(1.0, 1.0, 2.0), (10.0, 1.0, 1.5)])
    assert high["crossover"] is None and "No crossover" in benefit_lines(high, "x")[-1]
    low = benefit_sweep([(1.0, 1.0, 1.01), (10.0, 1.0, 1.0)])
    assert low["crossover"] == 1.0 and low["below_throughout"]
    assert benefit_sweep([])["crossover"] is None and benefit_lines(benefit_sweep([]), "x") == []


@given(st.lists(st.tuples(st.floats(0.1, 100), st.floats(0.01, 10), st.floats(0.01, 10)), min_size=1, max_size=8,
                unique_by=lambda p: p[0]))
def test_above_the_crossover_every_point_is_under_the_threshold(points):
    sweep = benefit_sweep(points)
    if sweep["crossover"] is not None:
        assert all(p["benefit"] < 0.05 for p in sweep["points"] if p["value"] > sweep["crossover"])
        assert min(v for v, _, _ in points) <= sweep["crossover"] <= max(v for v, _, _ in points)


def test_key_benefit_and_the_sweep_of_rows_averages_seeds():
    assert key_benefit(0.1, 0.2) == pytest.approx(0.5) and key_benefit(0.1, 0.0) == 0.0
    rows = [{"l3_read_gb_s": 2.0, "routing_key": k, "ttft_p50": t} for k, t in
            ((True, 0.1), (True, 0.3), (False, 0.4), (False, 0.4))]
    [p] = read_bandwidth_sweep(rows)["points"]
    assert (p["on"], p["off"], p["benefit"]) == pytest.approx((0.2, 0.4, 0.5))
