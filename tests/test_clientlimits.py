"""
Tests for L{txsockproxy.clientlimits}: concurrent sessions and new
connections per second per client, on a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txsockproxy.clientlimits import SWEEP_INTERVAL, ClientLimits, clientKey


def ip4(host: str) -> IPv4Address:
    return IPv4Address("TCP", host, 1234)


class ClientKeyTests(SynchronousTestCase):
    def test_keys(self) -> None:
        self.assertEqual(clientKey(ip4("192.0.2.1")), "192.0.2.1")
        self.assertEqual(clientKey(IPv6Address("TCP", "::ffff:192.0.2.1", 1)), "192.0.2.1")
        self.assertEqual(
            clientKey(IPv6Address("TCP", "2001:db8:1:2:3:4:5:6", 1)), "2001:db8:1:2::/64"
        )
        self.assertEqual(
            clientKey(IPv6Address("TCP", "2001:db8:1:2:3:4:5:6", 1), 48), "2001:db8:1::/48"
        )
        self.assertIsNone(clientKey(UNIXAddress(None)))


class ClientLimitsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_concurrent(self) -> None:
        """
        Past C{maxConcurrent} sessions a client is refused, others are not;
        a release makes room.
        """
        limits = ClientLimits(self.clock, maxConcurrent=2)
        keys = [limits.admit(ip4("192.0.2.1")) for _ in range(2)]
        self.assertEqual([why for _, why in keys], [None, None])
        key, why = limits.admit(ip4("192.0.2.1"))
        self.assertIsNone(key)
        self.assertEqual(why, "2 sessions open, the most per client (192.0.2.1)")
        self.assertEqual(limits.admit(ip4("192.0.2.2"))[1], None)
        limits.release(keys[0][0])
        self.assertEqual(limits.admit(ip4("192.0.2.1"))[1], None)

    def test_ipv6Grouped(self) -> None:
        """
        Addresses of one IPv6 /64 count as one client.
        """
        limits = ClientLimits(self.clock, maxConcurrent=1)
        self.assertIsNone(limits.admit(IPv6Address("TCP", "2001:db8::1", 1))[1])
        self.assertIsNotNone(limits.admit(IPv6Address("TCP", "2001:db8::2", 1))[1])
        self.assertIsNone(limits.admit(IPv6Address("TCP", "2001:db8:0:1::1", 1))[1])

    def test_rate(self) -> None:
        """
        A burst of C{burst} connections passes, the next is refused, and
        the bucket refills at C{rate} per second.
        """
        limits = ClientLimits(self.clock, rate=10, burst=5)
        results = [limits.admit(ip4("192.0.2.1"))[1] for _ in range(6)]
        self.assertEqual(results[:5], [None] * 5)
        self.assertIn("more than 10 new connections per second (burst 5)", results[5] or "")
        self.clock.advance(0.1)
        self.assertIsNone(limits.admit(ip4("192.0.2.1"))[1])
        self.assertIsNotNone(limits.admit(ip4("192.0.2.1"))[1])

    def test_unixNotLimited(self) -> None:
        limits = ClientLimits(self.clock, maxConcurrent=1, rate=1, burst=1)
        for _ in range(5):
            self.assertEqual(limits.admit(UNIXAddress(None)), (None, None))

    def test_sweep(self) -> None:
        """
        Entries of clients with no session and a full bucket go at the next
        sweep: a flood from many addresses leaves nothing behind.
        """
        limits = ClientLimits(self.clock, maxConcurrent=5, rate=100, burst=10)
        keys = [limits.admit(ip4(f"10.0.{i // 256}.{i % 256}"))[0] for i in range(1000)]
        held = keys[0]
        for key in keys[1:]:
            limits.release(key)
        self.assertEqual(len(limits), 1000)
        self.clock.advance(SWEEP_INTERVAL)
        self.assertEqual(len(limits), 1)
        limits.release(held)
        self.clock.advance(SWEEP_INTERVAL)
        self.assertEqual(len(limits), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
