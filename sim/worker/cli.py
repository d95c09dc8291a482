"""``smg-testbed worker``: N mock SGLang workers on N consecutive ports, one process, one event loop.

Example: ``smg-testbed worker --port 18001 --count 3 --kv-capacity-tokens 200000`` serves workers
``w0``, ``w1``, ``w2`` on 127.0.0.1:18001-18003. ``--host`` defaults to loopback; binding anything
else exposes an unauthenticated server (the command warns), so do that only on a private network. SIGTERM/SIGINT stop
all workers; the ``exit`` fault (``POST /admin/faults {"exit": true}``) stops one worker, and the
process ends (status 3) when its last worker has stopped that way.

PD disaggregation (SGLang's flags): ``--disaggregation-mode prefill|decode`` runs the iteration-level engine in that
role. Each prefill worker also listens on its bootstrap port (``--disaggregation-bootstrap-port``, consecutive for
``--count`` > 1, as ``--port``): the real SMG probes it at registration, and in live time it is the rendezvous where
a decode worker learns when the request's KV has arrived (``sim.worker.bootstrap``). A decode worker uses that port
for a request whose ``bootstrap_port`` is null.

HiCache (SGLang's flags; shared/specs/pd-hicache.md section 3): ``--enable-hierarchical-cache`` (``--enable-hicache``)
gives each worker a host pool (L2) and implies the iteration-level engine; ``--hicache-storage-backend NAME`` (any
non-empty name) the pool's shared L3: the ``smg-testbed l3-store`` service named by
``--hicache-storage-backend-extra-config '{"url": "http://127.0.0.1:PORT"}'``, else one store shared by this command's
workers. In live time each worker process reads L3 readiness on its own clock (from its start), so workers started
apart in time see each other's pages that much earlier or later.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal
import socket
import sys
from collections.abc import Generator, Sequence
from urllib.parse import urlsplit

import uvicorn

from sim.engine.storage import L3Store, StorageTier
from sim.engine.types import PREFETCH_POLICIES, WRITE_POLICIES, HiCacheConfig, LatencyModel, WorkerConfig
from sim.worker.app import DEFAULT_MAX_PAYLOAD_SIZE, create_app
from sim.worker.bootstrap import DEFAULT_BOOTSTRAP_PORT
from sim.worker.core import WorkerCore
from sim.worker.faults import Faults
from sim.worker.remote_storage import RemoteStorage, StoreUnavailable
from testbed_common.loopback import LOOPBACK, is_loopback, warn_if_exposed
from testbed_common.procs import UVICORN_DEFAULTS


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process (several servers share a loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smg-testbed worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default=LOOPBACK,
                   help=f"bind address (default {LOOPBACK}); another address exposes the workers, with a warning")
    p.add_argument("--port", type=int, default=18001, help="port of the first worker")
    p.add_argument("--count", type=int, default=1, help="number of workers, on consecutive ports")
    p.add_argument("--name-prefix", default="w", help="workers are named <prefix>0..<prefix>{N-1}")
    p.add_argument(
        "--kv-capacity-tokens",
        type=int,
        default=WorkerConfig.kv_capacity_tokens,
        help="radix cache + running KV capacity per worker, tokens (0: unbounded)",
    )
    p.add_argument("--page-size", type=int, default=WorkerConfig.page_size)
    p.add_argument("--max-running-requests", type=int, default=WorkerConfig.max_running_requests)
    p.add_argument("--model-name", default="mock-model", help="served model name (the id SMG registers)")
    p.add_argument("--seed", type=int, default=0, help="pool seed: answers depend on it and on the prompt only")
    p.add_argument("--default-max-tokens", type=int, default=64, help="output length when a request gives none")
    p.add_argument("--context-length", type=int, default=1 << 20)
    p.add_argument("--speedup", type=float, default=1.0, help="live time runs this many times faster than wall time")
    p.add_argument("--engine", choices=("arrival", "iteration"), default=None,
                   help="arrival: each timeline computed at arrival (default); iteration: SGLang's scheduler, "
                        "stepped on the wall clock in live time (implied by a PD role)")
    p.add_argument("--disaggregation-mode", choices=("null", "prefill", "decode"), default="null",
                   help="PD role (SGLang's flag): null = co-located (default), prefill or decode")
    p.add_argument("--disaggregation-bootstrap-port", type=int, default=DEFAULT_BOOTSTRAP_PORT,
                   help=f"a prefill worker's bootstrap port (default {DEFAULT_BOOTSTRAP_PORT}, as SGLang; consecutive "
                        "with --count); a decode worker's fallback for a request without bootstrap_port")
    p.add_argument("--num-reserved-decode-tokens", type=int, default=WorkerConfig.num_reserved_decode_tokens,
                   help="KV a decode worker reserves per request beyond its prompt, tokens")
    p.add_argument("--disaggregation-decode-enable-radix-cache", action="store_true",
                   help="a decode worker keeps a radix cache: it matches locally and receives only the rest")
    p.add_argument("--kv-bytes-per-token", type=int, default=WorkerConfig.kv_bytes_per_token,
                   help="KV bytes per token per GPU (the PD transfer's size)")
    p.add_argument("--transfer-bandwidth-gb-s", type=float, default=WorkerConfig.transfer_bandwidth / 1e9,
                   help="PD KV transfer bandwidth, GB/s (1e9 bytes/s)")
    hc = p.add_argument_group("HiCache (SGLang's flags; the iteration-level engine, implied)")
    hc.add_argument("--enable-hierarchical-cache", "--enable-hicache", action="store_true",
                    help="a host memory tier (L2) per worker, and with --hicache-storage-backend the pool's L3")
    hc.add_argument("--hicache-ratio", type=float, default=HiCacheConfig.ratio,
                    help=f"host pool tokens / GPU pool tokens (default {HiCacheConfig.ratio})")
    hc.add_argument("--hicache-size", type=float, default=HiCacheConfig.size_gb,
                    help="host pool GB per rank, with --kv-bytes-per-token (overrides the ratio when > 0)")
    hc.add_argument("--hicache-write-policy", choices=WRITE_POLICIES, default=HiCacheConfig.write_policy)
    hc.add_argument("--hicache-storage-backend", default=None, metavar="NAME",
                    help="any non-empty name: the pool's shared L3 (the store at the extra config's url, else one "
                         "store shared by this command's workers)")
    hc.add_argument("--hicache-storage-backend-extra-config", default=None, metavar="JSON",
                    help='the L3 store service (smg-testbed l3-store): {"url": "http://127.0.0.1:PORT"}')
    hc.add_argument("--hicache-storage-prefetch-policy", choices=PREFETCH_POLICIES,
                    default=HiCacheConfig.prefetch_policy)
    hc.add_argument("--disaggregation-decode-enable-offload-kvcache", action="store_true",
                    help="a decode worker writes prompt + output pages to host, then L3 (needs a storage backend)")
    for name, flag, what in (("pcie_bandwidth", "pcie", "host <-> GPU"), ("storage_read_bandwidth", "storage-read",
                                                                         "L3 -> host, per worker"),
                             ("storage_write_bandwidth", "storage-write", "host -> L3, per worker")):
        default = getattr(HiCacheConfig, name) / 1e9
        hc.add_argument(f"--hicache-{flag}-bandwidth-gb-s", type=float, default=default,
                        help=f"{what}, GB/s (1e9 bytes/s; default {default:g})")
    p.add_argument("--max-payload-size", type=int, default=DEFAULT_MAX_PAYLOAD_SIZE, help="largest body, bytes")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of requests answered 500")
    p.add_argument(
        "--rollback-fail-rate",
        type=float,
        default=0.0,
        help='share of requests with input_ids answered 400 "rollback failed"',
    )
    p.add_argument("--slowdown", type=float, default=1.0, help="multiplies every modelled duration (engine)")
    p.add_argument("--unhealthy", action="store_true", help="start with /health answering 503")
    p.add_argument("--log-level", default="warning")
    for f in dataclasses.fields(LatencyModel):
        p.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(f.default),  # float coefficients; int MoE expert counts
            default=f.default,
            help=f"latency model: {f.name} (default {f.default})",
        )
    return p


def hicache_config(args: argparse.Namespace) -> HiCacheConfig | None:
    """``WorkerConfig.hicache`` of the HiCache flags: None unless ``--enable-hierarchical-cache`` or decode offload
    (which SGLang runs without it: the decode worker's host pool, then L3)."""
    if not (args.enable_hierarchical_cache or args.disaggregation_decode_enable_offload_kvcache):
        return None
    return HiCacheConfig(ratio=args.hicache_ratio, size_gb=args.hicache_size, write_policy=args.hicache_write_policy,
                         storage=bool(args.hicache_storage_backend),
                         prefetch_policy=args.hicache_storage_prefetch_policy,
                         pcie_bandwidth=args.hicache_pcie_bandwidth_gb_s * 1e9,
                         storage_read_bandwidth=args.hicache_storage_read_bandwidth_gb_s * 1e9,
                         storage_write_bandwidth=args.hicache_storage_write_bandwidth_gb_s * 1e9,
                         decode_offload=args.disaggregation_decode_enable_offload_kvcache)


def store_url(args: argparse.Namespace) -> str | None:
    """The L3 store service's URL of ``--hicache-storage-backend-extra-config`` (None: none given). ValueError with
    the reason when the JSON is not an object with a loopback http ``url``."""
    if args.hicache_storage_backend_extra_config is None:
        return None
    try:
        extra = json.loads(args.hicache_storage_backend_extra_config)
    except ValueError as e:
        raise ValueError(f"--hicache-storage-backend-extra-config is not JSON: {e}") from None
    url = extra.get("url") if isinstance(extra, dict) else None
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme != "http" or not parts.hostname or not is_loopback(parts.hostname):
        raise ValueError('--hicache-storage-backend-extra-config must be {"url": "http://127.0.0.1:PORT"} '
                         "(the L3 store on loopback)")
    return url


def storage_tier(args: argparse.Namespace) -> StorageTier | None:
    """The workers' shared L3: the store service at the extra config's URL, else one ``L3Store`` for this command's
    workers; None without a storage backend. Raises StoreUnavailable when the service does not answer, ValueError
    when its page size is not ``--page-size``."""
    hc = hicache_config(args)
    if hc is None or not hc.storage:
        return None
    url = store_url(args)
    if url is None:
        return L3Store(args.page_size)
    remote = RemoteStorage(url)
    if remote.page_size != args.page_size:
        remote.close()
        raise ValueError(f"the L3 store at {url} has pages of {remote.page_size} tokens, the workers "
                         f"--page-size {args.page_size}")
    return remote


def make_cores(args: argparse.Namespace, storage: StorageTier | None = None) -> list[WorkerCore]:
    """The workers of ``args``; with an L3 they all share ``storage`` (default: ``storage_tier(args)``)."""
    latency = LatencyModel(**{f.name: getattr(args, f.name) for f in dataclasses.fields(LatencyModel)})
    mode = disaggregation_mode(args)
    hicache = hicache_config(args)
    if storage is None:
        storage = storage_tier(args)
    cores = []
    for i in range(args.count):
        cfg = WorkerConfig(
            name=f"{args.name_prefix}{i}",
            kv_capacity_tokens=args.kv_capacity_tokens or None,
            page_size=args.page_size,
            max_running_requests=args.max_running_requests,
            latency=latency,
            slowdown=args.slowdown,
            # a PD role or HiCache implies the iteration-level engine
            engine=args.engine or ("iteration" if mode is not None or hicache is not None else "arrival"),
            disaggregation_mode=mode,
            num_reserved_decode_tokens=args.num_reserved_decode_tokens,
            decode_radix_cache=args.disaggregation_decode_enable_radix_cache,
            kv_bytes_per_token=args.kv_bytes_per_token,
            transfer_bandwidth=args.transfer_bandwidth_gb_s * 1e9,
            hicache=hicache,
        )
        faults = Faults(fail_rate=args.fail_rate, rollback_fail_rate=args.rollback_fail_rate, unhealthy=args.unhealthy)
        cores.append(
            WorkerCore(
                cfg,
                model_name=args.model_name,
                seed=args.seed,
                default_max_tokens=args.default_max_tokens,
                context_length=args.context_length,
                faults=faults,
                storage=storage,
            )
        )
    return cores


def disaggregation_mode(args: argparse.Namespace) -> str | None:
    """``WorkerConfig.disaggregation_mode`` of ``--disaggregation-mode`` (SGLang spells None "null")."""
    return None if args.disaggregation_mode == "null" else args.disaggregation_mode


def _validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    mode = disaggregation_mode(args)
    if mode is not None and args.engine == "arrival":
        p.error(f"--disaggregation-mode {mode} needs the iteration-level engine (--engine iteration, implied): "
                "the arrival-time engine has no PD roles")
    _validate_hicache(p, args, mode)
    if args.count < 1:
        p.error("--count must be >= 1")
    if args.port < 1 or args.port + args.count - 1 > 65535:
        p.error("--port .. --port+count-1 must be valid ports")
    if not args.speedup > 0:
        p.error("--speedup must be > 0")
    if not args.slowdown >= 1.0:
        p.error("--slowdown must be >= 1")
    for name in ("fail_rate", "rollback_fail_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} must be in [0, 1]")
    if args.max_payload_size < 1 or args.default_max_tokens < 1 or args.max_running_requests < 1 or args.page_size < 1:
        p.error("sizes and counts must be >= 1")
    if args.num_reserved_decode_tokens < 0 or args.kv_bytes_per_token < 1 or not args.transfer_bandwidth_gb_s > 0:
        p.error("--num-reserved-decode-tokens must be >= 0, --kv-bytes-per-token >= 1, --transfer-bandwidth-gb-s > 0")
    if mode == "prefill":
        first, last = args.disaggregation_bootstrap_port, args.disaggregation_bootstrap_port + args.count - 1
        if first < 1 or last > 65535:
            p.error("--disaggregation-bootstrap-port .. +count-1 must be valid ports")
        if first <= args.port + args.count - 1 and args.port <= last:
            p.error("the bootstrap ports overlap the workers' ports")


def _validate_hicache(p: argparse.ArgumentParser, args: argparse.Namespace, mode: str | None) -> None:
    """The HiCache flags' rules (SGLang's where it has them: ``arg_groups/kv_cache_hook.py``)."""
    if args.disaggregation_decode_enable_offload_kvcache:
        if mode != "decode":
            p.error("--disaggregation-decode-enable-offload-kvcache is only supported for decode side "
                    "(--disaggregation-mode decode)")
        if not args.hicache_storage_backend:
            p.error("--disaggregation-decode-enable-offload-kvcache is only supported when "
                    "--hicache-storage-backend is provided")
    if args.hicache_storage_backend_extra_config is not None and not args.hicache_storage_backend:
        p.error("--hicache-storage-backend-extra-config needs --hicache-storage-backend")
    try:
        hc = hicache_config(args)
        store_url(args)
    except ValueError as e:
        p.error(f"HiCache: {e}")
    if hc is not None and args.engine == "arrival":
        p.error("HiCache needs the iteration-level engine (--engine iteration, implied): the arrival-time engine "
                "has no host or storage tier")


def bind(host: str, ports: Sequence[int]) -> list[socket.socket]:
    """Bind every port before serving any, so a busy port fails the whole command cleanly."""
    socks: list[socket.socket] = []
    try:
        for port in ports:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.set_inheritable(True)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def bootstrap_ports(args: argparse.Namespace) -> range:
    """The ports the workers' bootstrap servers listen on: one per prefill worker, none otherwise."""
    if disaggregation_mode(args) != "prefill":
        return range(0)
    return range(args.disaggregation_bootstrap_port, args.disaggregation_bootstrap_port + args.count)


async def serve(args: argparse.Namespace, socks: Sequence[socket.socket],
                bootstrap_socks: Sequence[socket.socket] = (), storage: StorageTier | None = None) -> int:
    """Serve one worker per socket of ``socks``; a prefill worker also serves its bootstrap socket; with an L3 the
    workers share ``storage``."""
    cores = make_cores(args, storage)
    servers: list[_Server] = []
    exited: set[int] = set()
    for i, core in enumerate(cores):

        def stop(i: int = i) -> None:
            exited.add(i)
            servers[i].should_exit = True

        app = create_app(core, speedup=args.speedup, max_payload_size=args.max_payload_size, on_exit=stop,
                         bootstrap=bootstrap_socks[i] if bootstrap_socks else None,
                         bootstrap_port=args.disaggregation_bootstrap_port)
        config = uvicorn.Config(
            app,
            host=args.host,
            port=args.port + i,
            log_level=args.log_level,
            access_log=False,
            lifespan="on",  # the app's lifespan stops its engine's live stepping task
            timeout_graceful_shutdown=2,
            **UVICORN_DEFAULTS,
        )
        servers.append(_Server(config))

    loop = asyncio.get_running_loop()

    def stop_all() -> None:
        for s in servers:
            s.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_all)
    await asyncio.gather(*(s.serve(sockets=[sock]) for s, sock in zip(servers, socks, strict=True)))
    if any(not s.started for s in servers):
        return 1
    return 3 if len(exited) == len(servers) else 0


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    _validate(p, args)
    warn_if_exposed(p.prog, "--host", args.host)
    socks: list[socket.socket] = []
    for ports in (range(args.port, args.port + args.count), bootstrap_ports(args)):
        try:
            socks += bind(args.host, ports) if ports else []
        except OSError as e:
            print(f"smg-testbed worker: cannot bind {args.host}:{ports[0]}..{ports[-1]}: {e}", file=sys.stderr)
            for sock in socks:
                sock.close()
            return 1
    try:
        storage = storage_tier(args)
    except (StoreUnavailable, ValueError) as e:
        print(f"smg-testbed worker: {e}", file=sys.stderr)
        for sock in socks:
            sock.close()
        return 1
    try:
        return asyncio.run(serve(args, socks[:args.count], socks[args.count:], storage))
    finally:
        for sock in socks:
            sock.close()
        if isinstance(storage, RemoteStorage):
            storage.close()
