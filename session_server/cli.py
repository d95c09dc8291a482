"""``smg-testbed session-server`` / ``python -m session_server``: run the miles-compatible session server."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn

from session_server.app import ServerConfig, create_app
from session_server.core import DEFAULT_MAX_BODY_BYTES, DEFAULT_ROUTING_KEY_HEADER
from session_server.messages import VALID_ROLES
from testbed_common.loopback import LOOPBACK, warn_if_exposed
from testbed_common.procs import UVICORN_DEFAULTS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smg-testbed session-server",
        description="miles-compatible session server: token-in/token-out sessions proxied to a router "
        "with X-SMG-Routing-Key: <session_id>.",
    )
    p.add_argument("--host", default=LOOPBACK,
                   help=f"bind address (default {LOOPBACK}); another address exposes the server, with a warning")
    p.add_argument("--port", type=int, default=30000, help="port (default 30000)")
    p.add_argument(
        "--router-url",
        default="http://127.0.0.1:30080",
        help="the gateway/router every turn goes to (default http://127.0.0.1:30080)",
    )
    p.add_argument(
        "--no-routing-key",
        dest="routing_key",
        action="store_false",
        help="do not add the routing-key header (the 'without header' arm); on by default",
    )
    p.add_argument(
        "--routing-key-header",
        default=DEFAULT_ROUTING_KEY_HEADER,
        help=f"routing-key header name (default {DEFAULT_ROUTING_KEY_HEADER})",
    )
    p.add_argument(
        "--tito-allowed-append-roles",
        nargs="+",
        default=["tool"],
        type=str.lower,
        choices=VALID_ROLES,
        help="roles an agent may append after a model turn (default: tool)",
    )
    p.add_argument(
        "--timeout",
        "--miles-router-timeout",
        dest="timeout",
        type=float,
        default=None,
        help="upstream timeout in seconds (default: none, as miles' --miles-router-timeout)",
    )
    p.add_argument(
        "--session-id-seed",
        type=int,
        default=None,
        help="testbed extension: draw session ids (uuid4 hex format) from a seeded RNG",
    )
    p.add_argument(
        "--max-sessions",
        type=int,
        default=None,
        help="most sessions held at once; POST /sessions answers 503 beyond it (default: no limit)",
    )
    p.add_argument(
        "--idle-ttl",
        type=float,
        default=None,
        help="drop sessions idle for this many seconds, checked on each create (default: never)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help=f"largest accepted request body; larger gets 413 (default {DEFAULT_MAX_BODY_BYTES})",
    )
    p.add_argument("--max-connections", type=int, default=1024, help="upstream connection pool size")
    p.add_argument("--instance-id", default=None, help="instance id reported by /health (default: uuid4 hex)")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        router_url=args.router_url,
        routing_key=args.routing_key,
        routing_key_header=args.routing_key_header,
        timeout=args.timeout,
        allowed_append_roles=tuple(args.tito_allowed_append_roles),
        session_id_seed=args.session_id_seed,
        max_sessions=args.max_sessions,
        idle_ttl=args.idle_ttl,
        max_body_bytes=args.max_body_bytes,
        max_connections=args.max_connections,
        instance_id=args.instance_id,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.timeout is not None and args.timeout <= 0:
        parser.error("--timeout must be positive (omit it for no timeout)")
    if args.max_body_bytes <= 0 or args.max_connections <= 0:
        parser.error("--max-body-bytes and --max-connections must be positive")
    if "user" in args.tito_allowed_append_roles:
        print("session-server: warning: appending 'user' messages after a model turn is allowed", file=sys.stderr)
    try:
        config = config_from_args(args)
        app = create_app(config)
    except ValueError as e:
        parser.error(str(e))
    warn_if_exposed(parser.prog, "--host", args.host)
    # timeout_keep_alive above httpx's 5 s pool expiry: with uvicorn's 5 s default a client reusing a connection
    # the server is just closing gets a ReadError
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_keep_alive=75,
        **UVICORN_DEFAULTS,
    )
    return 0
