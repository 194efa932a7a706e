"""
Tests for L{txsockproxy.handles}: the socket under a transport, and the
error waiting on it, and Nagle's algorithm turned off, over real loopback
sockets.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import SocketTransport, WrappingTransport, resetSocket, tcpPair
from txsockproxy.handles import (
    AcceptedNoDelay,
    noDelay,
    pendingError,
    setNoDelay,
    socketError,
    socketOf,
)


class SocketOfTests(SynchronousTestCase):
    """
    L{socketOf} finds the socket of a transport, through a wrapping one.
    """

    def test_wrapped(self) -> None:
        """
        A transport whose handle is no socket is looked through to the one
        it wraps; a transport with none gives L{None}.
        """
        skt = socket.socket()
        self.addCleanup(skt.close)
        self.assertIs(socketOf(WrappingTransport(SocketTransport(skt))), skt)
        self.assertIsNone(socketOf(WrappingTransport(None)))
        self.assertIsNone(socketOf(object()))

    def test_cType(self) -> None:
        """
        A socket of the C type under C{socket.socket} (C{socket.SocketType},
        as the accelerator's transports have) is a socket too.
        """
        skt = socket.SocketType(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(skt.close)
        self.assertIs(socketOf(SocketTransport(skt)), skt)


class PendingErrorTests(SynchronousTestCase):
    """
    L{pendingError} tells a reset waiting on a socket from a clean end.
    """

    def setUp(self) -> None:
        self.ours, self.peer = tcpPair()
        self.addCleanup(self.ours.close)
        self.addCleanup(self.peer.close)

    def test_reset(self) -> None:
        """
        A peer's reset not yet read is reported, once: asking takes it.
        """
        resetSocket(self.peer)
        self.assertEqual(pendingError(SocketTransport(self.ours)), errno.ECONNRESET)
        self.assertEqual(pendingError(SocketTransport(self.ours)), 0)

    def test_fin(self) -> None:
        """
        A peer's FIN is no error.
        """
        self.peer.shutdown(socket.SHUT_WR)
        self.assertEqual(self.ours.recv(10), b"")
        self.assertEqual(pendingError(SocketTransport(self.ours)), 0)

    def test_noSocket(self) -> None:
        """
        A transport with no socket under it has no error to tell.
        """
        self.assertEqual(pendingError(WrappingTransport(None)), 0)

    def test_closedSocket(self) -> None:
        """
        A socket already closed gives the error of asking it (EBADF), not an
        exception.
        """
        self.ours.close()
        self.assertEqual(pendingError(SocketTransport(self.ours)), errno.EBADF)

    def test_ofSocket(self) -> None:
        """
        L{socketError} asks a socket itself (as a session that keeps the
        socket under each transport does): a reset once, then nothing;
        L{None} (no socket) gives 0.
        """
        resetSocket(self.peer)
        self.assertEqual(socketError(self.ours), errno.ECONNRESET)
        self.assertEqual(socketError(self.ours), 0)
        self.assertEqual(socketError(None), 0)


class NoDelayTests(SynchronousTestCase):
    """
    L{noDelay} turns Nagle's algorithm off on a TCP socket under a
    transport, and leaves others alone.
    """

    def test_tcp(self) -> None:
        """
        The socket under a transport, or under the transport a wrapping
        one wraps (TLS), gets C{TCP_NODELAY}.
        """
        for wrap in (SocketTransport, lambda s: WrappingTransport(SocketTransport(s))):
            ours, peer = tcpPair()
            self.addCleanup(ours.close)
            self.addCleanup(peer.close)
            self.assertEqual(ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)
            self.assertTrue(noDelay(wrap(ours)))
            self.assertNotEqual(ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)

    def test_notTCP(self) -> None:
        """
        A unix socket, a closed socket and a transport without a socket are
        left as they are, without an error.
        """
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertFalse(noDelay(SocketTransport(a)))
        closed = socket.socket()
        closed.close()
        self.assertFalse(noDelay(SocketTransport(closed)))
        self.assertFalse(noDelay(object()))

    def test_ofSocket(self) -> None:
        """
        L{setNoDelay} sets it on a TCP socket itself; a unix socket and
        L{None} are left alone.
        """
        ours, peer = tcpPair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        self.assertTrue(setNoDelay(ours))
        self.assertNotEqual(ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertFalse(setNoDelay(a))
        self.assertFalse(setNoDelay(None))


class Listening:
    """
    A listening port, as a transport's C{server}: its socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


class AcceptedTransport(SocketTransport):
    """
    A transport of a connection that C{server} accepted.
    """

    def __init__(self, sock: socket.socket, server: Listening) -> None:
        super().__init__(sock)
        self.server = server


class AcceptedNoDelayTests(SynchronousTestCase):
    """
    L{AcceptedNoDelay} turns Nagle's algorithm off on a listener's
    connections, by way of the listening socket once it can.
    """

    def setUp(self) -> None:
        self.listening = socket.socket()
        self.addCleanup(self.listening.close)
        self.listening.bind(("127.0.0.1", 0))
        self.listening.listen(8)
        self.port = Listening(self.listening)
        self.noDelay = AcceptedNoDelay()
        self.sets: list[int] = []
        original = socket.socket.setsockopt

        def recording(sock: socket.socket, level: int, option: int, value: Any) -> None:
            if (level, option) == (socket.IPPROTO_TCP, socket.TCP_NODELAY):
                self.sets.append(sock.fileno())
            original(sock, level, option, value)

        self.patch(socket.socket, "setsockopt", recording)

    def connect(self) -> socket.socket:
        """
        A client's connection, created now, not accepted yet.
        """
        client = socket.create_connection(self.listening.getsockname())
        self.addCleanup(client.close)
        return client

    def accept(self) -> socket.socket:
        accepted, _ = self.listening.accept()
        self.addCleanup(accepted.close)
        self.noDelay.apply(AcceptedTransport(accepted, self.port), accepted)
        return accepted

    def test_byTheListener(self) -> None:
        """
        The first connection gets the option, and so does the listening
        socket; connections created after that have it from the start, with
        no call of their own; one created before it was given (waiting to
        be accepted) gets it as the first did.
        """
        self.connect()
        queued = self.connect()
        first = self.accept()
        self.assertEqual(self.sets, [first.fileno(), self.listening.fileno()])
        self.assertEqual(self.listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        del self.sets[:]
        second = self.accept()  # the queued one: created before
        self.assertEqual(self.sets, [second.fileno()])
        self.assertIsNotNone(queued)
        del self.sets[:]
        for _ in range(3):
            self.connect()
            later = self.accept()
            self.assertNotEqual(later.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)
        self.assertEqual(self.sets, [])

    def test_noPort(self) -> None:
        """
        A transport whose listening port is not known (a TLS transport, a
        wrapper) gets the option on its own socket every time; no listener
        is changed.
        """
        for _ in range(2):
            self.connect()
            accepted, _ = self.listening.accept()
            self.addCleanup(accepted.close)
            self.noDelay.apply(SocketTransport(accepted), accepted)
            self.assertNotEqual(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)
        self.assertEqual(len(self.sets), 2)
        self.assertEqual(self.listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)

    def test_unixListener(self) -> None:
        """
        A unix socket takes no option: nothing is set, and nothing fails.
        """
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.noDelay.apply(AcceptedTransport(a, Listening(b)), a)
        self.noDelay.apply(AcceptedTransport(a, Listening(b)), None)
