"""Executors: a sweep on Ray gives the rows the local process pool gives; a failed Ray task is named by its
configuration without losing the others; without Ray, ``--executor ray`` says how to install it."""

from __future__ import annotations

import csv
import sys

import pytest
import ray

from sim.cli import main as cli
from sim.commands.common import console_for, run_many
from sim.executors import RAY_INSTALL_HINT, RunsFailed
from sim.runner import PolicyConfig, make_setup
from sim.transports.pool import Setup
from sim.workload.scenario import load_scenario


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()




def _rows(directory):
    with open(directory / "sweep.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in ("command_line",)} for r in csv.DictReader(f)]


def test_a_sweep_on_ray_gives_the_local_rows(local_ray, tiny, tmp_path):
    grid = ["sweep", "--scenario", str(tiny), "--assignment-mode", "random", "min_load", "--workers", "2", "3"]
    assert cli([*grid, "--executor", "local", "--jobs", "2", "--out", str(tmp_path / "local")]) == 0
    assert cli([*grid, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
    local, on_ray = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert len(local) == 4
    assert on_ray == local


def test_a_failed_ray_task_is_named_and_the_others_kept(local_ray, tiny):
    scenario = load_scenario(str(tiny))
    good = make_setup(scenario, PolicyConfig("manual", "min_load"), True)
    bad = Setup(scenario, ("--policy", "no_such_policy"), True, scenario.seed, "broken config")
    with pytest.raises(RunsFailed) as caught:
        run_many([good, bad], "direct", 2, console_for(), executor="ray", show_progress=False)
    assert [s.label for s, _ in caught.value.failures] == ["broken config"]
    assert caught.value.rows[0]["kv_reuse"] > 0 and caught.value.rows[1] is None


def test_without_ray_the_executor_says_how_to_install_it(tiny, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert cli(["sweep", "--scenario", str(tiny), "--executor", "ray", "--assignment-mode", "random"]) == 2
    err = capsys.readouterr().err
    assert RAY_INSTALL_HINT in err and len(err.strip().splitlines()) == 1


def test_ray_address_without_the_ray_executor_is_an_error(tiny, capsys):
    assert cli(["sweep", "--scenario", str(tiny), "--ray-address", "auto"]) == 2
    assert "--ray-address applies to --executor ray only" in capsys.readouterr().err


def test_sweep_writes_the_rows_it_has_and_names_the_failed_configuration(tiny, tmp_path, monkeypatch, capsys):
    import sim.commands.sweep as sweep

    def second_fails(setups, *args, **kwargs):
        rows = run_many(setups, *args, **kwargs)
        raise RunsFailed([(setups[1], "ValueError: boom")], [rows[0], None])

    monkeypatch.setattr(sweep, "run_many", second_fails)
    out = tmp_path / "sweep"
    assert cli(["sweep", "--scenario", str(tiny), "--assignment-mode", "random", "min_load", "--out", str(out),
                "--jobs", "1"]) == 1
    assert [r["assignment_mode"] for r in _rows(out)] == ["random"]
    assert "failed: manual/min_load key=on workers=2 kv=50000 sessions=6: ValueError: boom" in capsys.readouterr().out
