"""
Tests for L{txsockproxy.proxyprotocol}: headers written are read back by
Twisted's own PROXY protocol parser and by ours; what a peer sends is read
strictly, incrementally, and never raises anything but L{HeaderError}.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.haproxy import proxyEndpoint
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txsockproxy.proxyprotocol import (
    NEED_MORE,
    TLV_AUTHORITY,
    TLV_UNIQUE_ID,
    HeaderError,
    ProxyHeader,
    encodeV1,
    encodeV2,
    parseHeader,
)

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str).filter(lambda a: not a.startswith("::ffff:"))
ports = st.integers(0, 65535)


@implementer(IStreamServerEndpoint)
class CapturingEndpoint:
    """
    A server endpoint that keeps the factory it is asked to listen with.
    """

    factory: IProtocolFactory

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[None]:
        self.factory = factory
        return defer.succeed(None)


def twistedPeer(data: bytes) -> tuple[object, object, bytes]:
    """
    What Twisted's PROXY protocol wrapper (C{proxyEndpoint}, its public
    entry) makes of C{data}: the peer and host addresses it gives the
    wrapped protocol, and the payload it passes on.
    """
    received: list[bytes] = []

    class Recorder(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    captured = CapturingEndpoint()
    proxyEndpoint(captured).listen(Factory.forProtocol(Recorder))
    wrapper: Any = captured.factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
    wrapper.makeConnection(StringTransport())
    wrapper.dataReceived(data)
    return wrapper.getPeer(), wrapper.getHost(), b"".join(received)


class EncoderAgainstTwistedTests(SynchronousTestCase):
    """
    Headers we write, read by Twisted's parser (L{HAProxyWrappingFactory}),
    give the addresses they were written for.
    """

    @settings(max_examples=200, deadline=None)
    @given(ipv4, ipv4, ports, ports, st.sampled_from(["v1", "v2"]))
    def test_ipv4(self, src: str, dst: str, sport: int, dport: int, version: str) -> None:
        source = IPv4Address("TCP", src, sport)
        destination = IPv4Address("TCP", dst, dport)
        encode = encodeV1 if version == "v1" else encodeV2
        peer, host, payload = twistedPeer(encode(source, destination) + b"payload")
        self.assertEqual(peer, source)
        self.assertEqual(host, destination)
        self.assertEqual(payload, b"payload")

    @settings(max_examples=200, deadline=None)
    @given(ipv6, ipv6, ports, ports, st.sampled_from(["v1", "v2"]))
    def test_ipv6(self, src: str, dst: str, sport: int, dport: int, version: str) -> None:
        source = IPv6Address("TCP", src, sport)
        destination = IPv6Address("TCP", dst, dport)
        encode = encodeV1 if version == "v1" else encodeV2
        peer, host, _ = twistedPeer(encode(source, destination))
        # Twisted's version 2 reader writes addresses uncompressed.
        self.assertEqual(ipaddress.ip_address(peer.host), ipaddress.ip_address(src))  # type: ignore[attr-defined]
        self.assertEqual(ipaddress.ip_address(host.host), ipaddress.ip_address(dst))  # type: ignore[attr-defined]
        self.assertEqual((peer.port, host.port), (sport, dport))  # type: ignore[attr-defined]

    @settings(max_examples=100, deadline=None)
    @given(
        ipv4, ipv4, ports, ports,
        st.one_of(st.none(), st.from_regex(r"[a-z0-9.-]{1,60}", fullmatch=True)),
        st.binary(min_size=1, max_size=128),
    )
    def test_v2TLVs(
        self, src: str, dst: str, sport: int, dport: int, authority: str | None, uid: bytes
    ) -> None:
        """
        TLVs (authority, unique id) do not disturb Twisted's reading, and
        ours gives them back.
        """
        source = IPv4Address("TCP", src, sport)
        destination = IPv4Address("TCP", dst, dport)
        header = encodeV2(source, destination, authority=authority, uniqueId=uid)
        peer, _, payload = twistedPeer(header + b"x")
        self.assertEqual((peer, payload), (source, b"x"))
        ours = parseHeader(header + b"x")
        assert isinstance(ours, ProxyHeader)
        self.assertEqual(ours.length, len(header))
        self.assertEqual(ours.tlvs.get(TLV_UNIQUE_ID), uid)
        self.assertEqual(ours.tlvs.get(TLV_AUTHORITY), authority.encode() if authority else None)

    def test_mixedFamilies(self) -> None:
        """
        An IPv4 client of an IPv6 listener is written as IPv4-mapped IPv6;
        an IPv4-mapped client of an IPv4-mapped listener as plain IPv4.
        """
        header = encodeV1(IPv4Address("TCP", "192.0.2.1", 5), IPv6Address("TCP", "2001:db8::1", 6))
        self.assertEqual(header, b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::1 5 6\r\n")
        header = encodeV1(
            IPv6Address("TCP", "::ffff:192.0.2.1", 5), IPv6Address("TCP", "::ffff:192.0.2.2", 6)
        )
        self.assertEqual(header, b"PROXY TCP4 192.0.2.1 192.0.2.2 5 6\r\n")

    def test_unixClients(self) -> None:
        """
        A unix-socket client: version 1 says UNKNOWN (the specification's
        word for what is not TCP); version 2 gives the AF_UNIX family
        (0x31, stream) with the paths, NUL-padded to 108 bytes each.
        """
        client = UNIXAddress(None)
        listener = UNIXAddress(b"/run/proxy.sock")
        self.assertEqual(encodeV1(client, listener), b"PROXY UNKNOWN\r\n")
        header = encodeV2(client, listener)
        self.assertEqual(header[13], 0x31)
        self.assertEqual(struct.unpack("!H", header[14:16])[0], 216)
        parsed = parseHeader(header)
        assert isinstance(parsed, ProxyHeader)
        self.assertEqual(parsed.destination, UNIXAddress(b"/run/proxy.sock"))


class ParserTests(SynchronousTestCase):
    """
    L{parseHeader} reads what load balancers send, and refuses the rest.
    """

    def test_v1(self) -> None:
        header = parseHeader(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET")
        assert isinstance(header, ProxyHeader)
        self.assertEqual(header.source, IPv4Address("TCP", "192.0.2.1", 56324))
        self.assertEqual(header.destination, IPv4Address("TCP", "198.51.100.2", 443))
        self.assertEqual(header.length, len(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"))

    def test_unknown(self) -> None:
        """
        C{PROXY UNKNOWN}, bare or with anything after it, is valid and
        gives no address: the connection's own stand.
        """
        for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"):
            header = parseHeader(line + b"data")
            assert isinstance(header, ProxyHeader)
            self.assertEqual((header.source, header.length), (None, len(line)))

    def test_v2Local(self) -> None:
        """
        A version 2 C{LOCAL} header (a load balancer's own health check)
        gives no address, whatever its address block holds.
        """
        data = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x11]) + struct.pack("!H", 12) + bytes(12)
        header = parseHeader(data)
        assert isinstance(header, ProxyHeader)
        self.assertEqual((header.source, header.length), (None, 28))

    def test_everyPrefixNeedsMore(self) -> None:
        """
        Every proper prefix of a valid header asks for more.
        """
        for whole in (
            encodeV1(IPv4Address("TCP", "192.0.2.1", 1), IPv4Address("TCP", "192.0.2.2", 2)),
            encodeV2(
                IPv6Address("TCP", "2001:db8::1", 1), IPv6Address("TCP", "2001:db8::2", 2),
                authority="example.com", uniqueId=b"id",
            ),
        ):
            for n in range(len(whole)):
                self.assertEqual(parseHeader(whole[:n]), NEED_MORE, whole[:n])

    def test_malformed(self) -> None:
        """
        Each malformed header is refused with a reason.
        """
        cases = {
            b"GET / HTTP/1.1\r\n": "not a PROXY protocol header",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n": "expected 4 fields",
            b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n": "bad TCP4 address",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n": "bad TCP4 address",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n": "bad port",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n": "bad port",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n": "bad port",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n": "not ASCII",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n": "unknown protocol",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n": "expected 4 fields",
            b"PROXY TCP4 1.2.3.4\n": "stray CR or LF",
            b"PROXY " + b"x" * 120: "without CRLF",
            b"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x0c" + bytes(12): "version 1",
            b"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x0c" + bytes(12): "unknown command",
            b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04" + bytes(4): "address block",
            b"\r\n\r\n\x00\r\nQUIT\n\x21\x12\x00\x0c" + bytes(12): "not a stream",
            b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0e" + bytes(14): "truncated TLV",
            b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff": "more than",
            b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c" + bytes(12): "not a PROXY",
        }
        for data, reason in cases.items():
            with self.assertRaises(HeaderError, msg=data) as caught:
                parseHeader(data)
            self.assertIn(reason, str(caught.exception), data)
            self.assertNotIn("\n", str(caught.exception))

    @settings(max_examples=2000, deadline=None)
    @given(st.binary(max_size=300))
    def test_anyBytes(self, data: bytes) -> None:
        """
        Whatever a peer sends, the parser answers, asks for more, or refuses
        with L{HeaderError}; nothing else.
        """
        for prefix in (b"", b"PROXY ", b"PROXY TCP4 ", b"\r\n\r\n\x00\r\nQUIT\n"):
            try:
                result = parseHeader(prefix + data)
            except HeaderError:
                continue
            self.assertTrue(result == NEED_MORE or isinstance(result, ProxyHeader))
