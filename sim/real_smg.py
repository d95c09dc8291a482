"""Start a gateway process for a live-time run: the real ``smg launch`` (smg==1.13.0) or the mock, with the same flags.

``gateway_process(kind, gateway_args, worker_urls, seed=...)`` is a context manager that starts the gateway on free
loopback ports, waits until ``/readiness`` answers 200 (every worker registered), yields a ``Gateway`` (URL,
Prometheus URL, process) and stops it by PID on exit. Both kinds get the same command line apart from the
translation in ``smg_args``:

- the testbed's extensions are refused for ``smg`` (``--policy bounded_load``, also as a PD leg's policy,
  ``--assignment-mode min_kv``, ``--bounded-load-*``/``--kv-*`` flags): SMG 1.13.0 has no such thing, so nothing
  could be compared;
- ``--seed`` (the mock's seeded RNG) is dropped: SMG's random choices are not seedable;
- ``LIVE_DEFAULTS`` are added unless the caller set them: fast registration (``--worker-startup-check-interval 1``;
  the default 30 s would delay a late worker by half a minute), fast health checks and a short breaker timeout
  (so that a killed worker is noticed and a restarted one readmitted within seconds, as in
  smg-live-observations.md §6), and a 1 s load-monitor interval (load-aware policies see current engine loads).

Which binary: ``resolve_smg(path)`` (``--smg-bin PATH``, else ``$SMG_BIN``, else the installed ``smg``), which
also checks that it is one (``--version`` names smg) and reads its version, recorded in results.

The real binary needs ``--host 127.0.0.1 --prometheus-host 127.0.0.1`` (both default to 0.0.0.0) and takes about
5 s to exit after SIGTERM; runs that have read what they need may stop it sooner (``grace``), then SIGKILL.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from testbed_common.procs import (
    LOOPBACK,
    SMG_BIN_ENV,
    Process,
    free_ports,
    polling_client,
    python_module,
    smg_binary,
    spawn,
    wait_http,
)

GATEWAYS = ("mock", "smg")

# flag -> value added when the caller did not set the flag (same for both gateways)
LIVE_DEFAULTS: dict[str, str] = {
    "--worker-startup-check-interval": "1",
    "--health-check-interval-secs": "1",
    "--health-check-timeout-secs": "1",
    "--health-failure-threshold": "2",
    "--health-success-threshold": "1",
    "--cb-timeout-duration-secs": "5",
    "--load-monitor-interval": "1",
    "--log-level": "warn",
}
MOCK_ONLY_POLICIES = ("bounded_load",)
POLICY_FLAGS = ("--policy", "--prefill-policy", "--decode-policy")  # a PD leg's policy flags too
MOCK_ONLY_MODES = ("min_kv",)
MOCK_ONLY_FLAG_PREFIXES = ("--bounded-load-", "--kv-")
READY_TIMEOUT = 60.0
VERSION_TIMEOUT = 30.0
INSTALL_HINT = "pip install smg==1.13.0, or give --smg-bin PATH / SMG_BIN"


class GatewayFlagError(ValueError):
    """Flags that cannot be given to the real SMG (a testbed extension)."""


class SmgBinaryError(ValueError):
    """The smg binary is missing, not executable, or not an smg (a one-line message)."""


@dataclass(frozen=True)
class SmgBinary:
    path: str
    version: str  # the first line of ``--version``, e.g. ``smg 1.13.0``


def resolve_smg(path: str | None = None) -> SmgBinary:
    """The real gateway binary: ``path``, else ``$SMG_BIN``, else the installed ``smg``; raises ``SmgBinaryError``."""
    binary = smg_binary(path)
    if binary is None:
        raise SmgBinaryError(f"the real gateway is not installed ({INSTALL_HINT})")
    where = f"--smg-bin {path}" if path else f"{SMG_BIN_ENV}={binary}" if os.environ.get(SMG_BIN_ENV) else binary
    if os.sep not in binary:  # a bare name: looked up on PATH
        binary = shutil.which(binary) or ""
        if not binary:
            raise SmgBinaryError(f"{where}: not found on PATH")
    return _checked(os.path.abspath(binary), where)


@functools.lru_cache(maxsize=8)
def _checked(binary: str, where: str) -> SmgBinary:
    """``binary`` checked and its version read (once per path: ``--version`` takes a while)."""
    if not os.path.isfile(binary):
        raise SmgBinaryError(f"{where}: no such file")
    if not os.access(binary, os.X_OK):
        raise SmgBinaryError(f"{where}: not executable")
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT,
                              check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise SmgBinaryError(f"{where}: cannot run it ({e})") from e
    lines = (done.stdout or done.stderr).strip().splitlines()
    version = lines[0].strip() if lines else ""
    if done.returncode != 0 or version.split(" ", 1)[0] != "smg":  # "smg 1.13.0" (not "smg-testbed ...")
        raise SmgBinaryError(f"{where}: not an smg binary ('--version' says {version[:80]!r})")
    return SmgBinary(binary, version)


def _has(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in ``args`` (``--flag V`` or ``--flag=V``, first wins), or None."""
    args = list(args)
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def without_flag(args: Sequence[str], flag: str) -> list[str]:
    """``args`` without ``flag`` and its value (``--flag V`` or ``--flag=V``)."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == flag:
            skip = True
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    return out


def with_defaults(args: Sequence[str], defaults: dict[str, str] = LIVE_DEFAULTS) -> list[str]:
    """``args`` plus every default flag the caller did not set."""
    out = list(args)
    for flag, value in defaults.items():
        if not _has(out, flag):
            out += [flag, value]
    return out


def smg_args(gateway_args: Sequence[str]) -> list[str]:
    """The policy flags as ``smg launch`` takes them (see the module docstring); raises ``GatewayFlagError``."""
    args = without_flag(gateway_args, "--seed")
    for flag in POLICY_FLAGS:
        if (p := flag_value(args, flag)) in MOCK_ONLY_POLICIES:
            raise GatewayFlagError(f"{flag} {p} is a testbed extension; smg 1.13.0 does not have it")
    if (m := flag_value(args, "--assignment-mode")) in MOCK_ONLY_MODES:
        raise GatewayFlagError(f"--assignment-mode {m} is a testbed extension; smg 1.13.0 does not have it")
    bad = [a for a in args if a.startswith(MOCK_ONLY_FLAG_PREFIXES)]
    if bad:
        raise GatewayFlagError(f"{', '.join(bad)}: testbed extensions; smg 1.13.0 does not have them")
    return args


def gateway_argv(kind: str, gateway_args: Sequence[str], worker_urls: Sequence[str], port: int, metrics_port: int,
                 seed: int | None = None, defaults: dict[str, str] = LIVE_DEFAULTS,
                 smg_bin: str | None = None, worker_flags: Sequence[str] | None = None) -> list[str]:
    """The full command line of a live gateway of ``kind`` (``mock`` or ``smg``, the binary ``resolve_smg(smg_bin)``)
    on loopback; ``defaults={}`` gives exactly the caller's flags (benchmarks). The workers: ``worker_flags`` when
    given (a PD pool's ``--pd-disaggregation --prefill URL PORT ... --decode URL ...``, ``pool.worker_flags``), else
    ``--worker-urls`` with ``worker_urls``."""
    if kind not in GATEWAYS:
        raise ValueError(f"unknown gateway {kind!r} (one of {', '.join(GATEWAYS)})")
    workers = list(worker_flags) if worker_flags is not None else ["--worker-urls", *worker_urls]
    common = ["--host", LOOPBACK, "--port", str(port), "--prometheus-host", LOOPBACK,
              "--prometheus-port", str(metrics_port), *workers]
    if kind == "smg":
        return [resolve_smg(smg_bin).path, "launch", *common, *with_defaults(smg_args(gateway_args), defaults)]
    args = list(gateway_args) if seed is None or _has(gateway_args, "--seed") else [*gateway_args, "--seed", str(seed)]
    return python_module("mock_gateway", *common, *with_defaults(args, defaults))


def wait_ready(url: str, workers: int, timeout: float = READY_TIMEOUT, proc: Process | None = None) -> None:
    """Poll ``/readiness`` until it reports ``workers`` healthy workers (placements depend on the whole pool)."""
    wait_http(f"{url}/readiness", timeout=timeout, proc=proc.popen if proc else None)
    deadline = time.monotonic() + timeout
    last: object = None
    with polling_client(2.0) as client:
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"gateway exited with {proc.popen.returncode}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                last = client.get(f"{url}/readiness").json()
                if isinstance(last, dict) and last.get("healthy_workers") == workers:
                    return
            time.sleep(0.05)
    raise TimeoutError(f"{url}: {workers} healthy workers not reached after {timeout}s (last: {last!r})")


@dataclass
class Gateway:
    kind: str
    url: str
    metrics_url: str
    process: Process
    argv: list[str]

    def log(self) -> str:
        return self.process.log()


@contextlib.contextmanager
def gateway_process(kind: str, gateway_args: Sequence[str], worker_urls: Sequence[str], *, seed: int | None = None,
                    log_path: Path | None = None, grace: float = 10.0, ready_timeout: float = READY_TIMEOUT,
                    smg_bin: str | None = None, worker_flags: Sequence[str] | None = None) -> Iterator[Gateway]:
    """Start a gateway in front of running workers (all of ``worker_urls``; ``worker_flags``: see ``gateway_argv``);
    stop it (SIGTERM, SIGKILL after ``grace`` s) on exit."""
    port, metrics_port = free_ports(2)
    argv = gateway_argv(kind, gateway_args, worker_urls, port, metrics_port, seed, smg_bin=smg_bin,
                        worker_flags=worker_flags)
    with contextlib.ExitStack() as stack:
        if log_path is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"live-{kind}-"))
            log_path = Path(tmp) / "gateway.log"
        proc = spawn(argv, log_path=log_path)
        gw = Gateway(kind, f"http://{LOOPBACK}:{port}", f"http://{LOOPBACK}:{metrics_port}/metrics", proc, argv)
        try:
            wait_ready(gw.url, len(worker_urls), timeout=ready_timeout, proc=proc)
        except (TimeoutError, RuntimeError) as e:
            proc.stop(timeout=grace)
            raise RuntimeError(f"{kind} gateway did not become ready: {e}\n{proc.log()[-2000:]}") from e
        try:
            yield gw
        finally:
            proc.stop(timeout=grace)
