"""
Tests for L{txsockproxy.listenpause}, on loopback sockets (no waiting: a
connection to loopback is in its listener's queue when C{connect} returns).
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase

from txsockproxy.listenpause import pauseListening, resumeListening
from txsockproxy.reuseport import bindReusePort


def listening(s: socket.socket) -> bool:
    """
    Whether C{s} listens.
    """
    return bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def acceptAll(s: socket.socket) -> int:
    """
    Accept (and close) every connection waiting in C{s}; how many.
    """
    count = 0
    while True:
        try:
            conn, _ = s.accept()
        except OSError:
            return count
        conn.close()
        count += 1


class PauseTests(SynchronousTestCase):
    """
    L{pauseListening} and L{resumeListening} on a group of two
    C{SO_REUSEPORT} sockets.
    """

    def group(self, numbered: bool) -> tuple[socket.socket, socket.socket, int]:
        """
        Two sockets of one group; the first bound as port 0 unless
        C{numbered}.
        """
        first = bindReusePort(socket.AF_INET, ("127.0.0.1", 0), 50)
        port = first.getsockname()[1]
        if numbered:
            first.close()
            first = bindReusePort(socket.AF_INET, ("127.0.0.1", port), 50)
        second = bindReusePort(socket.AF_INET, ("127.0.0.1", port), 50)
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        return first, second, port

    def connections(self, port: int, count: int) -> None:
        for _ in range(count):
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.addCleanup(conn.close)

    def check(self, numbered: bool) -> None:
        first, second, port = self.group(numbered)
        address = pauseListening(first.fileno())
        self.assertFalse(listening(first))
        self.connections(port, 20)
        self.assertEqual((acceptAll(first), acceptAll(second)), (0, 20))
        resumeListening(first.fileno(), address, 50)
        self.assertTrue(listening(first))
        self.assertEqual(first.getsockname(), ("127.0.0.1", port))
        self.connections(port, 40)
        accepted = acceptAll(first), acceptAll(second)
        self.assertEqual(sum(accepted), 40)
        self.assertGreater(min(accepted), 0, accepted)

    def test_ephemeral(self) -> None:
        """
        A paused socket takes no connections (the other socket of its group
        takes them all); resumed, it listens on the same port again and takes
        its share. Its port was chosen by the system (bound as port 0).
        """
        self.check(numbered=False)

    def test_numbered(self) -> None:
        """
        The same, for a socket bound to its port by number.
        """
        self.check(numbered=True)

    def test_notListening(self) -> None:
        """
        A socket that does not listen cannot be paused: L{OSError}.
        """
        s = socket.socket()
        self.addCleanup(s.close)
        self.assertRaises(OSError, pauseListening, s.fileno())
