"""What every transport builds the same way: worker configs, stable worker URLs, launch flags."""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import xxhash

from sim.engine.types import HiCacheConfig, LatencyModel, SchedulerConfig, WorkerConfig
from sim.profiles.catalog import load_profile
from sim.workload.scenario import Scenario
from testbed_common.procs import LOOPBACK

PORT_LOW, PORT_SPAN = 20000, 30000


@dataclass(frozen=True)
class Setup:
    """One configuration under test: the scenario plus the gateway flags and the session-server switch."""

    scenario: Scenario
    gateway_args: tuple[str, ...] = ("--policy", "manual", "--assignment-mode", "min_load")
    routing_key: bool = True
    seed: int = 0  # gateway --seed, session id seed, worker pool seed (the workload seed is in the scenario)
    label: str = ""
    extra: dict = field(default_factory=dict)


def worker_configs(scenario: Scenario) -> list[WorkerConfig]:
    """The pool's workers: a profile gives their latency coefficients, their scheduler's chunked-prefill size and
    prefill token budget and their per-request overhead (the iteration-level engine's), else the 8B-on-H100
    defaults and no overhead.

    A PD pool (``scenario.pd``): the prefill workers first, named ``p0, p1, ...``, then the decode workers
    ``d0, d1, ...``, each role with its own profile and KV capacity; KV bytes per token are the scenario's, else
    the worker's profile's, else ``WorkerConfig``'s.

    HiCache (``scenario.hicache``): every co-located or prefill worker gets ``hicache_config``; a decode worker only
    to offload its KV to L3 (``disaggregation_decode_enable_offload_kvcache``); KV bytes per token as in PD."""
    if not scenario.pd:
        latency, scheduler, overhead = _engine_parameters(scenario.profile)
        hicache = hicache_config(scenario, None)
        kv_bytes = {"kv_bytes_per_token": _kv_bytes_per_token(scenario, scenario.profile)} if hicache else {}
        return [WorkerConfig(name=f"w{i}", kv_capacity_tokens=scenario.kv_capacity_tokens,
                             page_size=scenario.page_size, max_running_requests=scenario.max_running_requests,
                             latency=latency, slowdown=scenario.worker_slowdown(i), engine=scenario.engine,
                             scheduler=scheduler, request_overhead=overhead, hicache=hicache, **kv_bytes)
                for i in range(scenario.workers)]
    out = []
    for i in range(scenario.workers):
        role = scenario.role_of(i)
        assert role is not None
        index = i if role == "prefill" else i - scenario.prefill_workers
        profile = scenario.role_profile(role)
        latency, scheduler, overhead = _engine_parameters(profile)
        out.append(WorkerConfig(name=f"{role[0]}{index}", kv_capacity_tokens=scenario.role_kv_capacity_tokens(role),
                                page_size=scenario.page_size, hicache=hicache_config(scenario, role),
                                max_running_requests=scenario.max_running_requests, latency=latency,
                                slowdown=scenario.worker_slowdown(i), engine=scenario.engine, scheduler=scheduler,
                                request_overhead=overhead, disaggregation_mode=role,
                                num_reserved_decode_tokens=scenario.num_reserved_decode_tokens,
                                decode_radix_cache=scenario.decode_radix_cache,
                                kv_bytes_per_token=_kv_bytes_per_token(scenario, profile),
                                transfer_bandwidth=scenario.transfer_bandwidth_gb_s * 1e9))
    return out


def hicache_config(scenario: Scenario, role: str | None) -> HiCacheConfig | None:
    """The HiCache parameters of a worker of ``role`` (None: co-located); None when it runs without HiCache: HiCache
    off, or a decode worker that does not offload (its radix cache is off, so it has nothing to keep in a host pool).
    """
    offload = role == "decode"
    if not scenario.hicache or (offload and not scenario.disaggregation_decode_enable_offload_kvcache):
        return None
    return HiCacheConfig(ratio=scenario.hicache_ratio, size_gb=scenario.hicache_size,
                         write_policy=scenario.hicache_write_policy, storage=scenario.storage,
                         prefetch_policy=scenario.hicache_storage_prefetch_policy,
                         pcie_bandwidth=scenario.hicache_pcie_bandwidth_gb_s * 1e9,
                         storage_read_bandwidth=scenario.hicache_storage_read_bandwidth_gb_s * 1e9,
                         storage_write_bandwidth=scenario.hicache_storage_write_bandwidth_gb_s * 1e9,
                         decode_offload=offload)


