"""
Tests for L{txsockproxy.sni}: the SNI name from a client's first bytes.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from txsockproxy.sni import NEED_MORE, NOT_TLS, HelloReader, parseServerName


def clientHello(serverName: bytes | None) -> bytes:
    """
    The ClientHello OpenSSL sends for C{serverName} (no SNI if L{None}).
    """
    connection = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    if serverName is not None:
        connection.set_tlsext_host_name(serverName)
    connection.set_connect_state()
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass
    return connection.bio_read(65536)


def records(hello: bytes, size: int) -> bytes:
    """
    Re-frame the handshake of C{hello} into TLS records of at most C{size}
    bytes each, as a client may legally do.
    """
    body = hello[5:]
    out = b""
    for i in range(0, len(body), size):
        chunk = body[i : i + size]
        out += hello[:3] + len(chunk).to_bytes(2, "big") + chunk
    return out


hostnames = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)


class ParseServerNameTests(SynchronousTestCase):
    """
    L{parseServerName} finds the SNI host name in a ClientHello.
    """

    def test_openSSLHello(self) -> None:
        """
        The name in a real OpenSSL ClientHello is found, in lower case.
        """
        self.assertEqual(parseServerName(clientHello(b"Db.Example.COM")), ("ok", "db.example.com"))

    def test_noServerName(self) -> None:
        """
        A ClientHello without SNI is complete but gives no name.
        """
        self.assertEqual(parseServerName(clientHello(None)), ("ok", None))

    def test_needMoreUntilComplete(self) -> None:
        """
        Every proper prefix of a ClientHello asks for more bytes.
        """
        hello = clientHello(b"a.test")
        for end in range(len(hello)):
            self.assertEqual(parseServerName(hello[:end]), (NEED_MORE, None), end)

    def test_notTLS(self) -> None:
        """
        Bytes of other protocols are recognised as not TLS at once.
        """
        for data in (b"GET / HTTP/1.1\r\n", b"SSH-2.0-OpenSSH", b"*1\r\n$4\r\nPING\r\n", b"\x16\x01"):
            self.assertEqual(parseServerName(data)[0], NOT_TLS, data)

    @settings(max_examples=60, deadline=None)
    @given(name=hostnames, size=st.integers(min_value=16, max_value=2000))
    def test_fragmentedRecords(self, name: str, size: int) -> None:
        """
        The name is found when the ClientHello is split over several TLS
        records, and every prefix of those records asks for more.
        """
        framed = records(clientHello(name.encode()), size)
        self.assertEqual(parseServerName(framed), ("ok", name))
        self.assertEqual(parseServerName(framed[: len(framed) // 2])[0], NEED_MORE)

    @settings(max_examples=300, deadline=None)
    @given(data=st.binary(max_size=600))
    def test_garbageNeverRaises(self, data: bytes) -> None:
        """
        Arbitrary bytes (also behind a plausible TLS header) never raise.
        """
        for candidate in (data, b"\x16\x03\x01" + data, b"\x16\x03\x01\x01\x00\x01" + data):
            self.assertIn(parseServerName(candidate)[0], ("ok", NEED_MORE, NOT_TLS))

    def test_serverNameListLength(self) -> None:
        """
        A server_name list whose length is not that of its extension makes
        the hello malformed (not routed by the name it seems to carry).
        """
        hello = clientHello(b"a.test")
        at = hello.index(b"a.test") - 5  # the list's length, before type and name length
        listLength = int.from_bytes(hello[at : at + 2], "big")
        self.assertEqual(parseServerName(hello), ("ok", "a.test"))
        for wrong in (listLength + 5, listLength - 1):
            bad = hello[:at] + wrong.to_bytes(2, "big") + hello[at + 2 :]
            self.assertEqual(parseServerName(bad), (NOT_TLS, None), wrong)


class HelloReaderTests(SynchronousTestCase):
    """
    L{HelloReader} reads a ClientHello fed a piece at a time.
    """

    @settings(max_examples=100, deadline=None)
    @given(
        name=st.one_of(st.none(), hostnames),
        size=st.integers(min_value=1, max_value=600),
        cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    )
    def test_piecesAsWhole(self, name: str | None, size: int, cuts: list[int]) -> None:
        """
        Fed in pieces (cut anywhere, over records of any size, down to one
        byte), it says "need more" until the hello is complete and then
        what L{parseServerName} says of the whole, also for bytes after it.
        """
        framed = records(clientHello(None if name is None else name.encode()), size) + b"extra"
        whole = parseServerName(framed)
        self.assertEqual(whole, ("ok", name))
        reader = HelloReader()
        bounds = sorted({min(c, len(framed)) for c in cuts} | {len(framed)})
        start = 0
        results = []
        for end in bounds:
            results.append(reader.feed(framed[start:end]))
            start = end
        self.assertEqual(results[-1], whole)
        self.assertTrue(all(r == (NEED_MORE, None) for r in results if r != whole), results)

    def test_oneByteRecords(self) -> None:
        """
        A ClientHello sent as one-byte records, one record per piece (what
        made the session re-read everything it held at every read), gives
        its name at the last one.
        """
        framed = records(clientHello(b"one.test"), 1)
        reader = HelloReader()
        pieces = [framed[i : i + 6] for i in range(0, len(framed), 6)]
        for piece in pieces[:-1]:
            self.assertEqual(reader.feed(piece), (NEED_MORE, None))
        self.assertEqual(reader.feed(pieces[-1]), ("ok", "one.test"))
        self.assertEqual(reader.feed(b"later"), ("ok", "one.test"))

    def test_notTLSAtOnce(self) -> None:
        """
        Bytes that cannot begin a TLS record end the reading at once.
        """
        reader = HelloReader()
        self.assertEqual(reader.feed(b"\x16"), (NEED_MORE, None))
        self.assertEqual(reader.feed(b"\x01GET"), (NOT_TLS, None))

