"""
Tests for L{txsockproxy.acl}: rules read, first match decides, unix peers
by credentials.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from txsockproxy.acl import AccessList, parseRule, peerCredentials


def ip4(host: str) -> IPv4Address:
    return IPv4Address("TCP", host, 1234)


class RuleTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """
        Addresses, networks (host bits allowed), all, uid= and gid= are read
        and written back.
        """
        for text, back in [
            ("allow 10.0.0.0/8", "allow 10.0.0.0/8"),
            ("deny 192.0.2.7", "deny 192.0.2.7/32"),
            ("allow 10.1.2.3/16", "allow 10.1.0.0/16"),
            ("deny 2001:db8::/32", "deny 2001:db8::/32"),
            ("deny all", "deny all"),
            ("allow uid=1000", "allow uid=1000"),
            ("allow gid=0", "allow gid=0"),
        ]:
            self.assertEqual(str(parseRule(text)), back)

    def test_bad(self) -> None:
        for text, why in [
            ("permit 10.0.0.0/8", "is not 'allow WHAT'"),
            ("allow", "is not 'allow WHAT'"),
            ("allow 10.0.0.0/33", "is not an address"),
            ("allow uid=x", "uid must be a number"),
            ("deny everyone", "is not an address"),
        ]:
            with self.assertRaises(ValueError) as caught:
                parseRule(text)
            self.assertIn(why, str(caught.exception))


class AccessListTests(SynchronousTestCase):
    def test_firstMatchDecides(self) -> None:
        acl = AccessList([parseRule(r) for r in (
            "deny 10.1.0.0/16", "allow 10.0.0.0/8", "deny all",
        )])
        self.assertEqual(acl.decide(ip4("10.1.2.3"))[0], False)
        allowed, rule = acl.decide(ip4("10.2.0.1"))
        self.assertEqual((allowed, str(rule)), (True, "allow 10.0.0.0/8"))
        self.assertEqual(acl.decide(ip4("192.0.2.1"))[0], False)

    def test_noMatchAllows(self) -> None:
        acl = AccessList([parseRule("deny 10.0.0.0/8")])
        self.assertEqual(acl.decide(ip4("192.0.2.1")), (True, None))

    def test_ipv4Mapped(self) -> None:
        """
        An IPv4 client of an IPv6 listener (IPv4-mapped) matches IPv4 rules.
        """
        acl = AccessList([parseRule("deny 192.0.2.0/24")])
        self.assertFalse(acl.decide(IPv6Address("TCP", "::ffff:192.0.2.9", 1))[0])
        self.assertTrue(acl.decide(IPv6Address("TCP", "2001:db8::1", 1))[0])

    def test_unixCredentials(self) -> None:
        """
        uid= and gid= rules match unix peers by their credentials, and no
        IP client.
        """
        acl = AccessList([parseRule("allow uid=1000"), parseRule("deny all")])
        self.assertTrue(acl.decide(UNIXAddress(None), (1000, 50))[0])
        self.assertFalse(acl.decide(UNIXAddress(None), (1001, 50))[0])
        self.assertFalse(acl.decide(ip4("10.0.0.1"))[0])

    def test_peerCredentials(self) -> None:
        """
        The credentials of a real unix socket's peer are this process's.
        """
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertEqual(peerCredentials(a), (os.getuid(), os.getgid()))
        tcp = socket.socket()
        self.addCleanup(tcp.close)
        self.assertIsNone(peerCredentials(tcp))
        self.assertIsNone(peerCredentials(object()))
