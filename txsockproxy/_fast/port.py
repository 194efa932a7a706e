"""
TCP listening ports that accept with less work per connection than
Twisted's, for txsockproxy's reactor (L{txsockproxy.reactor.EPollReactor}
uses them for C{listenTCP}, and so for C{tcp:} and C{ssl:} listen endpoints).

Twisted's C{tcp.Port.doRead} builds a buffering logger and a generator for
every readiness event, goes through C{socket.accept()} (which turns the
family and type of the listening socket into enums for every client), and
makes the client's address object; its C{tcp.Server} formats two strings
for logging and C{repr()} in its constructor and sets the socket non-blocking
through C{FileDescriptor}'s and C{Connection}'s constructors.  Here:

 - L{Port.doRead} accepts in a plain loop, with the listening socket's
   C{_accept()}; any error other than "no more clients" (C{EMFILE} and the
   like) is handed to Twisted's own C{doRead}, which knows what to do with
   it.  A factory that declares C{wantsAddress = False} (the proxy's) gets
   L{None} instead of an address object in C{buildProtocol}; the transport's
   C{getPeer()} still builds one when asked.
 - L{Server} sets what Twisted's constructors set, and builds its log prefix
   and C{repr()} only when asked: a few microseconds less per connection, and
   two strings less per open connection.
 - The client's socket is of the C type under C{socket.socket}
   (L{SocketType}): every method a transport uses, without a Python
   constructor.

Everything else is Twisted's: these are subclasses, and behave as their
parents once constructed.
"""

from __future__ import annotations

import socket
from errno import EAGAIN, EWOULDBLOCK
from typing import Any, Callable, Optional

from twisted.internet import address, tcp
from twisted.python import log

_SOCK_STREAM = socket.SOCK_STREAM

# The socket type of the C module under socket.socket: what the transports
# need of a socket, without socket.socket's Python constructor (and its
# close(), see txsockproxy._fast.relay), which add nothing they use
# (makefile()'s reference counting, enums for family and type).
# handles.socketOf knows it as a socket (socket.SocketType).
SocketType = socket.SocketType


def madeWhenAsked(name: str, make: Callable[[Any], str]) -> Any:
    """
    A property for a transport's string attribute C{name} (C{logstr},
    C{repstr}) that Twisted computes in the constructor: made by C{make} each
    time it is asked for, unless a value was set (which is then kept).
    """
    key = "_" + name

    def get(self: Any) -> str:
        given: Optional[str] = self.__dict__.get(key)
        return given if given is not None else make(self)

    def set(self: Any, value: str) -> None:
        self.__dict__[key] = value

    return property(get, set)


def logPrefixOf(transport: Any) -> str:
    """
    The log prefix of C{transport}'s protocol, or once it is closed (the
    protocol gone) Twisted's class default, C{"Uninitialized"}.
    """
    protocol = transport.__dict__.get("protocol")
    if protocol is None:
        return "Uninitialized"
    return str(transport._getLogPrefix(protocol))


def _protocolName(transport: Any) -> str:
    protocol = transport.__dict__.get("protocol")
    return "closed" if protocol is None else type(protocol).__name__


class Server(tcp.Server):
    """
    Twisted's C{tcp.Server}, constructed with less work (see the module's
    docstring).
    """

    def __init__(
        self,
        sock: socket.SocketType,
        protocol: Any,
        client: tuple[Any, ...],
        server: Any,
        sessionno: int,
        reactor: Any,
    ) -> None:
        # What FileDescriptor.__init__, Connection.__init__ and
        # Server.__init__ set, less logstr and repstr.
        self.reactor = reactor
        self._tempDataBuffer: list[bytes] = []
        self._tempDataLen = 0
        self.socket = sock  # type: ignore[assignment]
        sock.setblocking(False)
        self.fileno = sock.fileno
        self.protocol = protocol
        if len(client) != 2:
            self._addressType = address.IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        reactor.addReader(self)  # startReading()
        self.connected = 1

    # Made when first asked for; a value set replaces them, as with Twisted's.
    logstr = madeWhenAsked(
        "logstr", lambda self: f"{logPrefixOf(self)},{self.sessionno},{self.hostname}"
    )
    repstr = madeWhenAsked(
        "repstr",
        lambda self: (
            f"<{_protocolName(self)} #{self.sessionno} on "
            f"{getattr(self.server, '_realPortNumber', None)}>"
        ),
    )


class Port(tcp.Port):
    """
    Twisted's C{tcp.Port}, accepting with less work per connection (see the
    module's docstring).
    """

    transport = Server

    def doRead(self) -> None:
        """
        Accept the clients waiting, at most C{numberAccepts} of them (Twisted's
        adaptive limit), and connect each to a protocol of the factory.
        """
        accepted = 0
        try:
            factory: Any = self.factory
            wantsAddress = getattr(factory, "wantsAddress", True)
            accept = self.socket._accept  # type: ignore[union-attr]
            family = self.addressFamily
            transport = self.transport
            reactor = self.reactor
            for _ in range(self.numberAccepts):
                if self.disconnecting:
                    break
                try:
                    fd, addr = accept()
                except OSError as e:
                    if e.errno in (EAGAIN, EWOULDBLOCK):
                        break
                    # Refused by a firewall, out of descriptors, ...: Twisted's
                    # loop handles these (and accepts whatever else waits).
                    tcp.Port.doRead(self)
                    return
                accepted += 1
                skt = SocketType(family, _SOCK_STREAM, 0, fd)
                if len(addr) == 4:
                    # IPv6: the scope ID in the host, as Twisted's does.
                    host = socket.getnameinfo(addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
                    addr = (host[0],) + tuple(addr[1:])
                protocol = factory.buildProtocol(
                    self._buildAddr(addr) if wantsAddress else None
                )
                if protocol is None:
                    skt.close()
                    continue
                s = self.sessionno
                self.sessionno = s + 1
                protocol.makeConnection(transport(skt, protocol, addr, self, s, reactor))
            if accepted == self.numberAccepts:
                self.numberAccepts += 20
            else:
                self.numberAccepts = max(1, accepted)
        except BaseException:
            log.deferr()


__all__ = ["Port", "Server", "logPrefixOf", "madeWhenAsked"]