def storage_capacity_pages(scenario: Scenario) -> int | None:
    """The shared L3's capacity in pages of ``scenario.page_size`` tokens (None: unbounded, or no L3)."""
    tokens = scenario.hicache_storage_capacity_tokens
    return None if tokens is None or not scenario.storage else max(1, tokens // scenario.page_size)


def _kv_bytes_per_token(scenario: Scenario, profile: str) -> int:
    """KV bytes per token per GPU: the scenario's, else the profile's, else ``WorkerConfig``'s."""
    return scenario.kv_bytes_per_token or (load_profile(profile).kv_bytes_per_token if profile
                                           else WorkerConfig.kv_bytes_per_token)


def _engine_parameters(profile: str) -> tuple[LatencyModel, SchedulerConfig, float]:
    """A profile's latency model, scheduler config and request overhead; the defaults without one."""
    if not profile:
        return LatencyModel(), SchedulerConfig(), 0.0
    p = load_profile(profile)
    return p.latency_model(), p.scheduler_config(), p.request_overhead


def _ports_free(base: int, n: int) -> bool:
    socks = []
    try:
        for p in range(base, base + n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            # as uvicorn binds: the TIME_WAIT of connections a server accepted there is then no obstacle (they
            # inherit SO_REUSEADDR); that of a client socket that had the port as its ephemeral one still is
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((LOOPBACK, p))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def port_candidates(salt: str, n: int, count: int = 64) -> list[int]:
    """Deterministic candidate first ports for ``n`` workers.

    Worker URLs are part of the routing state (SMG hashes them onto the consistent-hashing ring and
    keys its cache-aware trees by them), so a run is only repeatable when its workers get the same
    URLs. The ports are therefore chosen from a fixed, salted sequence rather than at random.
    """
    out = []
    for attempt in range(count):
        h = xxhash.xxh64_intdigest(f"{salt}/{attempt}".encode())
        out.append(PORT_LOW + h % (PORT_SPAN - n))
    return out


USUAL_PORTS_WAIT = 61.0  # Linux's TIME_WAIT lasts 60 s


def stable_ports(salt: str, n: int, check: bool = True, wait: float = USUAL_PORTS_WAIT) -> list[int]:
    """``n`` consecutive loopback ports from ``port_candidates``: the first block that is free
    (``check``), or the first block regardless (the ``direct`` transport binds nothing).

    The first block is waited for up to ``wait`` seconds before another is taken: what usually holds one of
    its ports is a client socket of this machine that got it as its ephemeral port (the candidates overlap
    Linux's ephemeral range): a kept-alive connection of a run going on beside this one (``compare --jobs``),
    which lasts that run, or the TIME_WAIT a client leaves when it closes a connection first, which blocks the
    port for 60 s even to SO_REUSEADDR (the http transport's own connections are closed by their servers
    first, so they leave none). Another block means other worker URLs, hence another hash ring and other
    results for hash-based policies."""
    cands = port_candidates(salt, n)
    if not check:
        return list(range(cands[0], cands[0] + n))
    deadline = time.monotonic() + wait
    if not _ports_free(cands[0], n) and wait > 0:  # say at once what this waits for, and how long at most
        held = port_holders(list(range(cands[0], cands[0] + n)))
        holders = ", ".join(f"{p} {'/'.join(states)}" for p, states in sorted(held.items())) or "holder unknown"
        print(f"waiting up to {wait:g} s for the workers' usual ports {cands[0]}-{cands[0] + n - 1} "
              f"(held: {holders}); Ctrl-C stops", file=sys.stderr, flush=True)
    while not _ports_free(cands[0], n) and time.monotonic() < deadline:
        time.sleep(0.1)
    for base in cands:
        if _ports_free(base, n):
            return list(range(base, base + n))
    raise RuntimeError(f"no block of {n} free loopback ports found")


_TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
               7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


def port_holders(ports: list[int]) -> dict[int, list[str]]:
    """The TCP sockets of this machine bound to each of ``ports`` (their states, from ``/proc/net/tcp``;
    empty where it cannot be read): why a usual block was not free."""
    wanted, out = set(ports), {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4:
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port in wanted:
                out.setdefault(port, []).append(_TCP_STATES.get(int(fields[3], 16), fields[3]))
    return out


def worker_urls(ports: list[int]) -> list[str]:
    return [f"http://{LOOPBACK}:{p}" for p in ports]


def port_salt(setup: Setup) -> str:
    """The salt of a setup's worker ports: its scenario and seed only, never its gateway flags.

    Every configuration of one scenario and seed therefore gets the same worker URLs, hence the same hash ring
    and the same cache-aware tree keys: a comparison of two gateway flags under ``consistent_hashing`` compares
    the flags, not two ring draws. The cost: two ``http`` runs of one scenario and seed want the same ports, so
    ``sim.commands.common.run_many`` runs them one after the other (other blocks still run in parallel)."""
    return f"{setup.scenario.name}/{setup.seed}/{setup.scenario.workers}"


def bootstrap_ports(scenario: Scenario, urls: list[str]) -> list[int]:
    """The prefill workers' bootstrap ports (SGLang's ``--disaggregation-bootstrap-port``, the gateway's ``--prefill
    URL PORT``), in pool order: the ports right after the last worker's, so they follow from the workers' stable
    block and a run repeats with the same ones (the block itself stays one port per worker: every transport, and
    every earlier results file, keeps its worker URLs). Empty for a co-located pool."""
    if not scenario.pd:
        return []
    last = urlsplit(urls[-1]).port
    if last is None:
        raise ValueError(f"a PD pool's worker URLs need ports, got {urls[-1]!r}")
    return [last + 1 + i for i in range(scenario.prefill_workers)]


def worker_flags(scenario: Scenario, urls: list[str]) -> list[str]:
    """The gateway's worker flags: ``--worker-urls URL ...``, or a PD pool's ``--pd-disaggregation --prefill URL
    BOOTSTRAP_PORT ... --decode URL ...`` (``urls`` in pool order)."""
    if not scenario.pd:
        return ["--worker-urls", *urls]
    n = scenario.prefill_workers
    workers = ["--pd-disaggregation"]
    for url, port in zip(urls[:n], bootstrap_ports(scenario, urls), strict=True):
        workers += ["--prefill", url, str(port)]
    for url in urls[n:]:
        workers += ["--decode", url]
    return workers


def gateway_argv(setup: Setup, urls: list[str]) -> list[str]:
    """``smg launch``-style flags for the mock gateway: the workers (``worker_flags``), then the seed and the setup's
    flags (last, so they win)."""
    return [*worker_flags(setup.scenario, urls), "--seed", str(setup.seed), *setup.gateway_args]


def session_server_argv(setup: Setup, router_url: str) -> list[str]:
    argv = ["--router-url", router_url, "--session-id-seed", str(setup.seed)]
    if not setup.routing_key:
        argv.append("--no-routing-key")
    return argv
