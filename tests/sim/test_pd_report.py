"""compare on a PD scenario: the issue's policy grid on the PD pool plus a co-located baseline of the same total
worker count, the PD columns, and a report that says in words and a plot what the routing key buys in PD against
co-located, with manual+key's gap to the co-located figure beside the previous answers' share of the prompt (read
from the rows, never assumed). Rows here are synthetic: the report's arithmetic is what is under test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from sim.commands.compare import profile_setups
from sim.report import PD_PLOT, config_name, findings, pd_findings, table, write_markdown, write_plots
from sim.runner import COLOCATED_BASELINE_POLICIES, PD_COMPARE_POLICIES
from sim.workload.scenario import load_scenario


def row(policy: str, mode: str | None, key: bool, reuse: float, *, pool: str = "pd", decode: str | None = None,
        ttft: float = 0.2, answer_share: float = 0.25, transfer: int = 10**9, oracle: float = 0.7) -> dict[str, Any]:
    r: dict[str, Any] = {"label": f"{policy} key={'on' if key else 'off'}", "policy": policy, "assignment_mode": mode,
                         "pool": pool, "routing_key": key, "kv_reuse": reuse, "oracle_reuse": oracle,
                         "eligible_reuse": reuse, "stickiness": 1.0 if key else 0.3, "prefill_tokens": 10**6,
                         "ttft_p50": ttft, "ttft_p99": 2 * ttft, "e2e_p50": 1.0, "makespan": 100.0,
                         "imbalance": 1.1, "requests": 1000, "errors": 0, "sessions": 64, "peak_key_in_flight": 1,
                         "transport": "direct", "seed": 0, "gateway_branches": {},
                         "workers": [{"name": f"w{i}", "prefill_tokens": 10**5} for i in range(8)]}
    if pool == "pd":
        r.update(prefill_policy=policy, decode_policy=decode or policy, decode_kv_reuse=0.0, transfer_bytes=transfer,
                 transfer_seconds_mean=0.02, ttft_prefill_mean=0.1, ttft_transfer_mean=0.01,
                 ttft_first_decode_mean=0.005, answer_share=answer_share)
    return r


def runs() -> list[dict[str, Any]]:
    return [row("manual", "min_load", True, 0.60, ttft=0.15), row("manual", "min_load", False, 0.20, ttft=0.4),
            row("manual", "min_load", True, 0.59, decode="round_robin"),
            row("manual", "min_load", False, 0.21, decode="round_robin"),
            row("consistent_hashing", None, True, 0.58), row("consistent_hashing", None, False, 0.22),
            row("cache_aware", None, True, 0.5), row("cache_aware", None, False, 0.45),
            row("manual", "min_load", True, 0.84, pool="colocated", ttft=0.1, oracle=0.93),
            row("manual", "min_load", False, 0.25, pool="colocated", ttft=0.5, oracle=0.93),
            row("consistent_hashing", None, True, 0.83, pool="colocated", oracle=0.93),
            row("consistent_hashing", None, False, 0.26, pool="colocated", oracle=0.93),
            row("cache_aware", None, True, 0.7, pool="colocated", oracle=0.93),
            row("cache_aware", None, False, 0.6, pool="colocated", oracle=0.93)]


def test_compare_on_a_pd_scenario_runs_the_issues_grid_and_a_colocated_baseline():
    setups = [s for s, _ in profile_setups([load_scenario("pd")], [0])]
    assert len(setups) == 2 * (len(PD_COMPARE_POLICIES) + len(COLOCATED_BASELINE_POLICIES)) == 14
    pd = [s for s in setups if s.scenario.pd]
    assert [s.label for s in pd[::2]] == ["manual/min_load key=on", "manual/min_load decode=round_robin key=on",
                                          "consistent_hashing key=on", "cache_aware key=on"]
    colocated = [s for s in setups if not s.scenario.pd]
    assert {s.scenario.workers for s in colocated} == {8} and {s.scenario.profile for s in colocated} == \
        {load_scenario("pd").profile}
    assert [s.label for s in colocated[::2]] == ["colocated manual/min_load key=on",
                                                 "colocated consistent_hashing key=on", "colocated cache_aware key=on"]
    assert len(profile_setups([load_scenario("default")], [0])) == 12  # a co-located scenario: as before


def test_rows_are_named_by_leg_policy_and_pool():
    r = runs()
    assert [config_name(x) for x in r[2:3] + r[8:9]] == ["manual/min_load decode=round_robin",
                                                         "colocated manual/min_load"]
    assert config_name(r[0]) == "manual/min_load"


def test_the_table_has_the_pd_columns_and_the_baseline_shows_none():
    console = Console(width=400, record=True)
    console.print(table(runs()))
    text = console.export_text()
    assert all(h in text for h in ("decode reuse", "transfer GB", "ttft prefill s", "ttft transfer s",
                                   "ttft 1st decode s"))
    baseline = next(line for line in text.splitlines() if "colocated manual/min_load" in line)
    assert baseline.count(" - ") >= 5


def test_the_findings_say_what_the_key_buys_in_pd_against_colocated():
    lines = findings(runs())
    assert lines[0].startswith("The PD oracle") and "70.0%" in lines[0]
    assert any(x.startswith("Co-located baseline: The oracle") and "93.0%" in x for x in lines)
    [manual] = [x for x in lines if x.startswith("What the key buys under manual/min_load")]
    assert "20.0% -> 60.0% (+40.0 points) on the PD pool, 25.0% -> 84.0% (+59.0 points) co-located" in manual
    assert "TTFT p50 0.400s -> 0.150s in PD, 0.500s -> 0.100s co-located" in manual
    [gap] = [x for x in lines if x.startswith("manual+key reuses")]
    assert "60.0% on the PD pool against 84.0% co-located: 24.0 points lower" in gap and "25.0% of" in gap
    assert any("decode round_robin 59.0%" in x for x in lines) and lines[-1] == "No run had errors."


@pytest.mark.parametrize("share", [0.1, 0.3])
def test_the_gap_is_told_beside_the_answer_share_of_the_run(share):
    r = [x if x.get("pool") != "pd" else {**x, "answer_share": share} for x in runs()]
    [gap] = [x for x in pd_findings([x for x in r if x["pool"] == "pd"], [x for x in r if x["pool"] != "pd"])
             if x.startswith("manual+key")]
    assert f"previous answer makes {share:.1%} of the prompt tokens" in gap


def test_the_report_has_a_pd_section_and_plot(tmp_path: Path):
    scenario = load_scenario("pd").to_dict()
    plots = write_plots(tmp_path, runs())
    assert PD_PLOT in plots and (tmp_path / PD_PLOT).stat().st_size > 0
    text = write_markdown(tmp_path, scenario, runs(), plots).read_text()
    assert "PD: 2 prefill workers (KV 1,364,100 tokens each) + 6 decode workers" in text
    assert "## What the routing key buys: PD against co-located" in text and f"![{PD_PLOT}]({PD_PLOT})" in text
    assert text.count(f"![{PD_PLOT}]") == 1 and "`decode reuse`" in text


def test_a_colocated_compare_has_no_pd_plot_or_columns(tmp_path: Path):
    plain = [{k: v for k, v in x.items() if k != "pool"} for x in runs() if x["pool"] == "colocated"]
    assert PD_PLOT not in write_plots(tmp_path, plain)
    console = Console(width=400, record=True)
    console.print(table(plain))
    assert "decode reuse" not in console.export_text()


def test_findings_survive_a_pool_where_no_request_was_answered():
    failed = [{**x, "kv_reuse": 0.0, "oracle_reuse": 0.0, "requests": 0, "errors": 6} for x in runs()]
    lines = findings(failed)
    assert any(x.startswith("manual/min_load: 0.0% with the key (stickiness") for x in lines)
    assert lines[-1] == "84 errors in total: see `errors` per run."
