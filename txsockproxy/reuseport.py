"""
One listening socket per worker for a TCP listen endpoint, all bound to the
same address with C{SO_REUSEPORT}: the kernel spreads new connections among
them by a hash of the connection, instead of the workers taking turns at one
shared socket. The parent (L{txsockproxy.workers}) binds them all and keeps
them, so a worker that restarts gets its own socket (and the connections
waiting in it) back.

A reactor for building one listener's endpoint (C{serverFromString}): its
C{listenTCP} (and C{listenSSL}, which listens through it) binds the
sockets; anything else goes to the reactor it wraps (unix sockets, systemd's
sockets: one shared socket, as without it).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import error
from zope.interface import directlyProvides, providedBy


class ReusePortReactor:
    """
    The reactor it wraps, except that C{listenTCP} binds C{count} sockets
    with C{SO_REUSEPORT} to the address asked for (an ephemeral port: the
    one the first got). The first is listened on as the wrapped reactor's
    port (adopted); the others' descriptors are in L{extra}.

    @ivar extra: the other sockets' descriptors, owned by the caller.
    """

    def __init__(self, reactor: Any, count: int) -> None:
        self._reactor = reactor
        self._count = count
        self.extra: list[int] = []
        directlyProvides(self, *providedBy(reactor))

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        """
        Bind the sockets and listen on the first.

        @raise twisted.internet.error.CannotListenError: one cannot be bound.
        """
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        sockets: list[socket.socket] = []
        try:
            for _ in range(self._count):
                s = socket.socket(family, socket.SOCK_STREAM)
                sockets.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((interface, port))
                port = s.getsockname()[1]
                s.listen(backlog)
                s.setblocking(False)
        except OSError as e:
            for s in sockets:
                s.close()
            raise error.CannotListenError(interface, port, e) from None
        try:
            listening = self._reactor.adoptStreamPort(sockets[0].fileno(), family, factory)
        finally:
            sockets[0].close()
        self.extra = [s.detach() for s in sockets[1:]]
        return listening

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        """
        Bind the sockets (the parent never accepts: no TLS needed here).
        """
        return self.listenTCP(port, factory, backlog, interface)

    def close(self) -> None:
        """
        Close the other sockets.
        """
        extra, self.extra = self.extra, []
        for fd in extra:
            try:
                os.close(fd)
            except OSError:
                pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


__all__ = ["ReusePortReactor"]
