"""
Tests for L{txsockproxy.watch}: sockets that are not being read are still
heard, their reset and their FIN, over real loopback sockets with a
L{Clock} for the interval.
"""

from __future__ import annotations

import errno
import socket

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import SocketTransport, resetSocket, tcpPair
from txsockproxy.watch import PausedWatch


class Told:
    """
    A watcher that records what it is told.
    """

    def __init__(self) -> None:
        self.failed: list[tuple[bool, int]] = []
        self.finished: list[bool] = []

    def pausedSideFailed(self, client: bool, errno: int) -> None:
        self.failed.append((client, errno))

    def pausedSideFinished(self, client: bool) -> None:
        self.finished.append(client)


class PausedWatchTests(SynchronousTestCase):
    """
    L{PausedWatch} tells a watcher of a reset or a FIN on a watched socket,
    at the next look, and looks only while something is watched.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.watch = PausedWatch(self.clock, interval=1.0)
        self.ours, self.peer = tcpPair()
        self.addCleanup(self.ours.close)
        self.addCleanup(self.peer.close)
        self.told = Told()

    def test_reset(self) -> None:
        """
        A peer's reset, with bytes still unread, is reported as a failure
        with its errno at the next look; the side is no longer watched.
        """
        self.peer.sendall(b"unread" * 1000)
        self.watch.add(self.told, True, SocketTransport(self.ours))
        self.clock.advance(1)
        self.assertEqual((self.told.failed, self.told.finished), ([], []))
        resetSocket(self.peer)
        self.clock.advance(1)
        self.assertEqual(self.told.failed, [(True, errno.ECONNRESET)])
        self.assertEqual(len(self.watch), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_addSocket(self) -> None:
        """
        L{PausedWatch.addSocket} watches a socket given itself (as a
        session that keeps the socket under each transport does); adding
        the same side again, or no socket, changes nothing.
        """
        self.watch.addSocket(self.told, True, self.ours)
        self.watch.addSocket(self.told, True, self.ours)
        self.watch.addSocket(self.told, False, None)
        self.assertEqual(len(self.watch), 1)
        resetSocket(self.peer)
        self.clock.advance(1)
        self.assertEqual(self.told.failed, [(True, errno.ECONNRESET)])
        self.assertEqual(len(self.watch), 0)

    def test_finOnce(self) -> None:
        """
        A peer's FIN behind unread bytes is reported once, and the side is
        still watched for a reset.
        """
        self.peer.sendall(b"unread")
        self.peer.shutdown(socket.SHUT_WR)
        self.watch.add(self.told, False, SocketTransport(self.ours))
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(self.told.finished, [False])
        self.assertEqual(self.told.failed, [])
        self.assertEqual(len(self.watch), 1)
        resetSocket(self.peer)
        self.clock.advance(1)
        # After a FIN, Linux says EPIPE for the reset.
        self.assertEqual(self.told.failed, [(False, errno.EPIPE)])

    def test_discard(self) -> None:
        """
        A side discarded (read again) is no longer looked at; the look
        already due finds nothing and leaves no reactor call behind.
        """
        self.watch.add(self.told, True, SocketTransport(self.ours))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.watch.discard(self.told, True)
        resetSocket(self.peer)
        self.clock.advance(1)
        self.assertEqual(self.told.failed, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oneCallForMany(self) -> None:
        """
        Sides added and discarded while a look is due do not add reactor
        calls.
        """
        for _ in range(100):
            self.watch.add(self.told, True, SocketTransport(self.ours))
            self.watch.discard(self.told, True)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_quietSocket(self) -> None:
        """
        An open socket with unread bytes and no FIN reports nothing, and is
        looked at again an interval later.
        """
        self.peer.sendall(b"x" * 100_000)
        self.watch.add(self.told, True, SocketTransport(self.ours))
        for _ in range(3):
            self.clock.advance(1)
        self.assertEqual((self.told.failed, self.told.finished), ([], []))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_closedSocketDropped(self) -> None:
        """
        A socket closed under the watch (its session ended another way) is
        dropped silently.
        """
        self.watch.add(self.told, True, SocketTransport(self.ours))
        self.ours.close()
        self.clock.advance(1)
        self.assertEqual(len(self.watch), 0)
        self.assertEqual(self.told.failed, [])
