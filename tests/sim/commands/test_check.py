"""``smg-testbed check``: exit 0 on the same figures, 1 on a regression beyond tolerance, 2 on files that cannot
be compared; the table names the configuration and the field."""

from __future__ import annotations

import json

import pytest

from sim.baseline import DEFAULT_TOLERANCES, Tolerance, parse_tolerance, regressed
from sim.cli import main as cli


@pytest.fixture
def compare_results(tiny):
    """A directory holding tiny.toml and cmp/results.json, the compare command's results on it."""
    d = tiny.parent
    assert cli(["compare", "--scenario", str(tiny), "--out", str(d / "cmp"), "--no-plots", "--jobs", "1"]) == 0
    return d


def _edited(src, dst, edit):
    doc = json.loads(src.read_text())
    edit(doc)
    dst.write_text(json.dumps(doc))
    return dst


def test_identical_files_pass(compare_results, capsys):
    path = compare_results / "cmp" / "results.json"
    assert cli(["check", "--baseline", str(path), str(path)]) == 0
    assert "12 configurations matched, 0 field(s) changed; no regression" in capsys.readouterr().out


def test_a_kv_reuse_drop_beyond_tolerance_fails_naming_configuration_and_field(compare_results, tmp_path, capsys):
    base = compare_results / "cmp" / "results.json"

    def drop(doc):
        row = next(r for r in doc["runs"] if r["assignment_mode"] == "min_load" and r["routing_key"])
        row["kv_reuse"] -= 0.05

    current = _edited(base, tmp_path / "current.json", drop)
    assert cli(["check", "--baseline", str(base), str(current)]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "REGRESSED" in ln)
    assert "manual/min_load key=on" in line and "kv_reuse" in line
    assert "1 regression(s)" in out
    # the same drop within a wider tolerance passes, still listed as a change
    assert cli(["check", "--baseline", str(base), str(current), "--tolerance", "kv_reuse=0.1"]) == 0
    out = capsys.readouterr().out
    assert "kv_reuse" in out and "REGRESSED" not in out and "1 field(s) changed; no regression" in out


def test_a_kv_reuse_gain_is_no_regression(compare_results, tmp_path):
    base = compare_results / "cmp" / "results.json"
    current = _edited(base, tmp_path / "current.json", lambda d: d["runs"][0].update(kv_reuse=d["runs"][0]["kv_reuse"]
                                                                                      + 0.2))
    assert cli(["check", "--baseline", str(base), str(current)]) == 0


def test_missing_configuration_fails_and_extra_is_named(compare_results, tmp_path, capsys):
    base = compare_results / "cmp" / "results.json"
    current = _edited(base, tmp_path / "current.json", lambda d: d["runs"].pop(0))
    assert cli(["check", "--baseline", str(base), str(current)]) == 1
    assert "missing: manual/random key=on" in capsys.readouterr().out
    assert cli(["check", "--baseline", str(current), str(base)]) == 0
    assert "extra: manual/random key=on" in capsys.readouterr().out


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(results_version=d["results_version"] - 1), "results_version"),
    (lambda d: d["scenario"].update(seed=d["scenario"]["seed"] + 1), "another scenario"),
    (lambda d: d.pop("runs"), "not a results.json or sweep.json"),
])
def test_mismatched_files_exit_2(compare_results, tmp_path, capsys, edit, message):
    base = compare_results / "cmp" / "results.json"
    current = _edited(base, tmp_path / "current.json", edit)
    assert cli(["check", "--baseline", str(base), str(current)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1


def test_unreadable_file_exits_2(compare_results, tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    assert cli(["check", "--baseline", str(compare_results / "cmp" / "results.json"), str(tmp_path / "bad.json")]) == 2
    assert "cannot read it as JSON" in capsys.readouterr().err


def test_scenario_mode_runs_the_baselines_configurations_now(compare_results, capsys):
    base = compare_results / "cmp" / "results.json"
    assert cli(["check", "--baseline", str(base), "--scenario", str(compare_results / "tiny.toml"),
                "--jobs", "1"]) == 0
    assert "12 configurations matched, 0 field(s) changed; no regression" in capsys.readouterr().out


def test_sweep_files_match_by_grid_point(compare_results, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert cli(["sweep", "--scenario", str(compare_results / "tiny.toml"), "--workers", "2", "3", "--out", str(out),
                "--jobs", "1"]) == 0
    path = out / "sweep.json"

    def worse(doc):
        row = next(r for r in doc["runs"] if r["workers_count"] == 3 and r["assignment_mode"] == "random")
        row["makespan"] *= 1.2

    current = _edited(path, tmp_path / "current.json", worse)
    capsys.readouterr()
    assert cli(["check", "--baseline", str(path), str(current)]) == 1
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "REGRESSED" in ln)
    assert "manual/random key=on" in line and "makespan" in line


def test_tolerances_parse_absolute_and_percent():
    assert parse_tolerance("kv_reuse=0.02") == Tolerance("kv_reuse", 0.02)
    assert parse_tolerance("ttft_p99=15%") == Tolerance("ttft_p99", 15.0, percent=True)
    for bad in ("kv_reuse", "kv_reuse=x", "nonsense=1", "kv_reuse=-1"):
        with pytest.raises(ValueError):
            parse_tolerance(bad)
    assert [t.field for t in DEFAULT_TOLERANCES] == ["kv_reuse", "ttft_p99", "makespan", "errors"]


def test_direction_of_worse():
    assert regressed("kv_reuse", 0.8, 0.7, Tolerance("kv_reuse", 0.05))
    assert not regressed("kv_reuse", 0.7, 0.8, Tolerance("kv_reuse", 0.05))
    assert regressed("makespan", 100.0, 106.0, Tolerance("makespan", 5.0, percent=True))
    assert not regressed("makespan", 100.0, 104.0, Tolerance("makespan", 5.0, percent=True))
    assert regressed("errors", 0, 1, Tolerance("errors", 0.0))


def test_scenario_mode_runs_a_sweeps_grid_points(compare_results, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert cli(["sweep", "--scenario", str(compare_results / "tiny.toml"), "--workers", "2", "3",
                "--kv-capacity-tokens", "20000", "--out", str(out), "--jobs", "1"]) == 0
    capsys.readouterr()
    assert cli(["check", "--baseline", str(out / "sweep.json"), "--scenario", str(compare_results / "tiny.toml"),
                "--jobs", "1"]) == 0
    assert "6 configurations matched, 0 field(s) changed; no regression" in capsys.readouterr().out


def test_current_file_or_scenario_not_both(compare_results, capsys):
    path = str(compare_results / "cmp" / "results.json")
    assert cli(["check", "--baseline", path]) == 2
    assert cli(["check", "--baseline", path, path, "--scenario", "default"]) == 2
    assert "CURRENT.json or --scenario" in capsys.readouterr().err
