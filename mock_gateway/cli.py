"""``smg-testbed gateway`` / ``python -m mock_gateway``: the mock SMG gateway with ``smg launch``'s flags.

Example::

    smg-testbed gateway --port 30080 --prometheus-port 29080 \\
        --worker-urls http://127.0.0.1:18001 http://127.0.0.1:18002 --policy manual --assignment-mode min_load

Unlike ``smg launch`` (0.0.0.0), ``--host`` and ``--prometheus-host`` default to loopback; another address
is a warning. Flags of ``smg launch`` that the mock does not model are accepted with a warning naming them;
any other mistake in the flags (``config.GatewayFlagError``, a policy plugin that does not load) is one line
on stderr and exit status 2.
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from mock_gateway.app import create_app
from mock_gateway.config import build_parser, parse_args
from testbed_common.loopback import warn_if_exposed
from testbed_common.procs import UVICORN_DEFAULTS

PROG = "smg-testbed gateway"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        build_parser().print_help()
        return 0
    try:
        cfg = parse_args(args)
        app = create_app(cfg, serve_metrics=True)
    except ValueError as e:  # GatewayFlagError, or the policy factory refusing a name or a broken plugin
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    warn_if_exposed(PROG, "--host", cfg.host)
    warn_if_exposed(PROG, "--prometheus-host", cfg.prometheus_host)
    level = {"warn": "warning"}.get(cfg.log_level, cfg.log_level)
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.ignored:
        logging.getLogger("mock_gateway").warning(
            "ignoring smg launch flags the mock does not model: %s", " ".join(cfg.ignored)
        )
    # timeout_keep_alive: SMG keeps idle client connections open; uvicorn's 5 s default equals httpx's pool expiry,
    # and a client reusing a connection the server is closing gets a ReadError (seen under load as a 502 upstream)
    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level=level if level != "info" else "warning",
        access_log=False,
        timeout_keep_alive=75,
        **UVICORN_DEFAULTS,
    )
    return 0
