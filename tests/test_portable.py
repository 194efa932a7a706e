"""
Tests for the portable relay path: with the accelerator off, the core uses
Twisted's public API only.

The sessions here run over real loopback sockets on a private poll reactor,
and everything the core is handed (the reactor, the backends' endpoints,
the transports its protocols see) is wrapped in L{NoPrivateNames}, which
fails the test when the core asks for any underscore name: as if Twisted
had none of its private names.
"""

from __future__ import annotations

import select
import socket
from typing import Any, Callable

from twisted.internet.endpoints import clientFromString
from twisted.internet.pollreactor import PollReactor
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.fakes import resetSocket
from txsockproxy import relay as relayModule
from txsockproxy.backends import Backend, BackendPool
from txsockproxy.balancers import FairBalancer
from txsockproxy.config import BackendConfig, ProxyConfig
from txsockproxy.interfaces import IRelayPath
from txsockproxy.portable import PortableRelayPath
from txsockproxy.relay import BackendProtocol, FrontendProtocol, ProxyFactory


class PrivateNameTouched(AssertionError):
    """
    The core asked for a private name.
    """


class NoPrivateNames:
    """
    A stand-in for C{wrapped} that gives every public attribute and refuses
    every underscore name (but Python's own dunder names).
    """

    def __init__(self, wrapped: Any, touched: list[str]) -> None:
        object.__setattr__(self, "_wrapped", wrapped)
        object.__setattr__(self, "_touched", touched)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
            self._touched.append(name)
            raise PrivateNameTouched(f"the core asked {self._wrapped!r} for {name}")
        return getattr(self._wrapped, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            self._touched.append(name)
            raise PrivateNameTouched(f"the core set {name} on {self._wrapped!r}")
        setattr(self._wrapped, name, value)


def guardedProtocols(touched: list[str]) -> tuple[type, type]:
    """
    Protocol classes that hand the core a guarded transport.
    """

    class GuardedFrontend(FrontendProtocol):
        def makeConnection(self, transport: Any) -> None:
            super().makeConnection(NoPrivateNames(transport, touched))

    class GuardedBackend(BackendProtocol):
        def makeConnection(self, transport: Any) -> None:
            super().makeConnection(NoPrivateNames(transport, touched))

    return GuardedFrontend, GuardedBackend


class PortableRelayPathTests(SynchronousTestCase):
    """
    Sessions on the portable path relay exactly, half-close, fail over and
    pass resets on, touching no private name of what they are given.
    """

    def setUp(self) -> None:
        self.reactor = PollReactor()
        self.touched: list[str] = []
        frontend, backend = guardedProtocols(self.touched)
        self.patch(relayModule, "BackendProtocol", backend)
        self.frontend = frontend

    def tearDown(self) -> None:
        # The poll reactor's own descriptors.
        self.reactor.removeAll()
        for reader in list(getattr(self.reactor, "_selectables", {}).values()):
            try:
                reader.connectionLost(None)
            except Exception:
                pass

    def turnUntil(self, condition: Callable[[], bool], turns: int = 2000) -> None:
        """
        Run the reactor a bounded number of turns until C{condition}.
        """
        for _ in range(turns):
            if condition():
                return
            self.reactor.iterate(0.005)
        raise AssertionError("the condition never held")

    def backendServer(self) -> socket.socket:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        self.addCleanup(server.close)
        return server

    def proxy(self, *endpoints: str) -> tuple[ProxyFactory, int]:
        """
        A proxy on the private reactor to C{endpoints}, with everything the
        core gets guarded; return its factory and port.
        """
        config = ProxyConfig(
            name="p", listen=("tcp:0",),
            backends=tuple(
                BackendConfig(endpoint=e, label=f"b{i}", disableTime=60)
                for i, e in enumerate(endpoints)
            ),
        )
        guardedReactor = NoPrivateNames(self.reactor, self.touched)
        backends = [
            Backend(b, NoPrivateNames(clientFromString(self.reactor, b.endpoint), self.touched))
            for b in config.backends
        ]
        pool = BackendPool(config, backends, FairBalancer(), guardedReactor)  # type: ignore[arg-type]
        path = PortableRelayPath(guardedReactor)  # type: ignore[arg-type]
        verifyObject(IRelayPath, path)
        factory = ProxyFactory(pool, guardedReactor, relayPath=path)  # type: ignore[arg-type]
        frontend = self.frontend
        factory.buildProtocol = lambda addr: frontend(factory)  # type: ignore[method-assign]
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port

    def accept(self, server: socket.socket) -> socket.socket:
        self.turnUntil(lambda: bool(select.select([server], [], [], 0)[0]))
        peer, _ = server.accept()
        peer.setblocking(False)
        self.addCleanup(peer.close)
        return peer

    def recv(self, sock: socket.socket) -> bytes:
        """
        What C{sock} has, once it has something (C{b""} at EOF).
        """
        self.turnUntil(lambda: bool(select.select([sock], [], [], 0)[0]))
        return sock.recv(1 << 20)

    def assertNothingPrivate(self) -> None:
        self.assertEqual(self.touched, [])

    def test_relayAndHalfClose(self) -> None:
        """
        Bytes arrive exactly both ways; the client's half-close reaches the
        backend, whose reply still arrives, then its close.
        """
        server = self.backendServer()
        factory, port = self.proxy(f"tcp:host=127.0.0.1:port={server.getsockname()[1]}")
        client = socket.create_connection(("127.0.0.1", port))
        client.setblocking(False)
        self.addCleanup(client.close)
        client.sendall(b"request")
        peer = self.accept(server)
        self.assertEqual(self.recv(peer), b"request")
        client.shutdown(socket.SHUT_WR)
        self.assertEqual(self.recv(peer), b"")
        peer.sendall(b"reply after EOF")
        self.assertEqual(self.recv(client), b"reply after EOF")
        peer.close()
        self.assertEqual(self.recv(client), b"")
        self.turnUntil(lambda: not factory.sessions.open)
        self.assertNothingPrivate()

    def test_failover(self) -> None:
        """
        A refused backend is disabled and the session goes to the next one.
        """
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        deadPort = dead.getsockname()[1]
        dead.close()
        server = self.backendServer()
        factory, port = self.proxy(
            f"tcp:host=127.0.0.1:port={deadPort}",
            f"tcp:host=127.0.0.1:port={server.getsockname()[1]}",
        )
        client = socket.create_connection(("127.0.0.1", port))
        client.setblocking(False)
        self.addCleanup(client.close)
        client.sendall(b"hello")
        peer = self.accept(server)
        self.assertEqual(self.recv(peer), b"hello")
        self.assertEqual(factory.pool.backends[0].failed, 1)
        self.assertNothingPrivate()

    def test_clientReset(self) -> None:
        """
        A client's reset reaches the backend as a reset.
        """
        server = self.backendServer()
        factory, port = self.proxy(f"tcp:host=127.0.0.1:port={server.getsockname()[1]}")
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"x")
        peer = self.accept(server)
        self.assertEqual(self.recv(peer), b"x")
        resetSocket(client)
        self.turnUntil(lambda: not factory.sessions.open)
        with self.assertRaises(ConnectionResetError):
            self.recv(peer)
        self.assertNothingPrivate()
