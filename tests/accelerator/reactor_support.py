"""
Support for tests on a private, uninstalled txsockproxy reactor that the test
turns by hand, a bounded number of times: the reactor, loopback sockets, and
a protocol and client factory that record what happens to them.
"""

from __future__ import annotations

import select
import socket
from typing import Any, Callable, Optional

from twisted.internet import error
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.fakes import PrivateReactorTestCase
from txsockproxy._fast import connect as fastconnect
from txsockproxy._fast import port as fastport
from txsockproxy._fast.reactor import EPollReactor


@implementer(IHalfCloseableProtocol)
class Recording(Protocol):
    """
    A half-closeable protocol that records what happens to it.
    """

    def __init__(self) -> None:
        self.made = False
        self.eof = False
        self.received: list[bytes] = []
        self.lost: Optional[Failure] = None

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        self.eof = True

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:
        self.lost = reason


class RecordingFactory(ClientFactory):
    """
    A client factory that records its protocol and its failure.
    """

    noisy = False

    def __init__(self) -> None:
        self.protocol: Optional[Recording] = None  # type: ignore[assignment]
        self.failed: Optional[Failure] = None
        self.connector: Any = None

    def buildProtocol(self, addr: Any) -> Recording:
        self.protocol = Recording()
        return self.protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.connector = connector
        self.failed = reason


def readable(sock: socket.socket) -> bool:
    """
    Whether C{sock} is readable now (no waiting).
    """
    return bool(select.select([sock], [], [], 0)[0])


def privateReactor(case: SynchronousTestCase) -> EPollReactor:
    """
    A new, uninstalled L{EPollReactor}, closed when C{case} ends.
    """
    reactor = EPollReactor()
    case.addCleanup(reactor._poller.close)
    case.addCleanup(reactor.waker.connectionLost, None)
    return reactor


def socketPairs(case: SynchronousTestCase, count: int) -> list[tuple[socket.socket, socket.socket]]:
    """
    C{count} connected socket pairs, closed when C{case} ends.
    """
    pairs = [socket.socketpair() for _ in range(count)]
    for a, b in pairs:
        case.addCleanup(a.close)
        case.addCleanup(b.close)
    return pairs


class ReactorTestCase(PrivateReactorTestCase):
    """
    A private epoll reactor of the accelerator's, turned by the test.

    @cvar pythonSockets: whether its ports and connects make
        C{socket.socket}s (see L{usePythonSockets}), for a test case that
        records socket calls with L{recordCalls}.
    """

    pythonSockets = False

    def setUp(self) -> None:
        super().setUp()
        if self.pythonSockets:
            usePythonSockets(self)

    def makeReactor(self) -> EPollReactor:
        return EPollReactor()

    def closeReactor(self) -> None:
        super().closeReactor()
        self.reactor._poller.close()

    def listenTCP(self) -> socket.socket:
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        return server

    def connectTCP(self, server: socket.socket, timeout: float = 5.0) -> tuple[RecordingFactory, fastconnect.Connecting]:
        factory = RecordingFactory()
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", server.getsockname()[1], timeout=30)
        connecting = fastconnect.connect(endpoint, factory, timeout)
        assert connecting is not None
        connecting.start()
        return factory, connecting

    def connected(self) -> tuple[Any, socket.socket, Recording]:
        """
        A transport of ours connected to a plain socket: (transport, peer,
        protocol).
        """
        server = self.listenTCP()
        factory, connecting = self.connectTCP(server)
        self.turnUntil(lambda: factory.protocol is not None and factory.protocol.made)
        peer, _ = server.accept()
        self.addCleanup(peer.close)
        assert factory.protocol is not None
        return connecting.transport, peer, factory.protocol

    def proxy(
        self, server: socket.socket, clientCongestion: str = "auto", congestion: str = "auto"
    ) -> tuple[Any, Any]:
        """
        A proxy (its factory and listening port) on the private reactor,
        relaying to the backend listening on C{server}, with the given
        congestion control settings of the client and backend sockets.
        """
        from txsockproxy._fast.path import AcceleratedRelayPath
        from txsockproxy._fast.relay import defaultMode
        from txsockproxy.backends import BackendPool
        from txsockproxy.balancers import FairBalancer
        from txsockproxy.config import BackendConfig, ProxyConfig
        from txsockproxy.relay import ProxyFactory

        config = ProxyConfig(
            name="t",
            listen=("tcp:0",),
            backends=(
                BackendConfig(
                    endpoint=f"tcp:host=127.0.0.1:port={server.getsockname()[1]}",
                    label="b",
                    congestion=congestion,
                ),
            ),
            clientCongestion=clientCongestion,
        )
        factory = ProxyFactory(
            BackendPool.fromConfig(config, FairBalancer(), self.reactor), self.reactor,
            relayPath=AcceleratedRelayPath(self.reactor, defaultMode()),
        )
        listening = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        return factory, listening


def usePythonSockets(case: SynchronousTestCase) -> None:
    """
    Make the accelerator's ports and connects use C{socket.socket} for the
    rest of C{case} rather than the C type under it (which L{recordCalls}
    cannot patch).
    """
    case.patch(fastport, "SocketType", socket.socket)
    case.patch(fastconnect, "_SocketType", socket.socket)


def recordCalls(
    case: SynchronousTestCase, name: str, only: Callable[[socket.socket], bool] = lambda sock: True
) -> list[Any]:
    """
    Record the argument of each call of C{socket.socket} method C{name}
    (C{shutdown}, C{setblocking}) on the sockets C{only} accepts, for the
    rest of C{case}: a L{ReactorTestCase} whose C{pythonSockets} is set (the
    C type under C{socket.socket}, which the accelerator uses otherwise,
    cannot be patched).
    """
    assert getattr(case, "pythonSockets", False), "calls on C sockets would go unrecorded"
    calls: list[Any] = []
    original = getattr(socket.socket, name)

    def recording(sock: socket.socket, argument: Any) -> Any:
        if only(sock):
            calls.append(argument)
        return original(sock, argument)

    case.patch(socket.socket, name, recording)
    return calls

