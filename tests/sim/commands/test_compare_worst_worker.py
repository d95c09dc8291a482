"""``compare --worst-worker``: per run, the worst worker's hit rate over time and the makespan against the best."""

from __future__ import annotations

import json
import re

import pytest
from tiny_scenario import write_tiny

from sim.cli import main as cli
from sim.commands.compare import AUTO_BINS, build_parser

LINE = re.compile(r"^  - (?P<label>.+ key=o(n|ff)): worst w[01] hit \d+% \[(\d+|-)( (\d+|-))*\]; "
                  r"makespan (?P<makespan>[\d.]+)s = (the best|[\d.]+x .+ key=o(n|ff))$")


def test_shown_by_default_with_bins_from_the_makespans_unless_given_a_width_or_off():
    p = build_parser()
    assert p.parse_args([]).worst_worker == AUTO_BINS
    assert p.parse_args(["--worst-worker"]).worst_worker == AUTO_BINS
    assert p.parse_args(["--worst-worker", "off"]).worst_worker is None
    assert p.parse_args(["--worst-worker", "2.5"]).worst_worker == 2.5


@pytest.mark.parametrize("bad", ["0", "-1", "inf", "nan", "soon"])
def test_a_bin_width_that_is_not_a_positive_number_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--worst-worker", bad])
    assert e.value.code == 2
    assert "bin width in virtual seconds" in capsys.readouterr().err


def test_compare_prints_one_worst_worker_line_per_run_and_the_best_run_is_the_shortest(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(["compare", "--scenario", str(write_tiny(tmp_path)), "--out", str(out), "--jobs", "1",
                "--no-plots"]) == 0
    text = capsys.readouterr().out
    _, _, tail = text.partition("worst worker's hit rate (%) per ")
    assert tail, text
    lines = [ln for ln in tail.splitlines() if ln.startswith("  - ")]
    matches = [LINE.match(ln) for ln in lines]
    assert all(matches), lines
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [m["label"] for m in matches] == [r["label"] for r in runs]
    shortest = min(r["makespan"] for r in runs)
    for m, r in zip(matches, runs, strict=True):
        assert float(m["makespan"]) == pytest.approx(r["makespan"], abs=0.05)
        assert m.group(0).endswith("the best") == (r["makespan"] == shortest)


def test_off_hides_the_worst_worker_view(tmp_path, capsys):
    assert cli(["compare", "--scenario", str(write_tiny(tmp_path)), "--out", str(tmp_path / "out"), "--jobs", "1",
                "--no-plots", "--worst-worker", "off"]) == 0
    assert "worst worker's hit rate" not in capsys.readouterr().out


def test_engine_overrides_the_scenarios_workers_engine(tmp_path):
    from sim.commands.common import scenario_from_args

    args = build_parser().parse_args(["--scenario", str(write_tiny(tmp_path)), "--engine", "arrival"])
    assert scenario_from_args(args).engine == "arrival"
    assert scenario_from_args(build_parser().parse_args(["--scenario", str(write_tiny(tmp_path))])).engine == \
        "iteration"
