"""
Tests for L{txsockproxy.handles}: the socket under a transport, and the
error waiting on it, over real loopback sockets.
"""

from __future__ import annotations

import errno
import socket

from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import SocketTransport, WrappingTransport, resetSocket, tcpPair
from txsockproxy.handles import pendingError, socketOf


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
