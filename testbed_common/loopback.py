"""Loopback by default: every testbed server binds 127.0.0.1 unless told otherwise, and says so when it is.

The servers answer anyone who can reach them, without authentication, so a bind address that is not
loopback (``0.0.0.0``, a LAN address, a host name) gets a one-line warning on stderr.
"""

from __future__ import annotations

import ipaddress
import sys

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ``::1`` (IPv6 brackets allowed); any other address or name is not."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(prog: str, flag: str, host: str) -> None:
    """Warn on stderr when ``flag``'s bind address ``host`` is not loopback."""
    if not is_loopback(host):
        print(f"{prog}: warning: {flag} {host} is not a loopback address: this unauthenticated server is reachable "
              f"from the network (leave {flag} out to bind {LOOPBACK})", file=sys.stderr)
