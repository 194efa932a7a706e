"""
A PROXY protocol header read before TLS: on a TLS-terminating listener
behind C{haproxy:}, a load balancer sends the header in clear and then the
client's ClientHello (as HAProxy's C{send-proxy} does towards a TLS
server). L{HeaderFirstEndpoint} listens with a wrapper that reads the
header, with the same rules as a plain PROXY protocol listener, before the
TLS layer (and the session under it) sees a byte; the header's addresses
are then the connection's (C{getPeer}/C{getHost}).

On a listener without TLS the relay reads the header itself (see
L{txsockproxy.relay.FrontendProtocol}), which keeps the connection's own
transport under the session (no wrapper: the accelerator stays usable).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from txsockproxy.proxyprotocol import HeaderError, ProxyHeader, parseHeader


class HeaderFirstProtocol(ProtocolWrapper):
    """
    Reads a PROXY protocol header, then connects the wrapped protocol and
    passes everything else on.
    """

    factory: HeaderFirstFactory
    transport: Any

    def __init__(self, factory: HeaderFirstFactory, wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)  # type: ignore[arg-type]
        self.received: Optional[bytes] = b""
        self.started = False
        self.timer: Optional[IDelayedCall] = None
        self.peer: Optional[IAddress] = None
        self.host: Optional[IAddress] = None

    def makeConnection(self, transport: Any) -> None:
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        self.factory.registerProtocol(self)
        self.timer = self.factory.clock.callLater(
            self.factory.proxy.pool.config.proxyHeaderTimeout, self._timedOut
        )

    def dataReceived(self, data: bytes) -> None:
        if self.started:
            self.wrappedProtocol.dataReceived(data)
            return
        if self.received is None:
            return  # refused already
        received = self.received + data
        try:
            header = parseHeader(received)
        except HeaderError as e:
            self._refuse(str(e))
            return
        if not isinstance(header, ProxyHeader):
            self.received = received
            return
        self._cancelTimer()
        self.received = None
        self.started = True
        if header.source is not None:
            self.peer = header.source
            self.host = header.destination
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]
        rest = received[header.length:]
        if rest:
            self.wrappedProtocol.dataReceived(rest)

    def getPeer(self) -> IAddress:
        return self.peer if self.peer is not None else self.transport.getPeer()

    def getHost(self) -> IAddress:
        return self.host if self.host is not None else self.transport.getHost()

    def _refuse(self, why: str) -> None:
        self._cancelTimer()
        self.received = None
        self.factory.proxy.refuseHeader(self.transport, why)

    def _timedOut(self) -> None:
        self.timer = None
        if not self.started and self.received is not None:
            self._refuse(
                f"no complete PROXY protocol header within "
                f"{self.factory.proxy.pool.config.proxyHeaderTimeout:g}s"
            )

    def _cancelTimer(self) -> None:
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self._cancelTimer()
        if self.started:
            super().connectionLost(reason)
            return
        if self.received is not None:
            self.received = None
            self.factory.proxy.refuseHeader(
                None, "closed before a complete PROXY protocol header", self.transport.getPeer()
            )
        self.factory.unregisterProtocol(self)


class HeaderFirstFactory(WrappingFactory):
    """
    Wraps C{wrappedFactory}'s protocols in L{HeaderFirstProtocol}, with the
    header settings, counters and log of C{proxy} (a
    L{txsockproxy.relay.ProxyFactory}).
    """

    protocol = HeaderFirstProtocol

    def __init__(self, wrappedFactory: IProtocolFactory, proxy: Any) -> None:
        super().__init__(wrappedFactory)
        self.proxy = proxy
        self.clock = proxy.reactor


@implementer(IStreamServerEndpoint)
class HeaderFirstEndpoint:
    """
    Listens with C{endpoint}, reading a PROXY protocol header from each
    connection before the listening factory's protocol sees it.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, proxy: Any) -> None:
        self.endpoint = endpoint
        self.proxy = proxy

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self.endpoint.listen(HeaderFirstFactory(protocolFactory, self.proxy))


__all__ = ["HeaderFirstEndpoint", "HeaderFirstFactory", "HeaderFirstProtocol"]
