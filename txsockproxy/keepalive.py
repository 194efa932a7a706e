"""
TCP keepalive for one side of a session: after C{idle} seconds without a
packet the system probes the peer every C{interval} seconds, and gives up
after C{count} unanswered probes, resetting the connection: a peer that
vanished (a host down, a NAT mapping dropped) is found without an idle
timeout. Off unless configured.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from txsockproxy.handles import socketOf


@dataclass(frozen=True)
class Keepalive:
    """
    Keepalive settings: all three in seconds/probes, or C{idle} 0 for off.
    """

    idle: float = 0.0
    interval: float = 0.0
    count: int = 0

    def __bool__(self) -> bool:
        return self.idle > 0

    def apply(self, transport: Any) -> bool:
        """
        Turn keepalive on for the TCP socket under C{transport} with these
        settings (the system's for those left 0).

        @return: whether it was applied (not for unix sockets, or a
            transport without a socket).
        """
        skt = socketOf(transport)
        if skt is None or skt.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        try:
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in (
                ("TCP_KEEPIDLE", self.idle),
                ("TCP_KEEPINTVL", self.interval),
                ("TCP_KEEPCNT", self.count),
            ):
                number = getattr(socket, option, None)
                if number is not None and value:
                    skt.setsockopt(socket.IPPROTO_TCP, number, max(1, int(value)))
        except OSError:
            return False
        return True


__all__ = ["Keepalive"]
