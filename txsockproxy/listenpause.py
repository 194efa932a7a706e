"""
Pausing a listening TCP socket and resuming it, keeping its descriptor: the
parent of the workers (L{txsockproxy.workers}) pauses a dead worker's own
C{SO_REUSEPORT} socket of each listener while it waits to restart it, so that
the kernel gives new connections to the other workers' sockets instead of
queueing them where nobody accepts.

Paused, the socket is out of its C{SO_REUSEPORT} group: connections waiting
in it are reset (moved to another socket of the group instead when the
C{net.ipv4.tcp_migrate_req} sysctl is 1). Resumed, it listens again on the
same address, back in the group. On Linux, C{shutdown(SHUT_RD)} of a
listening socket stops it listening (as HAProxy pauses its listeners);
elsewhere pausing fails and the socket goes on listening.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any


def pauseListening(fd: int) -> Any:
    """
    Stop the listening socket C{fd} listening, keeping it open.

    @return: its address, for L{resumeListening}.
    @raise OSError: it cannot be paused (not on Linux, not listening).
    """
    s = socket.socket(fileno=os.dup(fd))
    try:
        address = s.getsockname()
        s.shutdown(socket.SHUT_RD)
    finally:
        s.close()
    return address


def resumeListening(fd: int, address: Any, backlog: int) -> None:
    """
    Have the socket C{fd}, paused by L{pauseListening}, listen again on
    C{address}.

    @raise OSError: it cannot (the address was taken meanwhile); it is
        then not listening.
    """
    s = socket.socket(fileno=os.dup(fd))
    try:
        try:
            # An ephemeral port (bound as port 0) was released by the pause;
            # a port bound by number was kept, and binding again is EINVAL.
            s.bind(address)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
        s.listen(backlog)
        bound = s.getsockname()
        if bound[:2] != address[:2]:
            s.shutdown(socket.SHUT_RD)
            raise OSError(errno.EADDRNOTAVAIL, f"listening again on {bound[:2]}, "
                          f"not {address[:2]}")
    finally:
        s.close()


__all__ = ["pauseListening", "resumeListening"]
