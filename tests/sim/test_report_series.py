"""The report shows the iteration engine's measures in its tables and the workers' time series as plots."""

from __future__ import annotations

from typing import Any

import pytest
from thrash_scenario import THRASH

from sim.report import markdown_table, write_markdown, write_plots
from sim.runner import PolicyConfig, make_setup, run_setup

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(engine: str) -> dict[str, Any]:
    return run_setup(make_setup(THRASH.replace(engine=engine), PolicyConfig("manual", "min_load"), True), "direct")


@pytest.fixture(scope="module")
def thrashed() -> dict[str, Any]:
    return _row("iteration")


def test_the_report_draws_each_runs_time_series_and_links_it(thrashed, tmp_path):
    plots = write_plots(tmp_path, [thrashed])
    assert "series-01-manual-min-load-key-on.png" in plots
    assert (tmp_path / "series-01-manual-min-load-key-on.png").read_bytes().startswith(PNG_MAGIC)
    text = write_markdown(tmp_path, THRASH.to_dict(), [thrashed], plots).read_text()
    plots_part, series_part = text.split("## Time series per worker")
    assert "![series-01-manual-min-load-key-on.png](series-01-manual-min-load-key-on.png)" in series_part
    assert "series-01" not in plots_part and "![reuse.png](reuse.png)" in plots_part


def test_the_tables_and_findings_show_retractions_and_queueing(thrashed, tmp_path):
    header = markdown_table([thrashed]).splitlines()[0]
    for column in ("retractions", "recomputed tok", "decode stall s", "queue p50 s", "queue p99 s"):
        assert f" {column} " in header
    text = write_markdown(tmp_path, THRASH.to_dict(), [thrashed], []).read_text()
    assert f"most under manual/min_load key on ({thrashed['retractions']} retractions" in text
    assert "`recomputed tok` prefill work done twice" in text


def test_runs_without_series_or_engine_measures_get_neither(tmp_path):
    row = _row("arrival")
    assert "timeseries" not in row and row["retractions"] == 0
    plots = write_plots(tmp_path, [row])
    assert not [p for p in plots if p.startswith("series-")]
    assert "retractions" not in markdown_table([row])
    assert "Time series" not in write_markdown(tmp_path, THRASH.to_dict(), [row], plots).read_text()
