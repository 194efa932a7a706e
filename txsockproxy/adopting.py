"""
Listening on a socket another process bound: a reactor for building one
listener's endpoint (C{serverFromString}) whose listen calls adopt that
socket (C{IReactorSocket.adoptStreamPort}) instead of binding a new one.

A worker process (L{txsockproxy.worker}) is handed its listening sockets by
the parent that bound them; its listeners are built from the same endpoint
strings as in a single process (TLS, PROXY protocol and C{tls-*} wrapping
included), with this reactor underneath: whatever the endpoint would have
bound, it gets the socket handed over. The same serves a process that takes
over the sockets of another one.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from zope.interface import directlyProvides, providedBy

from txsockproxy.accelerator import tlsFactoryFor


@dataclass(frozen=True)
class InheritedSocket:
    """
    A listening socket handed to this process.

    @ivar fileno: its descriptor, owned by the receiver (adopting dups it).
    @ivar family: its address family (C{socket.AF_INET}, C{AF_INET6},
        C{AF_UNIX}).
    """

    fileno: int
    family: int

    def close(self) -> None:
        """
        Close the descriptor (the adopted port has a copy of its own).
        """
        try:
            os.close(self.fileno)
        except OSError:
            pass


def familyOf(address: IAddress) -> int:
    """
    The address family of a listening port whose C{getHost()} is
    C{address}.

    @raise ValueError: an address that is not TCP or a unix socket.
    """
    if isinstance(address, IPv6Address):
        return socket.AF_INET6
    if isinstance(address, IPv4Address):
        return socket.AF_INET
    if isinstance(address, UNIXAddress):
        return socket.AF_UNIX
    raise ValueError(f"not a TCP or unix socket address: {address}")


class AdoptingReactor:
    """
    The reactor it wraps, except that listening (C{listenTCP},
    C{listenSSL}, C{listenUNIX}, C{adoptStreamPort}) adopts one given
    listening socket, whatever port, interface or path is asked for. It
    provides the wrapped reactor's interfaces and passes every other call
    through.

    Each listener gets its own: the socket is adopted once per listen call.
    """

    def __init__(self, reactor: Any, inherited: InheritedSocket) -> None:
        self._reactor = reactor
        self._inherited = inherited
        directlyProvides(self, *providedBy(reactor))

    def _adopt(self, factory: Any) -> Any:
        # adoptStreamPort wants a non-blocking socket (the flag is the open
        # file's: the parent's port set it already).
        os.set_blocking(self._inherited.fileno, False)
        return self._reactor.adoptStreamPort(
            self._inherited.fileno, self._inherited.family, factory
        )

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        """
        Adopt the socket for C{factory}.

        @return: the wrapped reactor's L{IListeningPort}.
        """
        return self._adopt(factory)

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
        interface: str = "",
    ) -> Any:
        """
        Adopt the socket for C{factory} under TLS, as the wrapped reactor's
        C{listenSSL} wraps it.

        @return: the wrapped reactor's L{IListeningPort}.
        """
        return self._adopt(tlsFactoryFor(self._reactor)(contextFactory, False, factory))

    def listenUNIX(self, address: Any, factory: Any, backlog: int = 50, mode: int = 0o666,
                   wantPID: int = 0) -> Any:
        """
        Adopt the socket for C{factory} (its file's mode was set by the
        process that bound it).

        @return: the wrapped reactor's L{IListeningPort}.
        """
        return self._adopt(factory)

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: Any, factory: Any) -> Any:
        """
        Adopt the socket handed over (not C{fileDescriptor}: e.g. a
        C{systemd:} endpoint's, which the parent adopted) for C{factory}.

        @return: the wrapped reactor's L{IListeningPort}.
        """
        return self._adopt(factory)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


__all__ = ["AdoptingReactor", "InheritedSocket", "familyOf"]
