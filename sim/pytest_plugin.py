"""The testbed's pytest plugin: test your routing change against the mock stack (or the real ``smg``).

Loaded in every pytest run where smg-testbed is installed (entry point group ``pytest11``), so this module imports
only pytest at load time; the testbed is imported when a fixture or helper is used. README "Testing your routing"
has a complete example (``docs/examples/test_my_routing.py``).

- ``run_scenario(scenario, policy=..., assignment_mode=..., routing_key=..., seed=..., gateway_args=...)``: one run
  of a scenario (a built-in name, a TOML path or a ``Scenario``), in process (``direct``) by default; returns a
  ``RunResult`` whose fields are the keys of the ``results.json`` row ``sim.runner.run_setup`` builds.
- ``start_stack(...)``: mock workers, a gateway (the mock, or the real ``smg``) and a session server as processes
  on free loopback ports, stopped by PID on exit; yields a ``Stack`` of their URLs. Fixture ``testbed_stack``
  starts one per test (keyword arguments from the marker ``@pytest.mark.testbed_stack(...)``);
  ``run_scenario(..., stack=stack)`` runs against it (transport ``external``).
- Options: ``--smg-gateway`` (ini ``smg_gateway = true``) puts the real ``smg`` in ``testbed_stack``;
  ``--smg-bin PATH`` (ini ``smg_bin``; else ``$SMG_BIN``, else the installed ``smg``) chooses that binary. A wrong
  ``--smg-bin``/``$SMG_BIN`` is a usage error; a missing default binary skips what needs it.
- Marker ``real_smg``: the test needs the real binary; skipped where there is none. Fixture ``smg_bin``: the
  binary (``sim.real_smg.SmgBinary``: path and version), skipping likewise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sim.real_smg import SmgBinary
    from sim.workload.scenario import Scenario

STACK_MODEL = "mock-model"
STACK_GRACE = 2.0  # seconds before SIGKILL: smg 1.13.0 lingers ~5 s after SIGTERM


@dataclass(frozen=True)
class Stack:
    """URLs of a running stack: workers <- gateway <- session server, all on loopback."""

    worker_urls: tuple[str, ...]
    gateway_url: str
    metrics_url: str
    session_url: str
    gateway: str  # "mock" or "smg"
    gateway_args: tuple[str, ...]  # the policy flags it was started with


@contextlib.contextmanager
def start_stack(workers: int = 2, gateway: str = "mock", gateway_args: Sequence[str] = ("--policy", "manual"),
                seed: int = 0, speedup: float = 1000.0, smg_bin: str | None = None, log_dir: Path | None = None,
                worker_args: Sequence[str] = (), session_args: Sequence[str] = ()) -> Iterator[Stack]:
    """Start ``workers`` mock workers (live time x ``speedup``), a ``gateway`` (``mock`` or ``smg``, the binary
    ``smg_bin``) with ``gateway_args`` once every worker is registered, and a session server; stop them on exit.
    ``worker_args`` and ``session_args`` are further flags of ``smg-testbed worker`` and ``session-server``."""
    from sim.real_smg import gateway_process
    from testbed_common.procs import LOOPBACK, consecutive_free_ports, free_port, python_module, running

    with contextlib.ExitStack() as es:
        logs = log_dir or Path(es.enter_context(tempfile.TemporaryDirectory(prefix="smg-testbed-stack-")))
        base = consecutive_free_ports(workers)
        urls = [f"http://{LOOPBACK}:{base + i}" for i in range(workers)]
        es.enter_context(running(python_module("sim.worker", "--port", str(base), "--count", str(workers),
                                               "--speedup", str(speedup), "--seed", str(seed),
                                               "--model-name", STACK_MODEL, *worker_args),
                                 f"{urls[-1]}/health", log_path=logs / "workers.log"))
        gw = es.enter_context(gateway_process(gateway, gateway_args, urls, seed=seed, smg_bin=smg_bin,
                                              log_path=logs / f"gateway-{gateway}.log", grace=STACK_GRACE))
        port = free_port()
        session_url = f"http://{LOOPBACK}:{port}"
        es.enter_context(running(python_module("session_server", "--port", str(port), "--router-url", gw.url,
                                               *session_args),
                                 f"{session_url}/health", log_path=logs / "session_server.log"))
        yield Stack(tuple(urls), gw.url, gw.metrics_url, session_url, gateway, tuple(gateway_args))


class RunResult:
    """One run's ``results.json`` row as a frozen dataclass: ``kv_reuse``, ``ttft_p99``, ``makespan``,
    ``errors``, ``gateway_branches``, ... (``dataclasses.fields(result)`` lists them all)."""


@functools.cache
def _result_class(fields: tuple[tuple[str, type], ...]) -> type[RunResult]:
    return dataclasses.make_dataclass("RunResult", fields, bases=(RunResult,), frozen=True)


def result_of(row: dict[str, Any]) -> RunResult:
    """``row`` (of ``sim.runner.run_setup``) as a ``RunResult``: its public keys become the fields, in order."""
    from sim.runner import public

    data = public(row)
    fields = tuple((k, Any if v is None else type(v)) for k, v in data.items())
    return _result_class(fields)(**data)


def run_scenario(scenario: str | Path | Scenario = "default", *, policy: str | None = None,
                 assignment_mode: str | None = None, routing_key: bool = True, seed: int | None = None,
                 gateway_args: Sequence[str] = (), transport: str = "direct", stack: Stack | None = None,
                 sessions: int | None = None, workers: int | None = None) -> RunResult:
    """Run ``scenario`` once, as ``smg-testbed run`` does: ``policy`` (default ``manual``, whose mode defaults to
    ``min_load``) and further ``smg launch`` flags ``gateway_args``, checked first (ValueError). With ``stack``,
    against that stack's gateway (transport ``external``), whose flags are the stack's."""
    from sim.commands.gateway_flags import check_gateway_argv
    from sim.commands.policy_names import check_policy
    from sim.real_smg import flag_value, without_flag
    from sim.runner import PolicyConfig, make_setup, run_setup
    from sim.workload.scenario import Scenario, load_scenario

    s = scenario if isinstance(scenario, Scenario) else load_scenario(str(scenario))
    changes = {k: v for k, v in (("seed", seed), ("sessions", sessions), ("workers", workers)) if v is not None}
    s = s.replace(**changes) if changes else s
    if stack is not None:
        if policy or assignment_mode or gateway_args:
            raise ValueError("a stack's gateway routes with the flags it was started with: give them to the stack")
        args = stack.gateway_args
        rest = tuple(without_flag(without_flag(args, "--policy"), "--assignment-mode"))
        started = PolicyConfig(flag_value(args, "--policy") or "cache_aware", flag_value(args, "--assignment-mode"),
                               rest)
        setup = make_setup(s, started, routing_key)
        return result_of(run_setup(setup, "external", gateway_url=stack.gateway_url,
                                   metrics_url=stack.metrics_url, worker_urls=stack.worker_urls))
    policy = policy or "manual"
    pc = check_policy(policy, assignment_mode or ("min_load" if policy == "manual" else None))
    setup = make_setup(s, PolicyConfig(pc.policy, pc.assignment_mode, tuple(gateway_args)), routing_key)
    check_gateway_argv(setup.gateway_args)
    return result_of(run_setup(setup, transport))


# ---- pytest hooks and fixtures ----------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("smg-testbed")
    group.addoption("--smg-gateway", action="store_true", default=None,
                    help="testbed_stack: the real smg instead of the mock gateway")
    group.addoption("--smg-bin", default=None, metavar="PATH",
                    help="the smg binary (default: ini smg_bin, else $SMG_BIN, else the installed smg)")
    parser.addini("smg_gateway", "testbed_stack: the real smg instead of the mock gateway", type="bool",
                  default=False)
    parser.addini("smg_bin", "the smg binary (default: $SMG_BIN, else the installed smg)", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_smg: needs the real smg binary (skipped where there is none)")
    config.addinivalue_line("markers", "testbed_stack(**kwargs): arguments of start_stack for testbed_stack")
    given = _smg_bin_option(config)
    if given or os.environ.get("SMG_BIN"):  # a binary the user chose must be right: one line, before any test
        from sim.real_smg import SmgBinaryError, resolve_smg

        try:
            resolve_smg(given)
        except SmgBinaryError as e:
            raise pytest.UsageError(str(e)) from None


def _smg_bin_option(config: pytest.Config) -> str | None:
    return config.getoption("smg_bin") or config.getini("smg_bin") or None


def _smg(config: pytest.Config) -> SmgBinary | str:
    """The real smg binary, or why there is none."""
    from sim.real_smg import SmgBinaryError, resolve_smg

    try:
        return resolve_smg(_smg_bin_option(config))
    except SmgBinaryError as e:
        return str(e)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("real_smg") is not None and isinstance(why := _smg(item.config), str):
        pytest.skip(f"real_smg: {why}")


@pytest.fixture(scope="session")
def smg_bin(pytestconfig: pytest.Config) -> SmgBinary:
    """The real smg binary (``--smg-bin``, ini ``smg_bin``, ``$SMG_BIN`` or the installed one); skips without."""
    found = _smg(pytestconfig)
    if isinstance(found, str):
        pytest.skip(f"real_smg: {found}")
    return found


@pytest.fixture
def testbed_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """A stack per test (``start_stack``; the mock gateway unless ``--smg-gateway``), logs under ``tmp_path``."""
    marker = request.node.get_closest_marker("testbed_stack")
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    option = request.config.getoption("smg_gateway")
    if option if option is not None else request.config.getini("smg_gateway"):
        kwargs.setdefault("gateway", "smg")
    if kwargs.get("gateway") == "smg":
        kwargs.setdefault("smg_bin", request.getfixturevalue("smg_bin").path)
    with start_stack(log_dir=tmp_path, **kwargs) as stack:
        yield stack
