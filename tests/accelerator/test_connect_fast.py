"""
Tests for the per-connection shortcuts of L{txsockproxy._fast.relay}
(L{fastconnect.connect}, L{fastrelay.shutWrite}, L{fastrelay.writeNow}) and for
L{txsockproxy._fast.reactor}: loopback integration tests on a private, uninstalled
epoll reactor that the test turns by hand, a bounded number of times.
"""

from __future__ import annotations

import gc
import os
import select
import shutil
import socket
import struct
import tempfile
import weakref
from typing import Any, Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.accelerator.reactor_support import (
    ReactorTestCase,
    Recording,
    RecordingFactory,
    privateReactor,
    readable,
    recordCalls,
    socketPairs,
)
from txsockproxy._fast import connect as fastconnect
from txsockproxy._fast import relay as fastrelay
from txsockproxy._fast.reactor import EPollReactor
from txsockproxy.accelerator import installReactor


class ConnectIntegrationTests(ReactorTestCase):
    """
    L{fastconnect.connect} starts a backend connect before it returns, with one
    timer, and reports success to the factory's protocol and failure,
    timeout and cancellation to its C{clientConnectionFailed}.
    """

    def test_tcpLoopbackConnectsWithinStart(self) -> None:
        """
        To a listener of this host, the connect completes inside C{start}
        (Linux completes the handshake within the first C{connect()}, and
        the second says so): the protocol is connected before the reactor
        ran, the timer is gone, and the socket is registered for reading
        only.
        """
        server = self.listenTCP()
        factory, connecting = self.connectTCP(server)
        assert factory.protocol is not None
        self.assertTrue(factory.protocol.made)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        fd = connecting.transport.fileno()
        self.assertIn(fd, self.reactor._reads)
        self.assertNotIn(fd, self.reactor._writes)

    def test_noTimerWhenOverWithinStart(self) -> None:
        """
        A connect that is over within C{start} (connected, here) never arms
        its timer; one still in progress does (L{test_inProgress}).
        """
        armed: list[str] = []
        real = self.reactor.callLater

        def callLater(delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
            armed.append(getattr(f, "__name__", ""))
            return real(delay, f, *args, **kwargs)

        self.patch(self.reactor, "callLater", callLater)
        server = self.listenTCP()
        factory, _ = self.connectTCP(server)
        assert factory.protocol is not None
        self.assertTrue(factory.protocol.made)
        self.assertNotIn("_timedOut", armed)

    def test_inProgress(self) -> None:
        """
        When the handshake is not done when C{connect()} is asked again (a
        listener that takes no more connections drops the SYN), the connect
        stays in progress, guarded by its timer, until cancelled.
        """
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        filler = socket.create_connection(server.getsockname())  # fills the queue
        self.addCleanup(filler.close)
        factory, connecting = self.connectTCP(server)
        self.assertIsNone(factory.protocol)
        self.assertIsNone(factory.failed)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.assertIn(connecting.transport.fileno(), self.reactor._writes)
        connecting.cancel()
        assert factory.failed is not None
        self.assertIsInstance(factory.failed.value, error.UserError)

    def test_tcpStartsAtOnce(self) -> None:
        """
        Without asking C{connect()} again at once, the connect is on its way
        when C{start} returns (Twisted's C{connectTCP} waits for the
        reactor's next turn): the listener has a connection to accept before
        the reactor ran; the factory's protocol is connected after one event
        (writable: C{SO_ERROR}, then C{connect()} again).
        """
        self.patch(fastconnect._ConnectAtOnce, "askAgain", False)
        server = self.listenTCP()
        factory, connecting = self.connectTCP(server)
        self.assertTrue(readable(server))
        self.assertIsNone(factory.protocol)
        self.turnUntil(lambda: factory.protocol is not None and factory.protocol.made)
        self.assertIsInstance(connecting.transport, fastconnect.TCPClient)
        self.assertTrue(fastrelay.isPlain(connecting.transport))
        self.assertEqual(self.reactor.getDelayedCalls(), [], "the timer outlived the connect")

    def test_timerUsesShorterTimeout(self) -> None:
        """
        One timer guards the connect, with the shorter of the session's
        timeout and the endpoint's.
        """
        self.patch(fastconnect._ConnectAtOnce, "askAgain", False)  # stays in progress
        server = self.listenTCP()
        _, connecting = self.connectTCP(server, timeout=3.0)
        [timer] = self.reactor.getDelayedCalls()
        self.assertTrue(2.5 < timer.getTime() - self.reactor.seconds() <= 3.0)
        connecting.cancel()

    def test_unixConnectsWithinStart(self) -> None:
        """
        A unix-socket connect completes inside C{start}: the protocol is
        connected before the reactor ran, and the peer reads its bytes.
        """
        # A short path: unix socket names are limited to 107 bytes.
        directory = tempfile.mkdtemp(prefix="txsp-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "s")
        server = socket.socket(socket.AF_UNIX)
        self.addCleanup(server.close)
        server.bind(path)
        server.listen(8)
        factory = RecordingFactory()
        connecting = fastconnect.connect(UNIXClientEndpoint(self.reactor, path), factory, 5.0)
        assert connecting is not None
        connecting.start()
        assert factory.protocol is not None
        self.assertTrue(factory.protocol.made)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        peer, _ = server.accept()
        self.addCleanup(peer.close)
        fastrelay.writeNow(connecting.transport, b"hello")
        self.assertEqual(peer.recv(16), b"hello")

    def test_refused(self) -> None:
        """
        A refused connect reaches C{clientConnectionFailed} as
        L{error.ConnectionRefusedError}, and cancels the timer.
        """
        server = self.listenTCP()
        port = server.getsockname()[1]
        server.close()
        factory = RecordingFactory()
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", port)
        connecting = fastconnect.connect(endpoint, factory, 5.0)
        assert connecting is not None
        connecting.start()
        self.turnUntil(lambda: factory.failed is not None)
        assert factory.failed is not None
        self.assertIsInstance(factory.failed.value, error.ConnectionRefusedError)
        self.assertIs(factory.connector, connecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        """
        When the timer fires first, the connect fails with
        L{error.TimeoutError} and its socket is closed.
        """
        self.patch(fastconnect._ConnectAtOnce, "askAgain", False)  # stays in progress
        server = self.listenTCP()
        factory, connecting = self.connectTCP(server)
        [timer] = self.reactor.getDelayedCalls()
        timer.cancel()
        connecting._timedOut()
        assert factory.failed is not None
        self.assertIsInstance(factory.failed.value, error.TimeoutError)
        self.assertFalse(hasattr(connecting.transport, "socket"))

    def test_cancel(self) -> None:
        """
        C{cancel} stops a connect in progress: the factory hears
        L{error.UserError}, nothing is built, no timer is left.
        """
        self.patch(fastconnect._ConnectAtOnce, "askAgain", False)  # stays in progress
        server = self.listenTCP()
        factory, connecting = self.connectTCP(server)
        connecting.cancel()
        assert factory.failed is not None
        self.assertIsInstance(factory.failed.value, error.UserError)
        self.assertIsNone(factory.protocol)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_notHandled(self) -> None:
        """
        Endpoints on a reactor that is not txsockproxy's (a memory reactor)
        and other kinds of endpoint are left to the endpoint.
        """
        from tests.fakes import FakeEndpoint

        memory = TCP4ClientEndpoint(MemoryReactorClock(), "127.0.0.1", 1)
        self.assertIsNone(fastconnect.connect(memory, RecordingFactory(), 5.0))
        self.assertIsNone(fastconnect.connect(FakeEndpoint(), RecordingFactory(), 5.0))


class ConnectEdgeIntegrationTests(ReactorTestCase):
    """
    The edges of L{fastconnect.connect} found in review: a readiness event that
    is not (a stale one), failures found while the connect starts, and
    addresses the socket layer rejects outright.
    """

    def test_staleEventIsNotConnected(self) -> None:
        """
        A readiness event while the connect is still in progress (C{SO_ERROR}
        is 0 then too) does not make the transport connected: C{connect()}
        is asked again, and says "in progress".
        """
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        # Fill the listener's queue: further handshakes stay unanswered.
        fillers = []
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(server.getsockname())
            fillers.append(filler)
            self.addCleanup(filler.close)
        factory, connecting = self.connectTCP(server)
        transport = connecting.transport
        for _ in range(3):
            transport.doWrite()
        self.assertIsNone(factory.protocol)
        self.assertFalse(transport.connected)
        self.assertIsNone(factory.failed)
        connecting.cancel()
        assert factory.failed is not None
        self.assertIsInstance(factory.failed.value, error.UserError)

    def test_failureAtStartReportedNextTurn(self) -> None:
        """
        A connect that fails inside C{start} (no such unix socket) is
        reported in the reactor's next turn, not from within C{start}.
        """
        factory = RecordingFactory()
        connecting = fastconnect.connect(UNIXClientEndpoint(self.reactor, "/nonexistent/txsp.sock"), factory, 5.0)
        assert connecting is not None
        connecting.start()
        self.assertIsNone(factory.failed)
        self.reactor.runUntilCurrent()
        assert factory.failed is not None
        self.assertIsInstance(factory.failed.value, error.ConnectError)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_rejectedAddress(self) -> None:
        """
        An address the socket layer rejects outright (a unix path over the
        system's limit) is a connect failure with its reason, not an
        exception.
        """
        factory = RecordingFactory()
        path = "/tmp/" + "x" * 200
        connecting = fastconnect.connect(UNIXClientEndpoint(self.reactor, path), factory, 5.0)
        assert connecting is not None
        connecting.start()
        self.reactor.runUntilCurrent()
        assert factory.failed is not None
        self.assertIsInstance(factory.failed.value, error.ConnectError)
        self.assertIn("too long", str(factory.failed.value))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_failoverAlongManyUnreachableBackends(self) -> None:
        """
        A session fails over along 150 backends that fail as they start
        (missing unix sockets) without recursing, and reaches the one that
        answers.
        """
        from txsockproxy._fast.path import AcceleratedRelayPath
        from txsockproxy._fast.relay import defaultMode
        from txsockproxy.backends import BackendPool
        from txsockproxy.balancers import FairBalancer
        from txsockproxy.config import BackendConfig, ProxyConfig
        from txsockproxy.relay import ProxyFactory

        server = self.listenTCP()
        bad = tuple(
            BackendConfig(endpoint=f"unix:/nonexistent/txsp-{i}.sock", label=f"bad{i}")
            for i in range(150)
        )
        good = BackendConfig(endpoint=f"tcp:host=127.0.0.1:port={server.getsockname()[1]}", label="good")
        config = ProxyConfig(name="t", listen=("tcp:0",), backends=bad + (good,))
        self.patch(BackendPool, "log", _QuietLogger())
        factory = ProxyFactory(
            BackendPool.fromConfig(config, FairBalancer(), self.reactor), self.reactor,
            relayPath=AcceleratedRelayPath(self.reactor, defaultMode()),
        )
        listening = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        client = socket.create_connection(("127.0.0.1", listening.getHost().port))
        self.addCleanup(client.close)
        self.turnUntil(lambda: readable(server), turns=2000)
        peer, _ = server.accept()
        self.addCleanup(peer.close)
        pool = factory.pool
        self.assertEqual(sum(b.failed for b in pool.backends), 150)


class _QuietLogger:
    """
    Stands in for a pool's logger: 150 connect failures need not be logged.
    """

    def error(self, *args: Any, **kwargs: Any) -> None:
        pass

    def info(self, *args: Any, **kwargs: Any) -> None:
        pass


class ShutWriteIntegrationTests(ReactorTestCase):
    """
    L{fastrelay.shutWrite} ends a transport's write side at once when nothing
    is left to write, and otherwise after what is buffered, as
    C{loseWriteConnection} does; L{fastrelay.writeNow} writes to the socket
    at once.
    """

    # Its tests record calls on the proxy's sockets.
    pythonSockets = True

    def test_atOnce(self) -> None:
        """
        With nothing buffered, the peer sees EOF before the reactor runs
        again, and the other direction still works.
        """
        transport, peer, protocol = self.connected()
        fastrelay.shutWrite(transport)
        self.assertTrue(readable(peer))
        self.assertEqual(peer.recv(16), b"")
        peer.sendall(b"still open")
        self.turnUntil(lambda: b"".join(protocol.received) == b"still open")

    def test_afterBuffered(self) -> None:
        """
        With bytes buffered by Twisted, EOF follows them once the reactor
        has written them.
        """
        transport, peer, protocol = self.connected()
        transport.write(b"buffered")
        fastrelay.shutWrite(transport)
        self.assertFalse(readable(peer))
        received: list[bytes] = []

        def gotEOF() -> bool:
            if readable(peer):
                data = peer.recv(64)
                received.append(data)
                return data == b""
            return False

        self.turnUntil(gotEOF)
        self.assertEqual(b"".join(received), b"buffered")

    def test_idleFollowsWriteRegistration(self) -> None:
        """
        On txsockproxy's reactor a plain transport is idle while it is not
        registered for writing: not with bytes buffered, nor while a close
        or half-close is under way, again once the buffer is written.
        """
        transport, peer, _ = self.connected()
        self.assertTrue(fastrelay.idle(transport))
        transport.write(b"buffered")
        self.assertFalse(fastrelay.idle(transport))
        self.turnUntil(lambda: transport.fileno() not in self.reactor._writes)
        self.assertTrue(fastrelay.idle(transport))
        self.assertEqual(peer.recv(64), b"buffered")
        transport.loseWriteConnection()
        self.assertFalse(fastrelay.idle(transport))
        self.turnUntil(lambda: transport._writeDisconnected)
        self.assertFalse(fastrelay.idle(transport), "its write side is shut")

    def test_closeBothEnded(self) -> None:
        """
        L{fastrelay.close} of a transport whose directions both ended closes
        it at once, without a C{shutdown(SHUT_RDWR)} first: the protocol
        hears L{error.ConnectionDone}.
        """
        transport, peer, protocol = self.connected()
        fastrelay.shutWrite(transport)
        peer.shutdown(socket.SHUT_WR)
        self.turnUntil(lambda: protocol.eof)
        fastrelay.close(transport)
        self.assertFalse(transport._shouldShutdown)
        assert protocol.lost is not None
        self.assertIsInstance(protocol.lost.value, error.ConnectionDone)
        self.assertEqual(peer.recv(16), b"")

    def test_closeStillWriting(self) -> None:
        """
        L{fastrelay.close} of a transport whose write side is still open is
        C{loseConnection()}: buffered bytes are written first, then the
        orderly close.
        """
        transport, peer, protocol = self.connected()
        transport.write(b"last words")
        fastrelay.close(transport)
        self.assertTrue(transport._shouldShutdown)
        self.assertIsNone(protocol.lost)
        self.turnUntil(lambda: protocol.lost is not None)
        self.assertEqual(peer.recv(64), b"last words")

    def recordShutdowns(self) -> list[int]:
        """
        Record the C{shutdown()} calls on sockets from now on.
        """
        return recordCalls(self, "shutdown")

    def test_closeDrained(self) -> None:
        """
        L{fastrelay.close} with C{drained=True} of a transport with nothing
        to write closes it at once with no C{shutdown()} at all: the peer
        reads EOF (an orderly FIN, not a reset), the protocol hears
        L{error.ConnectionDone}.
        """
        transport, peer, protocol = self.connected()
        peer.shutdown(socket.SHUT_WR)
        self.turnUntil(lambda: protocol.eof)
        shutdowns = self.recordShutdowns()
        fastrelay.close(transport, drained=True)
        assert protocol.lost is not None
        self.assertIsInstance(protocol.lost.value, error.ConnectionDone)
        self.assertEqual(peer.recv(16), b"")
        self.assertEqual(shutdowns, [])

    def test_closeDrainedStillWriting(self) -> None:
        """
        L{fastrelay.close} with C{drained=True} of a transport with bytes
        buffered writes them first, then closes in order (Twisted's way).
        """
        transport, peer, protocol = self.connected()
        peer.shutdown(socket.SHUT_WR)
        self.turnUntil(lambda: protocol.eof)
        big = os.urandom(8 * 1024 * 1024)
        transport.write(big)
        fastrelay.close(transport, drained=True)
        self.assertIsNone(protocol.lost)
        got = bytearray()

        def gotAll() -> bool:
            while readable(peer):
                data = peer.recv(1 << 20)
                if not data:
                    return True
                got.extend(data)
            return False

        self.turnUntil(gotAll, turns=2000)
        self.assertTrue(bytes(got) == big, "the bytes arrived altered")
        self.turnUntil(lambda: protocol.lost is not None)

    def test_writeNow(self) -> None:
        """
        L{fastrelay.writeNow} puts bytes on the socket before the reactor
        runs; what the socket does not take is buffered by Twisted and
        written later, in order.
        """
        transport, peer, protocol = self.connected()
        fastrelay.writeNow(transport, b"now")
        self.assertEqual(peer.recv(16), b"now")
        big = os.urandom(16 * 1024 * 1024)
        fastrelay.writeNow(transport, big)
        self.assertGreater(transport._tempDataLen + len(transport.dataBuffer), 0)
        got = bytearray()

        def gotAll() -> bool:
            while readable(peer) and len(got) < len(big):
                got.extend(peer.recv(1 << 20))
            return len(got) == len(big)

        self.turnUntil(gotAll, turns=2000)
        self.assertTrue(bytes(got) == big, "the bytes arrived altered")


class WritePreambleIntegrationTests(ReactorTestCase):
    """
    L{fastrelay.writePreamble} writes a preamble to the backend with what the
    client has already sent, in one C{send()}, and never lets a client's
    reset or EOF go unheard.
    """

    # Its tests record calls on the proxy's sockets.
    pythonSockets = True

    def test_withWhatTheClientSent(self) -> None:
        """
        The client's pending bytes follow the preamble in the same segment;
        they are not delivered to the client's protocol; the count returned
        is theirs.
        """
        client, clientPeer, clientProtocol = self.connected()
        backend, backendPeer, _ = self.connected()
        clientPeer.sendall(b"first words")
        sends = recordCalls(self, "send")
        self.assertEqual(fastrelay.writePreamble(client, backend, b"PROXY x\r\n"), 11)
        self.assertEqual(len(sends), 1)
        self.assertEqual(backendPeer.recv(64), b"PROXY x\r\nfirst words")
        self.assertEqual(clientProtocol.received, [])

    def test_nothingSentYet(self) -> None:
        """
        With nothing from the client, the preamble goes alone; what the
        client sends later reaches its protocol.
        """
        client, clientPeer, clientProtocol = self.connected()
        backend, backendPeer, _ = self.connected()
        self.assertEqual(fastrelay.writePreamble(client, backend, b"PROXY x\r\n"), 0)
        self.assertEqual(backendPeer.recv(64), b"PROXY x\r\n")
        clientPeer.sendall(b"later")
        self.turnUntil(lambda: b"".join(clientProtocol.received) == b"later")

    def test_clientEOFStillHeard(self) -> None:
        """
        A client's EOF read with the preamble is heard again by the ordinary
        path: its protocol gets C{readConnectionLost}.
        """
        client, clientPeer, clientProtocol = self.connected()
        backend, backendPeer, _ = self.connected()
        clientPeer.shutdown(socket.SHUT_WR)
        self.assertEqual(fastrelay.writePreamble(client, backend, b"PROXY x\r\n"), 0)
        self.assertEqual(backendPeer.recv(64), b"PROXY x\r\n")
        self.turnUntil(lambda: clientProtocol.eof or clientProtocol.lost is not None)
        self.assertTrue(clientProtocol.eof)

    def test_clientResetIsAReset(self) -> None:
        """
        A client's reset that the read takes ends its connection with an
        error (not a clean EOF); the preamble is still written.
        """
        client, clientPeer, clientProtocol = self.connected()
        backend, backendPeer, _ = self.connected()
        clientPeer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        clientPeer.close()
        self.assertEqual(fastrelay.writePreamble(client, backend, b"PROXY x\r\n"), 0)
        self.assertEqual(backendPeer.recv(64), b"PROXY x\r\n")
        self.turnUntil(lambda: clientProtocol.lost is not None)
        assert clientProtocol.lost is not None
        self.assertFalse(clientProtocol.eof)
        self.assertNotIsInstance(clientProtocol.lost.value, error.ConnectionDone)


class RelayedClassIntegrationTests(ReactorTestCase):
    """
    The transport classes the fast path switches to close as Twisted's do:
    an orderly close sends EOF and tells the protocol and the connector; an
    abort resets the connection.
    """

    def relayed(self) -> tuple[Any, socket.socket, Recording, list[Failure]]:
        transport, peer, protocol = self.connected()
        transport.__class__ = fastrelay._fastClass(type(transport))
        told: list[Failure] = []
        self.patch(fastconnect.Connecting, "connectionLost", lambda connecting, reason: told.append(reason))
        return transport, peer, protocol, told

    def test_orderlyClose(self) -> None:
        """
        C{loseConnection} after a half-close closes at once: the peer reads
        EOF, protocol and connector hear L{error.ConnectionDone}.
        """
        transport, peer, protocol, told = self.relayed()
        fd = transport.fileno()
        fastrelay.shutWrite(transport)
        transport.loseConnection()
        assert protocol.lost is not None
        self.assertIsInstance(protocol.lost.value, error.ConnectionDone)
        self.assertEqual([f.value.__class__ for f in told], [error.ConnectionDone])
        self.assertEqual(peer.recv(16), b"")
        self.assertFalse(hasattr(transport, "socket"))
        self.assertNotWatched(fd)
        self.assertEqual((transport.connected, transport.disconnected), (0, 1))

    def assertNotWatched(self, fd: int) -> None:
        self.assertNotIn(fd, self.reactor._reads)
        self.assertNotIn(fd, self.reactor._writes)
        self.assertNotIn(fd, self.reactor._selectables)

    def test_closeNotWatched(self) -> None:
        """
        A transport the reactor no longer watches (its EOF was read, nothing
        is left to write) closes the same way.
        """
        transport, peer, protocol, told = self.relayed()
        fd = transport.fileno()
        transport.stopReading()
        self.assertNotWatched(fd)
        fastrelay.shutWrite(transport)
        transport.loseConnection()
        assert protocol.lost is not None
        self.assertIsInstance(protocol.lost.value, error.ConnectionDone)
        self.assertEqual(peer.recv(16), b"")
        self.assertNotWatched(fd)
        self.assertEqual((transport.connected, transport.disconnected), (0, 1))

    def test_abortResets(self) -> None:
        """
        C{abortConnection} resets the connection: the peer's next read
        fails with C{ECONNRESET}.
        """
        transport, peer, protocol, told = self.relayed()
        transport.abortConnection()
        self.turnUntil(lambda: protocol.lost is not None)
        assert protocol.lost is not None
        self.assertIsInstance(protocol.lost.value, error.ConnectionAborted)
        self.assertRaises(ConnectionResetError, peer.recv, 16)


class SessionLifetimeIntegrationTests(ReactorTestCase):
    """
    A finished session leaves no reference cycle behind: reference counting
    frees it, its protocols and its transports at once, without the cyclic
    garbage collector.
    """

    def test_freedWithoutCollector(self) -> None:
        """
        With the collector off, a session relayed to its end through real
        sockets is gone as soon as it finished, and so are both transports.
        """
        server = self.listenTCP()
        factory, listening = self.proxy(server)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        client = socket.create_connection(("127.0.0.1", listening.getHost().port))
        self.addCleanup(client.close)
        self.turnUntil(lambda: bool(factory.sessions.open))
        [session] = factory.sessions.open
        refs = [weakref.ref(session)]
        del session
        self.turnUntil(lambda: readable(server))
        peer, _ = server.accept()
        self.addCleanup(peer.close)
        self.turnUntil(lambda: refs[0]().backendTransport is not None)  # type: ignore[union-attr]
        live = refs[0]()
        assert live is not None
        refs += [weakref.ref(live.clientTransport), weakref.ref(live.backendTransport)]
        del live
        client.sendall(b"ping")
        self.turnUntil(lambda: readable(peer))
        peer.sendall(peer.recv(16))
        self.turnUntil(lambda: readable(client))
        self.assertEqual(client.recv(16), b"ping")
        client.shutdown(socket.SHUT_WR)
        self.turnUntil(lambda: readable(peer))
        self.assertEqual(peer.recv(16), b"")
        peer.close()
        self.turnUntil(lambda: not factory.sessions.open)
        self.assertEqual([ref() for ref in refs], [None, None, None])


class SessionCloseIntegrationTests(ReactorTestCase):
    """
    A session whose two sides both sent EOF, in either order, ends once the
    second EOF is handled: with nothing held for either side, both are
    closed at once, and the side not half-closed yet gets its FIN from
    C{close()}, with no C{shutdown()} of its own; the first EOF's
    half-close was the session's only C{shutdown()}.
    """

    # Its tests record calls on the proxy's sockets.
    pythonSockets = True

    def session(self) -> tuple[Any, Any, socket.socket, socket.socket]:
        """
        A proxy on a private reactor relaying a loopback client to a
        loopback backend: (factory, session, client socket, backend socket).
        """
        server = self.listenTCP()
        factory, listening = self.proxy(server)
        client = socket.create_connection(("127.0.0.1", listening.getHost().port))
        self.addCleanup(client.close)
        self.turnUntil(lambda: bool(factory.sessions.open))
        [session] = factory.sessions.open
        self.turnUntil(lambda: readable(server))
        peer, _ = server.accept()
        self.addCleanup(peer.close)
        self.turnUntil(lambda: session.backendTransport is not None)
        self.tests = {server.fileno(), client.fileno(), peer.fileno()}
        return factory, session, client, peer

    def proxyShutdowns(self) -> list[int]:
        """
        Record the C{shutdown()} calls on the proxy's sockets from now on.
        """
        return recordCalls(self, "shutdown", lambda sock: sock.fileno() not in self.tests)

    def test_clientFirst(self) -> None:
        """
        Client EOF, then backend EOF: the backend's write side was shut by
        the first; the second ends the session at once, the client's side
        closed without a C{shutdown()}; both peers read EOF.
        """
        factory, session, client, peer = self.session()
        client.shutdown(socket.SHUT_WR)
        self.turnUntil(lambda: session.clientDone)
        peer.settimeout(5)
        self.assertEqual(peer.recv(64), b"")
        shutdowns = self.proxyShutdowns()
        peer.sendall(b"response")
        peer.shutdown(socket.SHUT_WR)
        self.turnUntil(lambda: session.finished)
        self.assertEqual(shutdowns, [])
        client.settimeout(5)
        self.assertEqual(recvAll(client), b"response")

    def test_backendFirst(self) -> None:
        """
        Backend EOF (a server that closes first), then client EOF: the same.
        """
        factory, session, client, peer = self.session()
        peer.sendall(b"response")
        peer.shutdown(socket.SHUT_WR)
        self.turnUntil(lambda: session.backendDone)
        client.settimeout(5)
        self.assertEqual(recvAll(client), b"response")
        shutdowns = self.proxyShutdowns()
        client.sendall(b"late")
        client.shutdown(socket.SHUT_WR)
        self.turnUntil(lambda: session.finished)
        self.assertEqual(shutdowns, [])
        peer.settimeout(5)
        self.assertEqual(recvAll(peer), b"late")


def recvAll(sock: socket.socket) -> bytes:
    """
    What C{sock} receives until EOF (within its timeout).
    """
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


class StaleEventTests(SynchronousTestCase):
    """
    L{EPollReactor} drops an event of a batch for a descriptor that an
    earlier event of the same batch unregistered.
    """

    def test_unregisteredInBatch(self) -> None:
        """
        Two readable descriptors whose handlers each replace the other's
        reader with a new one on the same descriptor number (as when a
        socket is closed and its number given to a new one): in one batch
        only the first handled runs, and the new reader does not get the
        old reader's event.
        """
        reactor = privateReactor(self)
        pairs = socketPairs(self, 2)
        ran: list[str] = []

        class Reader:
            def __init__(self, index: int, name: str) -> None:
                self.index = index
                self.name = name

            def fileno(self) -> int:
                return pairs[self.index][0].fileno()

            def doRead(self) -> None:
                ran.append(self.name)
                pairs[self.index][0].recv(16)
                other = 1 - self.index
                reactor.removeReader(readers[other])  # type: ignore[arg-type]
                readers[other] = Reader(other, f"new {other}")
                reactor.addReader(readers[other])  # type: ignore[arg-type]

            def logPrefix(self) -> str:
                return "reader"

        readers = [Reader(0, "old 0"), Reader(1, "old 1")]
        for reader in readers:
            reactor.addReader(reader)  # type: ignore[arg-type]
        for _, b in pairs:
            b.send(b"x")
        reactor.doIteration(1.0)
        self.assertEqual(len(ran), 1)
        self.assertTrue(ran[0].startswith("old"))
        for reader in readers:
            reactor.removeReader(reader)  # type: ignore[arg-type]

    def test_errorDoesNotStopBatch(self) -> None:
        """
        A handler that raises is logged, and the other events of the batch
        are still handled.
        """
        reactor = privateReactor(self)
        pairs = socketPairs(self, 2)
        ran: list[int] = []

        class Broken:
            def __init__(self, index: int) -> None:
                self.index = index

            def fileno(self) -> int:
                return pairs[self.index][0].fileno()

            def doRead(self) -> None:
                ran.append(self.index)
                pairs[self.index][0].recv(16)
                reactor.removeReader(self)  # type: ignore[arg-type]

            def connectionLost(self, reason: Failure) -> None:
                raise RuntimeError("connectionLost broke")

            def logPrefix(self) -> str:
                return "broken"

        readers = [Broken(0), Broken(1)]

        def doReadThenFail(self: Any) -> Any:
            Broken.doRead(self)
            return error.ConnectionLost()

        for reader in readers:
            reader.doRead = doReadThenFail.__get__(reader)  # type: ignore[method-assign]
            reactor.addReader(reader)  # type: ignore[arg-type]
        for _, b in pairs:
            b.send(b"x")
        reactor.doIteration(1.0)
        self.assertEqual(sorted(ran), [0, 1])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


class ReactorTests(SynchronousTestCase):
    """
    L{txsockproxy._fast.reactor}: the epoll reactor without a logging context per
    event, installed only when no reactor is.
    """

    def test_noLogContextPerEvent(self) -> None:
        """
        I/O events are dispatched without C{callWithLogger}.
        """
        from twisted.python import log

        calls: list[Any] = []
        self.patch(log, "callWithLogger", lambda *a, **k: calls.append(a))
        reactor = privateReactor(self)
        [(a, b)] = socketPairs(self, 1)
        seen: list[bytes] = []

        class Reader:
            def fileno(self) -> int:
                return a.fileno()

            def doRead(self) -> None:
                seen.append(a.recv(16))

            def logPrefix(self) -> str:
                return "reader"

        reader = Reader()
        reactor.addReader(reader)  # type: ignore[arg-type]
        b.send(b"x")
        for _ in range(100):
            if seen:
                break
            reactor.doIteration(0.05)
        reactor.removeReader(reader)  # type: ignore[arg-type]
        self.assertEqual(seen, [b"x"])
        self.assertEqual(calls, [])

    def readable(self) -> tuple[EPollReactor, socket.socket, Any]:
        """
        A reactor, the peer of a socket pair, and a recording reader of the
        other end, registered.
        """
        reactor = privateReactor(self)
        [(a, b)] = socketPairs(self, 1)

        @implementer(IHalfCloseableDescriptor)
        class Reader:
            def __init__(self) -> None:
                self.result: Any = None
                self.lost: list[tuple[str, Any]] = []

            def fileno(self) -> int:
                return a.fileno()

            def doRead(self) -> Any:
                a.recv(16)
                if isinstance(self.result, Exception) and not isinstance(self.result, error.ConnectionDone):
                    raise self.result
                return self.result

            def readConnectionLost(self, reason: Failure) -> None:
                self.lost.append(("read", reason.value))

            def writeConnectionLost(self, reason: Failure) -> None:
                pass

            def connectionLost(self, reason: Failure) -> None:
                self.lost.append(("all", reason.value))

            def logPrefix(self) -> str:
                return "reader"

        reader = Reader()
        reactor.addReader(reader)  # type: ignore[arg-type]
        return reactor, b, reader

    def turn(self, reactor: EPollReactor, reader: Any) -> None:
        for _ in range(100):
            if reader.lost:
                return
            reactor.doIteration(0.05)

    def test_readEOFIsHalfClose(self) -> None:
        """
        A read event whose C{doRead} reports EOF reaches a half-closeable
        descriptor as C{readConnectionLost}, as Twisted's dispatch does.
        """
        reactor, peer, reader = self.readable()
        reader.result = error.ConnectionDone()
        peer.send(b"x")
        self.turn(reactor, reader)
        self.assertEqual([kind for kind, _ in reader.lost], ["read"])

    def test_readErrorLosesConnection(self) -> None:
        """
        A C{doRead} that raises is logged and loses the connection with that
        error.
        """
        reactor, peer, reader = self.readable()
        reader.result = ValueError("broken")
        peer.send(b"x")
        self.turn(reactor, reader)
        self.assertEqual([(kind, type(why)) for kind, why in reader.lost], [("all", ValueError)])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_installDefaultLeavesInstalledReactor(self) -> None:
        """
        When a reactor is installed already (here: the test runner's),
        L{installReactor} changes nothing.
        """
        from twisted.internet import reactor

        self.assertIsNone(installReactor())
        from twisted.internet import reactor as after

        self.assertIs(after, reactor)


def epollMasks(reactor: Any) -> dict[int, int]:
    """
    What C{reactor}'s epoll instance watches: descriptor -> event mask, as
    Linux reports it in /proc/self/fdinfo.
    """
    masks = {}
    with open(f"/proc/self/fdinfo/{reactor._poller.fileno()}") as info:
        for line in info:
            if line.startswith("tfd:"):
                fields = line.split()
                masks[int(fields[1])] = int(fields[3], 16) & 0xFFFF
    return masks


class RegistrationTests(SynchronousTestCase):
    """
    L{EPollReactor}'s own C{addReader}/C{addWriter}/C{removeReader}/
    C{removeWriter} keep the same books and the same epoll registrations as
    Twisted's, for any sequence of calls; C{addReaderAndWriter} as Twisted's
    C{addReader} then C{addWriter}.
    """

    @given(st.lists(st.tuples(st.sampled_from(["addReader", "addWriter", "removeReader", "removeWriter",
                                               "addReaderAndWriter"]),
                              st.integers(0, 2)), max_size=40))
    @settings(max_examples=60, deadline=None)
    def test_sameAsTwisted(self, calls: list[tuple[str, int]]) -> None:
        """
        After every call, both reactors read and write the same
        descriptors, map them to the same objects, and epoll watches them
        for the same events.
        """
        from twisted.internet.epollreactor import EPollReactor as TwistedEPollReactor

        sockets = [socket.socketpair() for _ in range(3)]

        class Selectable:
            def __init__(self, sock: socket.socket) -> None:
                self.sock = sock

            def fileno(self) -> int:
                return self.sock.fileno()

            def logPrefix(self) -> str:
                return "selectable"

        selectables = [Selectable(a) for a, _ in sockets]

        def books(reactor: Any) -> tuple[Any, ...]:
            # Each reactor has a waker of its own: leave it out.
            waker = reactor.waker.fileno()
            return (
                reactor._reads - {waker},
                reactor._writes - {waker},
                {fd: s for fd, s in reactor._selectables.items() if fd != waker},
                {fd: m for fd, m in epollMasks(reactor).items() if fd != waker},
            )

        ours, theirs = EPollReactor(), TwistedEPollReactor()
        try:
            for method, which in calls:
                if method == "addReaderAndWriter":
                    ours.addReaderAndWriter(selectables[which])
                    theirs.addReader(selectables[which])
                    theirs.addWriter(selectables[which])
                else:
                    for reactor in (ours, theirs):
                        getattr(reactor, method)(selectables[which])
                self.assertEqual(books(ours), books(theirs))
        finally:
            for reactor in (ours, theirs):
                reactor.waker.connectionLost(None)
                reactor._poller.close()
            for a, b in sockets:
                a.close()
                b.close()


class MainLoopTests(SynchronousTestCase):
    """
    L{EPollReactor.mainLoop}: Twisted's main loop, with timed calls run only
    when due.  Each test runs a private reactor whose polls are counted: past
    C{TURNS} turns the loop is stopped, so a broken loop fails, not hangs.
    """

    TURNS = 200

    def running(self) -> tuple[EPollReactor, list[Optional[float]]]:
        """
        A private reactor whose C{doPoll} records its timeout (and waits at
        most 50 ms), and the list it records to.
        """
        reactor = privateReactor(self)
        timeouts: list[Optional[float]] = []
        doPoll = reactor.doPoll

        def recordingPoll(timeout: Optional[float]) -> None:
            timeouts.append(timeout)
            if len(timeouts) >= self.TURNS:
                reactor._started = False
                return
            doPoll(0.05 if timeout is None or timeout > 0.05 else timeout)

        reactor.doPoll = recordingPoll  # type: ignore[method-assign]
        return reactor, timeouts

    def runReactor(self, reactor: EPollReactor) -> None:
        """
        Run C{reactor} until it stops (or the turns run out).
        """
        reactor.run(installSignalHandlers=False)

    def test_timedCallsRunWhenDue(self) -> None:
        """
        Timed calls run once due, in order of their times; one stops the
        reactor, and the loop ends.
        """
        reactor, timeouts = self.running()
        ran: list[str] = []
        reactor.callLater(0.02, lambda: (ran.append("later"), reactor.stop()))
        reactor.callLater(0, ran.append, "now")
        self.runReactor(reactor)
        self.assertEqual(ran, ["now", "later"])
        self.assertLess(len(timeouts), self.TURNS)

    def firstWait(self, delays: list[float]) -> Optional[float]:
        """
        How long the second poll of a reactor with calls pending after
        C{delays} seconds may wait (the first turn takes in new calls, as
        Twisted's does; the second is the usual case).
        """
        reactor = privateReactor(self)
        calls = [reactor.callLater(delay, lambda: None) for delay in delays]
        waits: list[Optional[float]] = []

        def poll(timeout: Optional[float]) -> None:
            waits.append(timeout)
            if len(waits) == 2:
                reactor._started = False

        reactor.doPoll = poll  # type: ignore[method-assign]
        self.runReactor(reactor)
        for call in calls:
            call.cancel()
        return waits[1]

    def test_pollWaitsForNextTimedCall(self) -> None:
        """
        With timed calls pending, the poll waits until the first is due.
        """
        wait = self.firstWait([300, 100])
        assert wait is not None
        self.assertTrue(90 < wait <= 100, wait)

    def test_pollWaitsAtMostTwistedsLimit(self) -> None:
        """
        A timed call further than Twisted's limit (2147483 seconds, what
        epoll_wait takes) makes the poll wait that long.
        """
        self.assertEqual(self.firstWait([10**9]), 2147483)

    def test_pollWaitsIndefinitely(self) -> None:
        """
        With no timed call pending, the poll waits indefinitely (L{None}).
        """
        self.assertIsNone(self.firstWait([]))

    def test_callFromThread(self) -> None:
        """
        A call from another thread runs in the loop (the poll is woken).
        """
        import threading

        reactor, timeouts = self.running()
        ran: list[str] = []

        def fromThread() -> None:
            ran.append("called")
            reactor.stop()

        thread = threading.Thread(target=reactor.callFromThread, args=(fromThread,))
        reactor.callWhenRunning(thread.start)
        self.runReactor(reactor)
        thread.join(5)
        self.assertEqual(ran, ["called"])
        self.assertLess(len(timeouts), self.TURNS)

    def test_errorInTurnLoggedLoopGoesOn(self) -> None:
        """
        An exception out of a turn is logged as Twisted's loop logs it, and
        the loop goes on.
        """
        reactor, timeouts = self.running()
        recordingPoll = reactor.doPoll
        failed: list[bool] = []

        def failOnce(timeout: Optional[float]) -> None:
            if not failed:
                failed.append(True)
                raise RuntimeError("turn broke")
            recordingPoll(timeout)

        reactor.doPoll = failOnce  # type: ignore[method-assign]
        reactor.callLater(0.01, reactor.stop)
        self.runReactor(reactor)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertLess(len(timeouts), self.TURNS)

    def test_cancelledCallsSwept(self) -> None:
        """
        Many calls cancelled by I/O handlers (outside the timed calls) are
        swept from the heap though none is due, as Twisted's
        C{runUntilCurrent} does.
        """
        reactor = privateReactor(self)
        keep = reactor.callLater(1000, lambda: None)
        calls = [reactor.callLater(1000 + i, lambda: None) for i in range(200)]
        self.addCleanup(keep.cancel)
        sizes: list[int] = []

        def poll(timeout: Optional[float]) -> None:
            sizes.append(len(reactor._pendingTimedCalls))
            if len(sizes) == 1:
                for call in calls:
                    call.cancel()
            else:
                reactor._started = False

        reactor.doPoll = poll  # type: ignore[method-assign]
        self.runReactor(reactor)
        self.assertEqual(sizes, [201, 1])


class RelayStandIn:
    """
    What L{EPollReactor.relays} holds: the transport read, and a C{doRead}.
    """

    def __init__(self, source: Any, doRead: Any) -> None:
        self.source = source
        self.doRead = doRead


class RelayDispatchTests(SynchronousTestCase):
    """
    A plain read event of a descriptor in L{EPollReactor.relays} goes to the
    relay, not to the transport's C{doRead}, while that transport is the one
    registered and reading.
    """

    def setUp(self) -> None:
        self.reactor = privateReactor(self)
        [(self.a, self.b)] = socketPairs(self, 1)
        self.calls: list[str] = []
        calls = self.calls
        a = self.a

        class Transport:
            def fileno(self) -> int:
                return a.fileno()

            def doRead(self) -> None:
                calls.append("transport")
                a.recv(16)

            def logPrefix(self) -> str:
                return "transport"

        self.transport = Transport()
        self.reactor.addReader(self.transport)  # type: ignore[arg-type]
        self.addCleanup(self.reactor.removeReader, self.transport)

    def relayRead(self) -> None:
        self.calls.append("relay")
        self.a.recv(16)

    def test_toTheRelay(self) -> None:
        """
        The relay's C{doRead} runs, the transport's does not.
        """
        self.reactor.relays[self.a.fileno()] = RelayStandIn(self.transport, self.relayRead)
        self.b.send(b"x")
        self.reactor.doPoll(1.0)
        self.assertEqual(self.calls, ["relay"])

    def test_staleEntry(self) -> None:
        """
        An entry naming another transport (one closed, whose descriptor
        number this one now has) is ignored: the transport reads.
        """
        self.reactor.relays[self.a.fileno()] = RelayStandIn(object(), self.relayRead)
        self.b.send(b"x")
        self.reactor.doPoll(1.0)
        self.assertEqual(self.calls, ["transport"])

    def test_notReading(self) -> None:
        """
        A transport registered for writing only (it stopped reading) does
        not have its relay read by a read event left in the batch.
        """
        self.reactor.relays[self.a.fileno()] = RelayStandIn(self.transport, self.relayRead)
        self.reactor.removeReader(self.transport)  # type: ignore[arg-type]
        self.reactor.addWriter(self.transport)  # type: ignore[arg-type]
        self.addCleanup(self.reactor.removeWriter, self.transport)
        real = self.reactor._poller
        fd = self.a.fileno()

        class OneEvent:
            def poll(self, timeout: float, most: int) -> list[tuple[int, int]]:
                return [(fd, select.EPOLLIN)]

        self.b.send(b"x")
        self.reactor._poller = OneEvent()  # type: ignore[assignment]
        try:
            self.reactor.doPoll(0)
        finally:
            self.reactor._poller = real
        self.assertEqual(self.calls, ["transport"])


class DispatchTests(SynchronousTestCase):
    """
    L{EPollReactor.doPoll} handles each event as Twisted's
    C{_doReadOrWrite} does, for every mix of event bits and every outcome of
    C{doRead}/C{doWrite}, whether it handles it inline or not, and whether
    or not a relay takes the descriptor's reads (L{EPollReactor.relays}).
    """

    @given(
        st.sets(st.sampled_from(["IN", "OUT", "HUP", "ERR", "RDHUP"]), min_size=1),
        st.sampled_from([None, "done", "lost", "raise"]),
        st.sampled_from([None, "done", "lost", "raise"]),
        st.booleans(),
        st.booleans(),
    )
    @settings(max_examples=200, deadline=None)
    def test_sameAsTwisted(self, bits: set[str], readResult: Optional[str],
                           writeResult: Optional[str], writing: bool, relayed: bool) -> None:
        """
        One event, dispatched by C{doPoll} and by Twisted's
        C{_doReadOrWrite}: the same calls on the descriptor, in the same
        order, and the same registrations afterwards.  With C{relayed}, a
        relay whose C{doRead} is the descriptor's takes its reads in
        C{doPoll}: the outcome is the same.
        """
        import select as selectModule

        masks = {"IN": selectModule.EPOLLIN, "OUT": selectModule.EPOLLOUT,
                 "HUP": selectModule.EPOLLHUP, "ERR": selectModule.EPOLLERR,
                 "RDHUP": selectModule.EPOLLRDHUP}
        event = 0
        for bit in bits:
            event |= masks[bit]
        outcomes = {None: None, "done": error.ConnectionDone(), "lost": error.ConnectionLost()}

        def run(inline: bool) -> tuple[list[str], bool, bool]:
            reactor = privateReactor(self)
            [(a, b)] = socketPairs(self, 1)
            calls: list[str] = []

            @implementer(IHalfCloseableDescriptor)
            class Descriptor:
                def fileno(self) -> int:
                    return a.fileno()

                def outcome(self, name: str, result: Optional[str]) -> Any:
                    calls.append(name)
                    if result == "raise":
                        raise ValueError(name)
                    return outcomes[result]

                def doRead(self) -> Any:
                    return self.outcome("doRead", readResult)

                def doWrite(self) -> Any:
                    return self.outcome("doWrite", writeResult)

                def readConnectionLost(self, reason: Failure) -> None:
                    calls.append(f"readConnectionLost {type(reason.value).__name__}")

                def writeConnectionLost(self, reason: Failure) -> None:
                    calls.append("writeConnectionLost")

                def connectionLost(self, reason: Failure) -> None:
                    calls.append(f"connectionLost {type(reason.value).__name__}")

                def logPrefix(self) -> str:
                    return "descriptor"

            descriptor = Descriptor()
            reactor.addReader(descriptor)  # type: ignore[arg-type]
            if writing:
                reactor.addWriter(descriptor)  # type: ignore[arg-type]
            fd = a.fileno()
            if relayed and inline:
                reactor.relays[fd] = RelayStandIn(descriptor, descriptor.doRead)
            if inline:
                real = reactor._poller

                class OneEvent:
                    def poll(self, timeout: float, most: int) -> list[tuple[int, int]]:
                        return [(fd, event)]

                    def __getattr__(self, name: str) -> Any:
                        return getattr(real, name)

                reactor._poller = OneEvent()  # type: ignore[assignment]
                reactor.doPoll(0)
                reactor._poller = real
            else:
                reactor._doReadOrWrite(descriptor, fd, event)
            self.flushLoggedErrors(ValueError)
            registered = (fd in reactor._reads, fd in reactor._writes)
            reactor.removeReader(descriptor)  # type: ignore[arg-type]
            reactor.removeWriter(descriptor)  # type: ignore[arg-type]
            return (calls, *registered)

        self.assertEqual(run(inline=True), run(inline=False))
