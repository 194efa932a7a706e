"""
Tests for L{txsockproxy._fast.relay}: unit tests of L{Relay} over real socket
pairs with a fake transport around each end, and loopback integration tests
of C{twistd sockproxy} in each fast-path mode.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import threading
from typing import Any

from twisted.internet import error, main
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.accelerator.reactor_support import privateReactor
from tests.fakes import HalfCloseTransport
from tests.integration_support import (
    LOOPBACK,
    Deadline,
    Server,
    boundPort,
    connect,
    exchange,
    proxyConfig,
    recvAll,
    recvExactly,
)
from tests.test_integration import _IntegrationTestCase
from txsockproxy._fast import connect as fastconnect
from txsockproxy._fast import relay as fastrelay

MiB = 1024 * 1024


class FakeSocketTransport:
    """
    The parts of a Twisted socket transport that L{fastrelay.Relay} uses,
    around a real non-blocking socket.

    @ivar written: bytes given to C{write()} (Twisted's buffer).
    @ivar reading: whether the reactor would read this transport.
    @ivar writing: whether the reactor would call C{doWrite}.
    @ivar ownWrites: how often the class's own C{doWrite} ran.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.socket = sock
        self.connected = True
        self.disconnecting = False
        self._writeDisconnecting = False
        self._writeDisconnected = False
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.written: list[bytes] = []
        self.reading = True
        self.writing = False
        self.ownWrites = 0
        self.disconnected = False
        self._aborting = False
        self.reactor = Clock()
        self.lost: list[Any] = []

    def fileno(self) -> int:
        return self.socket.fileno()

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self._tempDataLen += len(data)

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True

    def startWriting(self) -> None:
        self.writing = True

    def stopWriting(self) -> None:
        self.writing = False

    def connectionLost(self, reason: Any) -> None:
        self.disconnected = True
        self.lost.append(reason)

    def doWrite(self) -> None:
        self.ownWrites += 1
        self.writing = False


def pair() -> tuple[socket.socket, FakeSocketTransport]:
    """
    A connected socket pair: the outer end (a peer) and a transport around
    the inner end.
    """
    outer, inner = socket.socketpair()
    return outer, FakeSocketTransport(inner)


def drain(sock: socket.socket, size: int, seconds: float = 10.0) -> bytes:
    """
    Read exactly C{size} bytes from C{sock} under a deadline.
    """
    return recvExactly(sock, size, Deadline(seconds, "reading the sink's peer"))


def fillSocket(sock: socket.socket) -> int:
    """
    Write to C{sock} until its buffers are full; return how much went in.
    """
    sock.setblocking(False)
    chunk = b"\0" * 65536
    total = 0
    while True:
        try:
            total += sock.send(chunk)
        except BlockingIOError:
            return total


class Counters:
    """
    A backend's byte counters.
    """

    def __init__(self) -> None:
        self.bytesIn = self.bytesOut = 0


class Recorder:
    """
    The session side of a relay: the ordinary path and the counters it
    keeps (see L{txsockproxy.interfaces.IRelayPath.join}).
    """

    def __init__(self, sink: FakeSocketTransport) -> None:
        self.sink = sink
        self.ordinary: list[bytes] = []
        self.bytesFromClient = self.bytesFromBackend = 0
        self.backend = Counters()
        self.inactivityTimeout = 0.0
        self.lastActivity = 0.0
        self.clock = Clock()
        self.paused: list[bool] = []
        self.resumed: list[bool] = []

    @property
    def counted(self) -> int:
        """
        What the relay counted of the client's bytes, in the session's count
        and the backend's (always the same).
        """
        assert self.backend.bytesOut == self.bytesFromClient
        assert (self.bytesFromBackend, self.backend.bytesIn) == (0, 0)
        return self.bytesFromClient

    def fromClient(self, data: bytes) -> None:
        self.ordinary.append(data)
        self.sink.write(data)

    def sidePaused(self, client: bool) -> None:
        self.paused.append(client)

    def sideResumed(self, client: bool) -> None:
        self.resumed.append(client)


class RelayTestsMixin:
    """
    Behaviour shared by both modes.
    """

    mode = "copy"

    def setUp(self) -> None:
        self.sourcePeer, self.source = pair()
        self.sinkPeer, self.sink = pair()
        for s in (self.sourcePeer, self.sinkPeer, self.source.socket, self.sink.socket):
            self.addCleanup(s.close)  # type: ignore[attr-defined]
        self.session = Recorder(self.sink)
        self.relay = fastrelay.Relay(self.source, self.sink, self.session, True, self.mode)
        self.addCleanup(self.relay.closePipe)  # type: ignore[attr-defined]

    def pump(self, limit: int = 10000) -> None:
        """
        Run the relay's reads (and the sink's writes) as a reactor would,
        while the source's socket is readable.
        """
        for _ in range(limit):
            if self.sink.writing:
                self.sink.doWrite()
            readable, _, _ = select.select([self.source.socket], [], [], 0)
            if not readable or not self.source.reading:
                return
            result = self.relay.doRead()
            if result is not None:
                self.result = result
                return
        raise AssertionError("the relay never caught up")

    def test_relaysBytesExactly(self: Any) -> None:
        """
        Bytes written by the source's peer arrive at the sink's peer
        unchanged, straight from C{doRead}, and are counted.
        """
        payload = os.urandom(100_000)
        self.sourcePeer.sendall(payload)
        self.pump()
        self.assertEqual(drain(self.sinkPeer, len(payload)), payload)
        self.assertEqual(self.session.counted, len(payload))
        self.assertEqual(self.session.ordinary, [])
        self.assertEqual(self.sink.written, [])

    def test_activity(self: Any) -> None:
        """
        While the session has an inactivity timeout, a read relayed on the
        fast path sets its C{lastActivity} to the clock's time; without
        one, the time is left alone.
        """
        self.session.clock.advance(5)
        self.sourcePeer.sendall(b"x")
        self.pump()
        self.assertEqual(self.session.lastActivity, 0.0)
        self.session.inactivityTimeout = 60.0
        self.sourcePeer.sendall(b"y")
        self.pump()
        self.assertEqual(self.session.lastActivity, 5.0)
        self.assertEqual(self.session.counted, 2)

    def test_countsDown(self: Any) -> None:
        """
        Bytes relayed from the backend count in the session's
        C{bytesFromBackend} and the backend's C{bytesIn}.
        """
        self.relay.up = False
        self.sourcePeer.sendall(b"reply")
        self.pump()
        self.assertEqual(drain(self.sinkPeer, 5), b"reply")
        self.assertEqual(
            (self.session.bytesFromBackend, self.session.backend.bytesIn), (5, 5)
        )
        self.assertEqual((self.session.bytesFromClient, self.session.backend.bytesOut), (0, 0))

    def test_manyChunksInOrder(self: Any) -> None:
        """
        Chunks of all sizes, small and above the splice threshold, arrive in
        order and complete.
        """
        chunks = [os.urandom(n) for n in (1, 7, 70_000, 3, 120_000, 64, 65_536, 5)]
        got = []
        for chunk in chunks:
            self.sourcePeer.sendall(chunk)
            self.pump()
            got.append(drain(self.sinkPeer, len(chunk)))
        self.assertEqual(got, chunks)
        self.assertEqual(self.session.counted, sum(map(len, chunks)))

    def test_eof(self: Any) -> None:
        """
        The source's EOF is returned as C{CONNECTION_DONE}, as Twisted's own
        C{doRead} returns it, after every byte before it was relayed.
        """
        self.sourcePeer.sendall(b"last words")
        self.sourcePeer.shutdown(socket.SHUT_WR)
        self.pump()
        self.assertIs(self.result, main.CONNECTION_DONE)
        self.assertEqual(drain(self.sinkPeer, 10), b"last words")

    def test_nothingToRead(self: Any) -> None:
        """
        A spurious wake-up reads nothing and reports nothing.
        """
        self.assertIsNone(self.relay.doRead())
        self.assertEqual(self.session.counted, 0)

    def test_resetIsConnectionLost(self: Any) -> None:
        """
        An error reading the source is returned as C{CONNECTION_LOST}.
        """
        self.source.socket.close()
        self.assertIs(self.relay.doRead(), main.CONNECTION_LOST)

    def assertSinkLostByError(self: Any) -> None:
        """
        The sink was reported lost by an error (C{ConnectionLost}, not
        C{ConnectionDone}) in the reactor's next turn, and is neither read
        nor written until then.
        """
        self.assertEqual(self.sink.lost, [])
        self.assertFalse(self.sink.reading)
        self.assertFalse(self.sink.writing)
        self.sink.reactor.advance(0)
        self.assertEqual(len(self.sink.lost), 1)
        self.assertIsInstance(self.sink.lost[0].value, error.ConnectionLost)

    def test_sinkErrorIsSinkLost(self: Any) -> None:
        """
        When sending to the sink fails (its peer is gone), the sink is
        reported lost by an error at once: that send took the socket's
        error, and a later read of the sink would find a clean EOF.
        """
        self.sinkPeer.close()
        self.sourcePeer.sendall(b"x" * 1000)
        self.assertIsNone(self.relay.doRead())
        self.assertSinkLostByError()

    def test_sinkLostOnce(self: Any) -> None:
        """
        A sink already reported lost (or aborted) is not reported again.
        """
        self.sinkPeer.close()
        self.sink._aborting = True
        self.sourcePeer.sendall(b"x" * 1000)
        self.relay.doRead()
        self.sink.reactor.advance(0)
        self.assertEqual(self.sink.lost, [])

    def test_busySinkTakesOrdinaryPath(self: Any) -> None:
        """
        While the sink's transport holds buffered bytes, a read goes the
        ordinary way (to the session, then C{write()}), behind them.
        """
        self.sink.write(b"queued")
        self.sourcePeer.sendall(b"x" * 100_000)
        self.pump()
        self.assertEqual(b"".join(self.session.ordinary), b"x" * 100_000)
        self.assertEqual(self.session.counted, 0)

    def test_closingSinkTakesOrdinaryPath(self: Any) -> None:
        """
        A sink that is closing or half-closed is written through Twisted.
        """
        for attribute in ("disconnecting", "_writeDisconnecting", "_writeDisconnected"):
            setattr(self.sink, attribute, True)
            self.sourcePeer.sendall(attribute.encode())
            self.pump()
            setattr(self.sink, attribute, False)
        self.assertEqual(
            b"".join(self.session.ordinary),
            b"disconnecting_writeDisconnecting_writeDisconnected",
        )


class CopyRelayTests(RelayTestsMixin, SynchronousTestCase):
    """
    L{fastrelay.Relay} in C{copy} mode.
    """

    mode = "copy"

    def test_fullSinkBuffersInTwisted(self) -> None:
        """
        What the sink's socket does not take goes to the sink transport's
        buffer (so Twisted's producer machinery pauses the source), in order.
        """
        fillSocket(self.sink.socket)
        payload = os.urandom(200_000)
        self.sourcePeer.sendall(payload)
        self.relay.doRead()
        buffered = b"".join(self.sink.written)
        self.assertTrue(buffered)
        self.assertTrue(payload.endswith(buffered))
        self.assertEqual(self.session.counted, fastrelay.READ_SIZE if len(payload) > fastrelay.READ_SIZE else len(payload))

    def test_bufferedBytesOutliveTheNextRead(self) -> None:
        """
        Reads share one buffer: what the sink's socket did not take, handed to
        the sink transport, and what takes the ordinary path, are copies that
        later reads do not overwrite.
        """
        fillSocket(self.sink.socket)
        first = b"a" * 1000
        self.sourcePeer.sendall(first)
        self.relay.doRead()
        second = b"b" * 1000
        self.sourcePeer.sendall(second)
        self.relay.doRead()
        self.assertEqual(b"".join(self.sink.written), first + second)
        self.assertEqual(b"".join(self.session.ordinary), second)


class RegisteredTransport(FakeSocketTransport):
    """
    A fake transport on txsockproxy's reactor: writing (or having something
    to write) registers it for writing there, as Twisted's transports do.
    """

    def __init__(self, sock: socket.socket, reactor: Any) -> None:
        super().__init__(sock)
        self.reactor = reactor

    def write(self, data: bytes) -> None:
        super().write(data)
        self.startWriting()

    def startWriting(self) -> None:
        super().startWriting()
        self.reactor._writes.add(self.fileno())

    def stopWriting(self) -> None:
        super().stopWriting()
        self.reactor._writes.discard(self.fileno())


class OwnReactorRelayTests(SynchronousTestCase):
    """
    On txsockproxy's reactor, L{fastrelay.Relay} tells whether the sink can
    take bytes at once from the reactor's registrations: a sink registered
    for writing (bytes buffered, a close or half-close under way) gets them
    through the ordinary path.
    """

    def setUp(self) -> None:
        self.reactor = privateReactor(self)
        self.sourcePeer, source = socket.socketpair()
        self.sinkPeer, sink = socket.socketpair()
        for s in (self.sourcePeer, self.sinkPeer, source, sink):
            self.addCleanup(s.close)
        self.source = RegisteredTransport(source, self.reactor)
        self.sink = RegisteredTransport(sink, self.reactor)
        self.session = Recorder(self.sink)  # type: ignore[arg-type]
        self.relay = fastrelay.Relay(self.source, self.sink, self.session, True, "copy")

    def test_usesTheReactorsRegistrations(self) -> None:
        """
        The relay keeps the reactor's set of descriptors watched for writing.
        """
        self.assertIs(self.relay.writes, self.reactor._writes)
        self.assertIs(self.relay.relays, self.reactor.relays)

    def test_relaysWhenSinkIdle(self) -> None:
        """
        A sink not registered for writing takes the bytes straight.
        """
        self.sourcePeer.sendall(b"hello")
        self.relay.doRead()
        self.assertEqual(drain(self.sinkPeer, 5), b"hello")
        self.assertEqual(self.session.counted, 5)
        self.assertEqual(self.session.ordinary, [])

    def test_writingSinkTakesOrdinaryPath(self) -> None:
        """
        A sink registered for writing gets the bytes behind what it holds.
        """
        self.sink.write(b"queued ")
        self.sourcePeer.sendall(b"then this")
        self.relay.doRead()
        self.assertEqual(self.session.ordinary, [b"then this"])
        self.assertEqual(self.sink.written, [b"queued ", b"then this"])
        self.assertEqual(self.session.counted, 0)


class SpliceRelayTests(RelayTestsMixin, SynchronousTestCase):
    """
    L{fastrelay.Relay} in C{splice} mode.
    """

    mode = "splice"

    def setUp(self) -> None:
        if not fastrelay.CAN_SPLICE:
            raise SkipTest("no splice(2) here")
        super().setUp()

    def bulk(self) -> None:
        """
        Relay one chunk above the threshold: the direction gets its pipe.
        """
        first = os.urandom(fastrelay.SPLICE_THRESHOLD)
        self.sourcePeer.sendall(first)
        self.pump()
        self.assertEqual(drain(self.sinkPeer, len(first)), first)
        self.assertGreaterEqual(self.relay.readFd, 0)

    def test_smallMessagesNeedNoPipe(self) -> None:
        """
        A direction carrying small messages never opens a pipe (an idle
        session costs no descriptors beyond its sockets).
        """
        for _ in range(10):
            self.sourcePeer.sendall(b"ping")
            self.pump()
            self.assertEqual(drain(self.sinkPeer, 4), b"ping")
        self.assertEqual(self.relay.readFd, -1)

    def test_stalledSinkHoldsBytesInPipe(self) -> None:
        """
        When the sink's socket is full, the source stops being read, the
        rest stays in the pipe (not in process memory), and the sink's
        C{doWrite} drains it once the peer reads; then the source is read
        again and Twisted's own C{doWrite} runs.
        """
        self.bulk()
        filled = fillSocket(self.sink.socket)
        payload = os.urandom(200_000)
        self.sourcePeer.sendall(payload)
        self.relay.doRead()
        self.assertGreater(self.relay.pending, 0)
        self.assertFalse(self.source.reading)
        self.assertTrue(self.sink.writing)
        self.assertEqual(self.sink.written, [])
        self.assertEqual(self.session.ordinary, [])
        # The session heard that the source (the client: up) is not read.
        self.assertEqual(self.session.paused, [True])
        # A reader that wakes while stalled reads nothing more.
        self.source.startReading()
        pending = self.relay.pending
        self.relay.doRead()
        self.assertEqual(self.relay.pending, pending)
        self.assertFalse(self.source.reading)

        # The peer reads everything: the pipe drains into the socket.
        received = bytearray()
        deadline = Deadline(10, "draining a stalled sink")
        while len(received) < filled + len(payload):
            self.sinkPeer.settimeout(deadline.remaining())
            received += self.sinkPeer.recv(1 << 20)
            if self.sink.writing:
                self.sink.doWrite()
            readable, _, _ = select.select([self.source.socket], [], [], 0)
            if readable and self.source.reading:
                self.relay.doRead()
        self.assertEqual(bytes(received[filled:]), payload)
        self.assertEqual(self.relay.pending, 0)
        self.assertTrue(self.source.reading)
        self.assertEqual((self.session.paused, self.session.resumed), ([True], [True]))
        self.assertGreaterEqual(self.sink.ownWrites, 1)
        self.assertNotIn("doWrite", vars(self.sink))

    def test_sinkErrorReportedByDoWrite(self) -> None:
        """
        An error writing the sink from the pipe, in the sink's C{doWrite}, is
        returned from it, so the reactor closes the sink as it would on its
        own write error.
        """
        self.bulk()
        fillSocket(self.sink.socket)
        payload = os.urandom(100_000)
        self.sourcePeer.sendall(payload)
        self.relay.doRead()
        self.assertTrue(self.relay.pending, "the sink never stalled")
        self.assertTrue(self.sink.writing)
        self.sinkPeer.close()
        self.assertIs(self.sink.doWrite(), main.CONNECTION_LOST)

    def test_sinkErrorWhileSplicingIsSinkLost(self) -> None:
        """
        When splicing to the sink fails (its peer is gone), the sink is
        reported lost by an error at once, not left for a read to find EOF.
        """
        self.bulk()
        self.sinkPeer.close()
        self.sourcePeer.sendall(os.urandom(100_000))
        self.assertIsNone(self.relay.doRead())
        self.assertSinkLostByError()

    def pipeSize(self) -> int:
        import fcntl

        return fcntl.fcntl(self.relay.writeFd, 1032)  # F_GETPIPE_SZ

    def test_pipeSize(self) -> None:
        """
        Within the pipe budget a direction's pipe holds L{fastrelay.PIPE_SIZE}
        (1 MiB), and the budget counts it until the pipe is closed.
        """
        self.patch(fastrelay, "PIPE_BUDGET", -1)
        before = fastrelay._pipeBytes
        self.bulk()
        self.assertEqual(self.pipeSize(), fastrelay.PIPE_SIZE)
        self.assertEqual(fastrelay._pipeBytes, before + fastrelay.PIPE_SIZE)
        self.relay.closePipe()
        self.assertEqual(fastrelay._pipeBytes, before)

    def test_pipeSizeWithinBudget(self) -> None:
        """
        Not running as root, large pipes take at most half the budget, and
        smaller ones (L{fastrelay.SMALL_PIPE_SIZE}) the rest; past that a pipe
        keeps the default size and relays all the same.
        """
        self.patch(os, "geteuid", lambda: 1000)
        before = fastrelay._pipeBytes
        self.patch(fastrelay, "PIPE_BUDGET", before + fastrelay.SMALL_PIPE_SIZE)
        self.bulk()
        self.assertEqual(self.pipeSize(), fastrelay.SMALL_PIPE_SIZE)
        self.relay.closePipe()
        self.patch(fastrelay, "PIPE_BUDGET", before)
        data = os.urandom(2 * 1024 * 1024)
        self.sourcePeer.sendall(data[: fastrelay.SPLICE_THRESHOLD])
        self.pump()
        self.assertEqual(drain(self.sinkPeer, fastrelay.SPLICE_THRESHOLD), data[: fastrelay.SPLICE_THRESHOLD])
        self.assertGreaterEqual(self.relay.readFd, 0)
        self.assertLess(self.pipeSize(), fastrelay.SMALL_PIPE_SIZE)
        self.assertEqual(fastrelay._pipeBytes, before)
        self.relay.closePipe()

    def test_pipeBudgetNotForRoot(self) -> None:
        """
        As root (whom the kernel does not hold to the pipe quota) every pipe
        holds L{fastrelay.PIPE_SIZE}.
        """
        self.patch(os, "geteuid", lambda: 0)
        self.patch(fastrelay, "PIPE_BUDGET", 0)
        self.bulk()
        self.assertEqual(self.pipeSize(), fastrelay.PIPE_SIZE)
        self.relay.closePipe()

    def test_uninstallClosesPipe(self) -> None:
        """
        L{fastrelay.Relay.uninstall} closes the direction's pipe.
        """
        self.bulk()
        readFd = self.relay.readFd
        self.source.doRead = self.relay.doRead  # type: ignore[attr-defined]
        self.relay.uninstall()
        self.assertEqual(self.relay.readFd, -1)
        self.assertNotIn("doRead", vars(self.source))
        with self.assertRaises(OSError):
            os.fstat(readFd)


class InstallTests(SynchronousTestCase):
    """
    L{fastrelay.install} applies only to plain socket transports.
    """

    def test_notPlain(self) -> None:
        """
        Transports that are not the reactor's own plain TCP/unix transports
        (here L{StringTransport}s, as a TLS or wrapped transport would be)
        are left alone.
        """
        client, backend = HalfCloseTransport(), HalfCloseTransport()
        result = fastrelay.install(client, backend, object(), mode="splice")
        self.assertIsNone(result)
        self.assertNotIn("doRead", vars(client))

    def test_off(self) -> None:
        """
        Mode C{off} installs nothing.
        """
        self.assertIsNone(fastrelay.install(None, None, object(), mode="off"))

    def test_modeFromEnvironment(self) -> None:
        """
        C{TXSOCKPROXY_FASTPATH} picks the mode; unknown values mean the default.
        """
        old = os.environ.get("TXSOCKPROXY_FASTPATH")
        self.addCleanup(
            lambda: os.environ.pop("TXSOCKPROXY_FASTPATH", None) if old is None
            else os.environ.__setitem__("TXSOCKPROXY_FASTPATH", old)
        )
        os.environ["TXSOCKPROXY_FASTPATH"] = "copy"
        self.assertEqual(fastrelay.defaultMode(), "copy")
        os.environ["TXSOCKPROXY_FASTPATH"] = "off"
        self.assertEqual(fastrelay.defaultMode(), "off")
        os.environ["TXSOCKPROXY_FASTPATH"] = "bogus"
        self.assertIn(fastrelay.defaultMode(), ("splice", "copy"))


class FastPathIntegrationTestsMixin:
    """
    C{twistd sockproxy} with the fast path in one mode: bytes exact, half-close
    both ways, flow control with a stalled peer in both directions.
    """

    mode = "splice"

    def proxy(self: Any, backend: Server) -> tuple[str, int]:
        config = proxyConfig(self.tmp, [LOOPBACK], [{"endpoint": backend.endpoint}])
        process = self.startTwistd(
            ["sockproxy", "--config", config],
            env=self.environ(TXSOCKPROXY_FASTPATH=self.mode),
        )
        return ("127.0.0.1", boundPort(process))

    def test_clientHalfCloseThenLargeReply(self: Any) -> None:
        """
        16 MiB up, the client's half-close, then 16 MiB down sent by the
        backend after it saw EOF: both arrive exactly, and the backend's
        close reaches the client.
        """
        payload = os.urandom(16 * MiB)
        reply = os.urandom(16 * MiB)
        digests: list[str] = []

        def handler(conn: socket.socket, server: Server) -> None:
            digest = hashlib.sha256(recvAll(conn, Deadline(30, "request"))).hexdigest()
            digests.append(digest)
            conn.sendall(reply)
            conn.shutdown(socket.SHUT_WR)

        backend = self.startServer(handler)
        address = self.proxy(backend)
        with connect(address) as conn:
            received = exchange(conn, payload, Deadline(60, "half-close exchange"))
        self.assertEqual(digests, [hashlib.sha256(payload).hexdigest()])
        self.assertTrue(received == reply, "the reply arrived altered")
        self.assertNoHandlerErrors(backend)

    def test_backendHalfCloseFirst(self: Any) -> None:
        """
        The backend sends 8 MiB and half-closes first; the client still
        sends 8 MiB afterwards, and it reaches the backend exactly.
        """
        down = os.urandom(8 * MiB)
        up = os.urandom(8 * MiB)
        got: list[bytes] = []
        done = threading.Event()

        def handler(conn: socket.socket, server: Server) -> None:
            conn.sendall(down)
            conn.shutdown(socket.SHUT_WR)
            got.append(recvAll(conn, Deadline(30, "client's bytes after backend EOF")))
            done.set()

        backend = self.startServer(handler)
        address = self.proxy(backend)
        deadline = Deadline(60, "backend-first half-close")
        with connect(address) as conn:
            received = recvAll(conn, deadline)
            conn.sendall(up)
            conn.shutdown(socket.SHUT_WR)
            self.assertTrue(done.wait(deadline.remaining()), "the backend never saw EOF")
        self.assertTrue(received == down, "the backend's bytes arrived altered")
        self.assertTrue(got and got[0] == up, "the client's bytes arrived altered")
        self.assertNoHandlerErrors(backend)

    def stalled(self: Any, direction: str) -> None:
        """
        Push as fast as possible at a peer that does not read, until
        everything stalls; then let it read: every byte arrives, and the
        proxy's memory grew by far less than what was pushed.
        """
        import psutil

        release = threading.Event()
        self.addCleanup(release.set)
        total = 64 * MiB
        counted: list[int] = []
        pushed: list[int] = []

        def push(conn: socket.socket) -> int:
            chunk = memoryview(b"\xab" * MiB)
            conn.setblocking(False)
            sent = 0
            deadline = Deadline(30, "pushing at a stalled peer")
            while sent < total:
                _, writable, _ = select.select([], [conn], [], min(1.0, deadline.remaining()))
                if not writable:
                    break
                try:
                    sent += conn.send(chunk[: min(MiB, total - sent)])
                except BlockingIOError:
                    pass
            conn.setblocking(True)
            return sent

        def count(conn: socket.socket) -> int:
            n = 0
            conn.settimeout(30)
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    return n
                n += len(data)

        def handler(conn: socket.socket, server: Server) -> None:
            if direction == "up":
                release.wait(30)
                counted.append(count(conn))
                conn.close()
            else:
                pushed.append(push(conn))
                conn.shutdown(socket.SHUT_WR)
                release.wait(30)

        backend = self.startServer(handler)
        address = self.proxy(backend)
        process = None
        with connect(address) as conn:
            backend.waitForAccepted(1)
            process = psutil.Process(self._lastTwistd().pid)
            before = process.memory_info().rss
            if direction == "up":
                sent = push(conn)
                grown = process.memory_info().rss - before
                release.set()
                conn.shutdown(socket.SHUT_WR)
                conn.settimeout(30)
                self.assertEqual(conn.recv(1), b"")
                self.assertEqual(counted, [sent])
            else:
                deadline = Deadline(30, "backend stalls")
                while not pushed and deadline.remaining() > 0:
                    select.select([], [], [], 0.05)
                grown = process.memory_info().rss - before
                self.assertTrue(pushed, "the backend never stalled")
                release.set()
                self.assertEqual(count(conn), pushed[0])
                sent = pushed[0]
        self.assertLess(sent, total, "the push never stalled")
        self.assertLess(grown, 4 * MiB, f"proxy RSS grew by {grown} bytes")
        self.assertNoHandlerErrors(backend)

    def test_stalledBackend(self: Any) -> None:
        """
        A backend that does not read stalls the client (flow control up).
        """
        self.stalled("up")

    def test_stalledClient(self: Any) -> None:
        """
        A client that does not read stalls the backend (flow control down).
        """
        self.stalled("down")


class _ModeIntegrationTestCase(_IntegrationTestCase):
    def startTwistd(self, *args: Any, **kwargs: Any) -> Any:
        process = super().startTwistd(*args, **kwargs)
        self._twistd = process
        return process

    def _lastTwistd(self) -> Any:
        return self._twistd


class SpliceIntegrationTests(FastPathIntegrationTestsMixin, _ModeIntegrationTestCase):
    """
    Integration tests of the C{splice} mode.
    """

    mode = "splice"

    def setUp(self) -> None:
        if not fastrelay.CAN_SPLICE:
            raise SkipTest("no splice(2) here")
        super().setUp()


class CopyIntegrationTests(FastPathIntegrationTestsMixin, _ModeIntegrationTestCase):
    """
    Integration tests of the C{copy} mode.
    """

    mode = "copy"


class OffIntegrationTests(FastPathIntegrationTestsMixin, _ModeIntegrationTestCase):
    """
    The same behaviour with the fast path off (Twisted's own relay).
    """

    mode = "off"


class DirectConnectTests(SynchronousTestCase):
    """
    L{fastconnect.directConnect} connects plain TCP and unix endpoints through
    the reactor, with the shorter timeout; what it returns cancels.
    """

    def factory(self) -> Any:
        from twisted.internet.protocol import ClientFactory

        return ClientFactory()

    def test_tcp(self) -> None:
        """
        A L{TCP4ClientEndpoint} becomes one C{connectTCP} with its host,
        port and bind address, and the connect timeout when it is shorter
        than the endpoint's.
        """
        from twisted.internet.endpoints import TCP4ClientEndpoint
        from twisted.internet.testing import MemoryReactorClock

        reactor = MemoryReactorClock()
        endpoint = TCP4ClientEndpoint(reactor, "192.0.2.1", 5432, timeout=30, bindAddress=("127.0.0.1", 0))
        factory = self.factory()
        d = fastconnect.directConnect(endpoint, factory, 8.0)
        self.assertIsNotNone(d)
        host, port, got, timeout, bind = reactor.tcpClients[0]
        self.assertEqual((host, port, timeout, bind), ("192.0.2.1", 5432, 8.0, ("127.0.0.1", 0)))
        self.assertIs(got, factory)
        endpoint2 = TCP4ClientEndpoint(reactor, "192.0.2.1", 5432, timeout=2)
        fastconnect.directConnect(endpoint2, self.factory(), 8.0)
        self.assertEqual(reactor.tcpClients[1][3], 2)

    def test_unix(self) -> None:
        """
        A L{UNIXClientEndpoint} becomes one C{connectUNIX}.
        """
        from twisted.internet.endpoints import UNIXClientEndpoint
        from twisted.internet.testing import MemoryReactorClock

        reactor = MemoryReactorClock()
        endpoint = UNIXClientEndpoint(reactor, "/run/app.sock", timeout=30)
        d = fastconnect.directConnect(endpoint, self.factory(), 8.0)
        self.assertIsNotNone(d)
        path, _, timeout, _ = reactor.unixClients[0]
        self.assertEqual((path, timeout), ("/run/app.sock", 8.0))

    def test_otherEndpoints(self) -> None:
        """
        Any other endpoint (TLS, host names, plugins) is not handled.
        """
        from tests.fakes import FakeEndpoint

        self.assertIsNone(fastconnect.directConnect(FakeEndpoint(), self.factory(), 8.0))

    def test_cancel(self) -> None:
        """
        Cancelling stops the connector.
        """
        from twisted.internet.endpoints import TCP4ClientEndpoint
        from twisted.internet.testing import MemoryReactorClock

        reactor = MemoryReactorClock()
        stop = fastconnect.directConnect(
            TCP4ClientEndpoint(reactor, "192.0.2.1", 1), self.factory(), 8.0
        )
        assert stop is not None
        connector = reactor.connectors[0]
        stop.cancel()
        self.assertTrue(connector.stoppedConnecting)


class ClassSwitchTests(SynchronousTestCase):
    """
    L{fastrelay.install} switches a plain transport to a subclass whose
    C{doRead} is its protocol's relay, and L{fastrelay.Relay.uninstall}
    switches it back.
    """

    def installed(self) -> tuple[list[Any], tuple[Any, Any]]:
        """
        Two connected C{tcp.Server} transports over a socket pair, each with
        a protocol that holds its relay, and the relays installed between
        them: (transports, relays).
        """
        from twisted.internet import tcp

        class Proto:
            relay = None

        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        transports = []
        for sock in (a, b):
            t = tcp.Server.__new__(tcp.Server)
            t.socket = sock
            t.fileno = sock.fileno
            t.connected = True
            t.protocol = Proto()
            transports.append(t)
        relays = fastrelay.install(
            transports[0], transports[1], object(), mode="copy",
            clientProtocol=transports[0].protocol, backendProtocol=transports[1].protocol,
        )
        assert relays is not None
        return transports, relays

    def test_switchAndBack(self) -> None:
        """
        Both transports get the C{Relayed} subclass of their own class, the
        protocols hold the relays, and uninstalling restores the classes.
        """
        from twisted.internet import tcp

        transports, relays = self.installed()
        protocols = [t.protocol for t in transports]
        for t, p, relay in zip(transports, protocols, relays, strict=True):
            self.assertIsNot(type(t), tcp.Server)
            self.assertIsInstance(t, tcp.Server)
            self.assertIs(p.relay, relay)
            self.assertNotIn("doRead", vars(t))
        for relay in relays:
            relay.uninstall()
        for t in transports:
            self.assertIs(type(t), tcp.Server)

    def test_closedKeepsClass(self) -> None:
        """
        Uninstalling from a transport that is closed by then (a finished
        session's) leaves its class as it is: nothing reads it any more.
        """
        from twisted.internet import tcp

        transports, relays = self.installed()
        relayed = type(transports[0])
        transports[0].disconnected = True
        for relay in relays:
            relay.uninstall()
        self.assertIs(type(transports[0]), relayed)
        self.assertIs(type(transports[1]), tcp.Server)

    def test_producersAsPlainTransports(self) -> None:
        """
        A relayed transport registers and unregisters producers as its own
        class does for a plain (not TLS) connection: Twisted's
        C{FileDescriptor} methods; unregistering from a transport that is
        closing starts its writing (to finish the close).
        """
        from twisted.internet import tcp

        relayed = fastrelay._fastClass(tcp.Server)
        t = relayed.__new__(relayed)
        t.connected = True
        t.disconnected = False
        t.disconnecting = True
        t.TLS = False
        started = []
        t.startWriting = lambda: started.append(True)
        producer = object()
        t.registerProducer(producer, True)
        self.assertIs(t.producer, producer)
        self.assertTrue(t.streamingProducer)
        t.unregisterProducer()
        self.assertIsNone(t.producer)
        self.assertEqual(started, [True])

    def test_ownCodePerClass(self) -> None:
        """
        Each class made for the fast path has a C{doRead} with a code
        object of its own (so that the interpreter specializes its attribute
        reads for that class), which reads through the protocol's relay.
        """
        from twisted.internet import tcp, unix

        made = [fastrelay._fastClass(cls) for cls in (tcp.Server, unix.Server)]
        codes = {id(cls.doRead.__code__) for cls in made}
        self.assertEqual(len(codes), 2)
        self.assertNotIn(id(fastrelay._relayedRead.__code__), codes)

        class Relay:
            def doRead(self) -> str:
                return "read"

        class Proto:
            relay = Relay()

        t = tcp.Server.__new__(made[0])
        t.protocol = Proto()
        self.assertEqual(t.doRead(), "read")

    def test_enteredInReactorsRelays(self) -> None:
        """
        On txsockproxy's reactor, L{fastrelay.install} enters each relay in
        the reactor's C{relays} under its source's descriptor, and
        uninstalling removes it, unless the entry is another relay's by
        then.
        """
        from twisted.internet import tcp

        reactor = privateReactor(self)

        class Proto:
            relay = None

        socks = socket.socketpair()
        transports = []
        for sock in socks:
            self.addCleanup(sock.close)
            t = tcp.Server.__new__(tcp.Server)
            t.socket = sock
            t.fileno = sock.fileno
            t.connected = True
            t.reactor = reactor
            t.protocol = Proto()
            transports.append(t)
        up, down = fastrelay.install(transports[0], transports[1], object(), mode="copy",
                                     clientProtocol=transports[0].protocol,
                                     backendProtocol=transports[1].protocol) or (None, None)
        assert up is not None and down is not None
        self.assertEqual(reactor.relays, {socks[0].fileno(): up, socks[1].fileno(): down})
        newer = object()
        reactor.relays[socks[1].fileno()] = newer
        up.uninstall()
        down.uninstall()
        self.assertEqual(reactor.relays, {socks[1].fileno(): newer})


class ConnectionInfoTests(SynchronousTestCase):
    """
    L{ConnectionInfo}'s addresses, made on first use.
    """

    def test_localAfterClose(self) -> None:
        """
        The local address first asked for once the client's socket is gone
        is L{None}, not an error.
        """
        from txsockproxy.relay import ConnectionInfo

        class Closed:
            def getHost(self) -> Any:
                raise AttributeError("socket")

        self.assertIsNone(ConnectionInfo.ofTransport(Closed()).local)


class SessionMemoryTests(SynchronousTestCase):
    """
    What a session keeps per connection is small: the peer address is made
    only when asked for, and sessions of one listen address share it.
    """

    def test_lazyPeerSharedLocal(self) -> None:
        """
        A session's connection info asks the transport for the peer and
        local addresses once each, when first read; two sessions share one
        local address object.
        """
        from twisted.internet.address import IPv4Address

        from tests.fakes import Proxy

        proxy = Proxy()
        first, transport = proxy.accept(IPv4Address("TCP", "192.0.2.7", 5555))
        second, _ = proxy.accept()
        calls = []
        getPeer = transport.getPeer

        def countingGetPeer() -> Any:
            calls.append(1)
            return getPeer()

        transport.getPeer = countingGetPeer  # type: ignore[method-assign]
        getHost = transport.getHost
        hostCalls = []

        def countingGetHost() -> Any:
            hostCalls.append(1)
            return getHost()

        transport.getHost = countingGetHost  # type: ignore[method-assign]
        info = first.session.connection  # type: ignore[union-attr]
        self.assertEqual((calls, hostCalls), ([], []))
        self.assertEqual(info.peer, IPv4Address("TCP", "192.0.2.7", 5555))
        self.assertEqual(info.peer, IPv4Address("TCP", "192.0.2.7", 5555))
        self.assertEqual(calls, [1])
        self.assertEqual(info.local, getHost())
        self.assertEqual(info.local, getHost())
        self.assertEqual(hostCalls, [1])
        self.assertIs(info.local, second.session.connection.local)  # type: ignore[union-attr]
