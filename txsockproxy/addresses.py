"""
Addresses in words, as the logs and the session log write them.
"""

from __future__ import annotations

import os

from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import IAddress


def formatAddress(address: IAddress) -> str:
    """
    C{host:port} for an IPv4 address, C{[host]:port} for IPv6 (as in a
    URL: the port cannot be read as part of the address), C{unix:path} (or
    C{unix} for an unnamed socket) for a unix socket, else C{str(address)}.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        if ":" in str(host):
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    if isinstance(address, UNIXAddress):
        raw = address.name
        path = os.fsdecode(raw) if isinstance(raw, bytes) else raw
        return f"unix:{path}" if path else "unix"
    return str(address)


__all__ = ["formatAddress"]
