"""
The accelerated relay path: L{IRelayPath} with the accelerator's connector,
relay and closing, falling back to the portable path wherever they do not
apply (other endpoint types, TLS and wrapped transports, other reactors).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from txsockproxy._fast import connect, relay
from txsockproxy.interfaces import ICancellable, IRelayPath
from txsockproxy.portable import PortableRelayPath
from txsockproxy.timeouts import Timeouts


class Joined:
    """
    The two relays of a session on the fast path, kept by its protocols.
    """

    __slots__ = ("relays", "protocols")

    def __init__(self, relays: tuple[relay.Relay, relay.Relay], protocols: tuple[Any, Any]) -> None:
        self.relays = relays
        self.protocols = protocols

    def release(self) -> None:
        """
        Give the transports their own C{doRead} back, release the pipes.
        """
        for one in self.relays:
            one.uninstall()
        for protocol in self.protocols:
            protocol.relay = None


@implementer(IRelayPath)
class AcceleratedRelayPath:
    """
    The relay path of the accelerator, in C{mode} C{"splice"} or C{"copy"}.
    """

    def __init__(self, reactor: IReactorTime, mode: str) -> None:
        self.reactor = reactor
        self.mode = mode
        self.name = mode
        # One timer per connect-timeout length, not one per connect.
        self.timeouts = Timeouts(reactor)
        self.portable = PortableRelayPath(reactor)
        # IRelayPath's write, shutWrite, drained and close: the relay's
        # functions themselves, not methods that call them (a call less
        # each, several times per session).
        self.write = relay.writeNow
        self.shutWrite = relay.shutWrite
        self.drained = relay.idle
        self.close = relay.close

    def connect(self, endpoint: Any, factory: Any, timeout: float, congestion: Any) -> ICancellable:
        connecting = connect.connect(endpoint, factory, timeout, self.timeouts, congestion)
        if connecting is not None:
            connecting.start()
            return connecting  # type: ignore[return-value]
        direct = connect.directConnect(endpoint, factory, timeout)
        if direct is not None:
            return direct  # type: ignore[return-value]
        return self.portable.connect(endpoint, factory, timeout, congestion)

    def join(self, client: Any, backend: Any, owner: Any) -> Any:
        relays = relay.install(
            client.transport, backend.transport, owner, self.mode,
            clientProtocol=client, backendProtocol=backend,
        )
        return None if relays is None else Joined(relays, (client, backend))

    def writePreamble(self, client: Any, backend: Any, data: bytes) -> int:
        return relay.writePreamble(client, backend, data)


__all__ = ["AcceleratedRelayPath", "Joined"]
