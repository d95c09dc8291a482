"""``smg-testbed l3-store``: the pool's shared HiCache L3 as a service on loopback (``sim.storage_service``).

Example: ``smg-testbed l3-store --port 18100 --page-size 64`` and then each worker with
``--enable-hierarchical-cache --page-size 64 --hicache-storage-backend mock
--hicache-storage-backend-extra-config '{"url": "http://127.0.0.1:18100"}'``. SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn

from sim.engine.storage import L3Store
from sim.storage_service import store_app
from testbed_common.loopback import LOOPBACK
from testbed_common.procs import UVICORN_DEFAULTS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smg-testbed l3-store", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=18100, help=f"port on {LOOPBACK}")
    p.add_argument("--page-size", type=int, default=64,
                   help="tokens per page (the workers' --page-size; SGLang's docs use 64 with L3)")
    p.add_argument("--capacity-tokens", type=int, default=0,
                   help="the store's capacity in tokens, LRU beyond it (0: unbounded, the default)")
    p.add_argument("--log-level", default="warning")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not 1 <= args.port <= 65535:
        p.error("--port must be a valid port")
    if args.page_size < 1 or args.capacity_tokens < 0:
        p.error("--page-size must be >= 1 and --capacity-tokens >= 0")
    capacity = args.capacity_tokens // args.page_size if args.capacity_tokens else None
    if capacity == 0:
        p.error("--capacity-tokens must hold at least one page")
    store = L3Store(args.page_size, capacity)
    uvicorn.run(store_app(store), host=LOOPBACK, port=args.port, log_level=args.log_level, access_log=False,
                **UVICORN_DEFAULTS)
    return 0
