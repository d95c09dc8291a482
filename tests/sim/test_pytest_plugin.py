"""The pytest plugin (``sim.pytest_plugin``) as a user meets it.

- The README's example test file, written out by itself and run with ``pytest`` in a subprocess (the plugin comes
  from the installed entry point), passes; with its assertion broken on purpose it fails. The example in the
  README and ``docs/examples/test_my_routing.py`` are the same file.
- ``run_scenario`` returns a ``RunResult`` whose fields are exactly the keys, in order, of the row
  ``sim.runner.run_setup`` builds, with its values.
- ``--smg-gateway`` puts the real smg behind ``testbed_stack``; ``real_smg`` tests are skipped where no smg is
  found; a wrong ``--smg-bin`` is a one-line usage error.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sim import pytest_plugin
from sim.pytest_plugin import RunResult, Stack, run_scenario
from sim.runner import PolicyConfig, make_setup, public, run_setup
from sim.workload.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "test_my_routing.py"
ASSERTION = "assert on.kv_reuse > off.kv_reuse + 0.2"


def readme_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Testing your routing", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def pytest_run(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path), *args],
                          cwd=path.parent, capture_output=True, text=True, timeout=300, check=False)


def test_the_readme_example_passes_as_a_user_runs_it_and_fails_when_broken(tmp_path):
    code = readme_example()
    assert code == EXAMPLE.read_text()
    user_test = tmp_path / "test_my_routing.py"
    user_test.write_text(code)
    done = pytest_run(user_test)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b[34] passed\b", done.stdout) and "failed" not in done.stdout

    assert code.count(ASSERTION) == 1
    user_test.write_text(code.replace(ASSERTION, "assert on.kv_reuse < off.kv_reuse"))
    broken = pytest_run(user_test, "-k", "routing_key")
    assert broken.returncode == 1 and "1 failed" in broken.stdout
    assert "assert on.kv_reuse < off.kv_reuse" in broken.stdout


@pytest.mark.real_smg
def test_the_example_stack_test_passes_behind_the_real_smg(tmp_path, smg_bin):
    user_test = tmp_path / "test_my_routing.py"
    user_test.write_text(EXAMPLE.read_text())
    done = pytest_run(user_test, "--smg-gateway", "--smg-bin", smg_bin.path, "-k", "running_stack or real_smg")
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout + done.stderr


def test_the_result_has_the_fields_and_values_of_the_results_row():
    scenario = load_scenario("default").replace(sessions=4)
    row = public(run_setup(make_setup(scenario, PolicyConfig("manual", "min_load"), True), "direct"))
    result = run_scenario(scenario, policy="manual", assignment_mode="min_load")
    assert isinstance(result, RunResult) and dataclasses.is_dataclass(result)
    assert [f.name for f in dataclasses.fields(result)] == list(row)
    assert dataclasses.asdict(result) == row
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.kv_reuse = 1.0  # type: ignore[misc]


def test_run_scenario_defaults_to_manual_min_load_in_process():
    result = run_scenario("default", sessions=4)
    assert (result.policy, result.assignment_mode, result.transport) == ("manual", "min_load", "direct")


def test_bad_gateway_flags_and_flags_for_a_running_stack_are_refused():
    with pytest.raises(ValueError, match="--cache-treshold"):
        run_scenario("default", sessions=2, policy="cache_aware", gateway_args=["--cache-treshold", "0.5"])
    stack = Stack(("http://127.0.0.1:1",), "http://127.0.0.1:2", "http://127.0.0.1:3/metrics",
                  "http://127.0.0.1:4", "mock", ("--policy", "manual"))
    with pytest.raises(ValueError, match="flags it was started with"):
        run_scenario("default", policy="random", stack=stack)


class FakeItem:
    def __init__(self, config: pytest.Config, marked: bool) -> None:
        self.config, self.marked = config, marked

    def get_closest_marker(self, name: str) -> object | None:
        return object() if self.marked and name == "real_smg" else None


def test_real_smg_tests_are_skipped_where_no_smg_is_found(pytestconfig, monkeypatch):
    monkeypatch.delenv("SMG_BIN", raising=False)
    monkeypatch.setattr(pytest_plugin, "_smg_bin_option", lambda _config: None)
    monkeypatch.setattr("sim.real_smg.smg_binary", lambda _path=None: None)
    pytest_plugin.pytest_runtest_setup(FakeItem(pytestconfig, marked=False))  # unmarked: runs
    with pytest.raises(pytest.skip.Exception, match="real_smg: the real gateway is not installed"):
        pytest_plugin.pytest_runtest_setup(FakeItem(pytestconfig, marked=True))


@pytest.mark.parametrize("path, says", [("/nonexistent/smg", "no such file"), ("/bin/ls", "not an smg binary")])
def test_a_wrong_smg_bin_is_a_one_line_usage_error(tmp_path, path, says):
    user_test = tmp_path / "test_nothing.py"
    user_test.write_text("def test_nothing():\n    pass\n")
    done = pytest_run(user_test, "--smg-bin", path)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"ERROR: --smg-bin {path}: {says}")
