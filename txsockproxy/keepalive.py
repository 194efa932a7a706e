"""
TCP keepalive for one side of a session: after C{idle} seconds without a
packet the system probes the peer every C{interval} seconds, and gives up
after C{count} unanswered probes, resetting the connection: a peer that
vanished (a host down, a NAT mapping dropped) is found without an idle
timeout. Off unless configured.
"""

from __future__ import annotations

import socket
from typing import Any

from txsockproxy.config import KeepaliveConfig
from txsockproxy.handles import socketOf


def applyKeepalive(config: KeepaliveConfig, transport: Any) -> bool:
    """
    Turn keepalive on for the TCP socket under C{transport} with the
    settings of C{config} (the system's for those left 0); nothing when
    C{config.idle} is 0.

    @return: whether it was applied (not for unix sockets, or a transport
        without a socket).
    """
    if config.idle <= 0:
        return False
    skt = socketOf(transport)
    if skt is None or skt.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (
            ("TCP_KEEPIDLE", config.idle),
            ("TCP_KEEPINTVL", config.interval),
            ("TCP_KEEPCNT", config.count),
        ):
            number = getattr(socket, option, None)
            if number is not None and value:
                skt.setsockopt(socket.IPPROTO_TCP, number, max(1, int(value)))
    except (OSError, OverflowError, TypeError):
        # Refused by the system (a value out of its range): the session
        # goes on without it.
        return False
    return True


__all__ = ["applyKeepalive"]
