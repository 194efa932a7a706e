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
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from zope.interface import directlyProvides, providedBy

from txsockproxy.accelerator import tlsFactoryFor


class InheritedSocket:
    """
    A listening socket handed to this process, until it is adopted.

    @ivar fileno: its descriptor, owned by the receiver; -1 once closed
        (adopting dups it, then closes this one: a listener that goes away
        must leave no descriptor behind that keeps its socket listening).
    @ivar family: its address family (C{socket.AF_INET}, C{AF_INET6},
        C{AF_UNIX}).
    """

    def __init__(self, fileno: int, family: int) -> None:
        self.fileno = fileno
        self.family = family

    def __repr__(self) -> str:
        return f"<InheritedSocket fileno={self.fileno} family={self.family}>"

    def close(self) -> None:
        """
        Close the descriptor, once.
        """
        fileno, self.fileno = self.fileno, -1
        if fileno >= 0:
            try:
                os.close(fileno)
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
        inherited = self._inherited
        if inherited.fileno < 0:
            raise error.CannotListenError(None, None, OSError("the socket handed over was "
                                                              "adopted already"))
        # adoptStreamPort wants a non-blocking socket (the flag is the open
        # file's: the parent's port set it already).
        os.set_blocking(inherited.fileno, False)
        port = self._reactor.adoptStreamPort(inherited.fileno, inherited.family, factory)
        # The port has its own copy.
        inherited.close()
        return port

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
