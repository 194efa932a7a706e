"""
Tests for L{txsockproxy.addresses}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from txsockproxy.addresses import formatAddress


class FormatAddressTests(SynchronousTestCase):
    """
    L{formatAddress} writes each kind of address as the logs show it.
    """

    def test_kinds(self) -> None:
        """
        IP addresses are C{host:port}; unix sockets C{unix:path}, or
        C{unix} when unnamed; anything else its C{str()}.
        """
        self.assertEqual(formatAddress(IPv4Address("TCP", "192.0.2.7", 40650)), "192.0.2.7:40650")
        self.assertEqual(formatAddress(IPv6Address("TCP", "::1", 5)), "[::1]:5")
        self.assertEqual(formatAddress(UNIXAddress("/run/a.sock")), "unix:/run/a.sock")
        self.assertEqual(formatAddress(UNIXAddress(None)), "unix")
        self.assertEqual(formatAddress(_Other()), "other")  # type: ignore[arg-type]


class _Other:
    def __str__(self) -> str:
        return "other"
