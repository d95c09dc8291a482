"""``smg-testbed gateway`` / ``python -m mock_gateway``: the mock SMG gateway with ``smg launch``'s flags.

Example::

    smg-testbed gateway --host 127.0.0.1 --port 30080 --prometheus-host 127.0.0.1 --prometheus-port 29080 \\
        --worker-urls http://127.0.0.1:18001 http://127.0.0.1:18002 --policy manual --assignment-mode min_load

Flags of ``smg launch`` that the mock does not model are accepted with a warning. As with SMG,
``--host`` and ``--prometheus-host`` default to 0.0.0.0: pass 127.0.0.1 for a loopback-only gateway.
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from mock_gateway.app import create_app
from mock_gateway.config import build_parser, parse_args
from testbed_common.procs import UVICORN_DEFAULTS


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        build_parser().print_help()
        return 0
    cfg = parse_args(args)
    level = {"warn": "warning"}.get(cfg.log_level, cfg.log_level)
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.ignored:
        logging.getLogger("mock_gateway").warning(
            "ignoring smg launch flags the mock does not model: %s", " ".join(cfg.ignored)
        )
    app = create_app(cfg, serve_metrics=True)
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
