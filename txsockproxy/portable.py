"""
The portable relay path: Twisted's public API, on every reactor.

Connects through the backend's endpoint with a timeout; relays through the
transports themselves (each the other's streaming producer, which the
session has registered); shuts and closes with C{loseWriteConnection()} and
C{loseConnection()}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from txsockproxy.interfaces import ICancellable, IRelayPath


def _forget(result: object) -> None:
    return None


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

    def shutWrite(self, transport: Any) -> None:
        transport.loseWriteConnection()

    def close(self, transport: Any, drained: bool) -> None:
        transport.loseConnection()


__all__ = ["PortableRelayPath"]
