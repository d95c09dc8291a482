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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import socket
import sys
from collections.abc import Generator, Sequence

import uvicorn

from sim.engine.types import LatencyModel, WorkerConfig
from sim.worker.app import DEFAULT_MAX_PAYLOAD_SIZE, create_app
from sim.worker.bootstrap import DEFAULT_BOOTSTRAP_PORT
from sim.worker.core import WorkerCore
from sim.worker.faults import Faults
from testbed_common.loopback import LOOPBACK, warn_if_exposed
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


def make_cores(args: argparse.Namespace) -> list[WorkerCore]:
    latency = LatencyModel(**{f.name: getattr(args, f.name) for f in dataclasses.fields(LatencyModel)})
    mode = disaggregation_mode(args)
    cores = []
    for i in range(args.count):
        cfg = WorkerConfig(
            name=f"{args.name_prefix}{i}",
            kv_capacity_tokens=args.kv_capacity_tokens or None,
            page_size=args.page_size,
            max_running_requests=args.max_running_requests,
            latency=latency,
            slowdown=args.slowdown,
            engine=args.engine or ("iteration" if mode is not None else "arrival"),  # a PD role implies iteration
            disaggregation_mode=mode,
            num_reserved_decode_tokens=args.num_reserved_decode_tokens,
            decode_radix_cache=args.disaggregation_decode_enable_radix_cache,
            kv_bytes_per_token=args.kv_bytes_per_token,
            transfer_bandwidth=args.transfer_bandwidth_gb_s * 1e9,
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
                bootstrap_socks: Sequence[socket.socket] = ()) -> int:
    """Serve one worker per socket of ``socks``; a prefill worker also serves its bootstrap socket."""
    cores = make_cores(args)
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
        return asyncio.run(serve(args, socks[:args.count], socks[args.count:]))
    finally:
        for sock in socks:
            sock.close()
