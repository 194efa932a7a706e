"""
The portable relay path: Twisted's public API, on every reactor.

Connects through the backend's endpoint with a timeout; relays through the
transports themselves (each the other's streaming producer, which the
session has registered); shuts and closes with C{loseWriteConnection()} and
C{loseConnection()}, except that a TLS transport's write side is shut with
C{loseConnection()} (see L{shutWrite}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime, ISSLTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from txsockproxy.interfaces import ICancellable, IRelayPath


def _forget(result: object) -> None:
    return None


def shutWrite(transport: Any) -> None:
    """
    End C{transport}'s write side after what is buffered for it.

    A TLS transport (Twisted's L{twisted.protocols.tls}) has no half-close of
    its own: its C{loseWriteConnection()} shuts the TCP connection beneath
    the TLS layer at once, ahead of the bytes it still holds, and without a
    close_notify; the peer then sees a truncated stream, and the close that
    follows runs while Twisted's TLS layer is still delivering data (which
    then fails with an C{AttributeError} on C{bio_read}). Its
    C{loseConnection()} does what a half-close should: it flushes, sends
    close_notify, and keeps reading until the peer's close_notify.
    """
    if ISSLTransport.providedBy(transport):
        transport.loseConnection()
    else:
        transport.loseWriteConnection()


@implementer(IRelayPath)
class PortableRelayPath:
    """
    The relay path of Twisted's public API.

    @ivar clock: what times connects out.
    """

    name = "portable"

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock

    def connect(self, endpoint: Any, factory: Any, timeout: float, congestion: Any) -> ICancellable:
        d = endpoint.connect(factory)
        d.addTimeout(timeout, self.clock)

        def failed(reason: Failure) -> None:
            factory.clientConnectionFailed(None, reason)

        # The protocol is not kept as the result: the endpoint's wrapper
        # keeps the Deferred, and the session frees by reference counting.
        d.addCallbacks(_forget, failed)
        return d

    def join(self, client: Any, backend: Any, owner: Any) -> None:
        return None

    def write(self, transport: Any, data: bytes) -> None:
        transport.write(data)

    def writePreamble(self, client: Any, backend: Any, data: bytes) -> int:
        backend.write(data)
        return 0

    def shutWrite(self, transport: Any) -> None:
        shutWrite(transport)

    def drained(self, transport: Any) -> bool:
        # Twisted's public API does not say whether a transport holds
        # bytes: its write side is always shut first.
        return False

    def close(self, transport: Any, drained: bool) -> None:
        transport.loseConnection()


__all__ = ["PortableRelayPath", "shutWrite"]
