"""
Tests for L{txsockproxy.keepalive}: the settings land on real sockets.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import SocketTransport, tcpPair
from txsockproxy.config import KeepaliveConfig
from txsockproxy.keepalive import applyKeepalive


class KeepaliveTests(SynchronousTestCase):
    def test_applied(self) -> None:
        ours, peer = tcpPair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        self.assertTrue(applyKeepalive(KeepaliveConfig(idle=30, interval=5, count=4), SocketTransport(ours)))
        self.assertEqual(ours.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual(ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 30)
        self.assertEqual(ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), 5)
        self.assertEqual(ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), 4)

    def test_systemDefaultsKept(self) -> None:
        """
        Settings left 0 keep the system's.
        """
        ours, peer = tcpPair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        before = ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
        applyKeepalive(KeepaliveConfig(idle=60), SocketTransport(ours))
        self.assertEqual(ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), before)

    def test_offAndUnix(self) -> None:
        self.assertFalse(applyKeepalive(KeepaliveConfig(), SocketTransport(socket.socket())))
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertFalse(applyKeepalive(KeepaliveConfig(idle=1), SocketTransport(a)))
        self.assertFalse(applyKeepalive(KeepaliveConfig(idle=1), object()))

    def test_outOfRangeNotApplied(self) -> None:
        """
        A value the system refuses (beyond the range of C{setsockopt}'s
        integer) is reported as not applied, not raised: the session goes
        on without keepalive.
        """
        ours, peer = tcpPair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        self.assertFalse(applyKeepalive(KeepaliveConfig(idle=2.0**31), SocketTransport(ours)))
        self.assertFalse(applyKeepalive(KeepaliveConfig(idle=60, count=2**40), SocketTransport(ours)))
