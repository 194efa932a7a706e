"""
The accelerator's TLS layer for listeners (L{txsockproxy._fast.tls}): the
records of one read are handed to the protocol together, a write is sent
with one call, and the end of the stream comes after every byte.
"""

from __future__ import annotations

from typing import Any, Optional

from OpenSSL import SSL
from OpenSSL.crypto import X509, PKey
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import providedBy

from tests.tls_support import issue
from txsockproxy._fast import tls as fasttls
from txsockproxy.accelerator import tlsFactoryFor


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: Optional[Failure] = None

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost = reason


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def serverOptions() -> CertificateOptions:
    issued = issue(("localhost",))
    return CertificateOptions(
        privateKey=PKey.from_cryptography_key(issued.key),
        certificate=X509.from_cryptography(issued.certificate),
    )


class Pair:
    """
    A server protocol from C{factoryType} and a pyOpenSSL client over
    memory BIOs, handshaken.
    """

    def __init__(self, factoryType: Any = fasttls.FastTLSFactory) -> None:
        self.app = Recorder()
        factory = factoryType(serverOptions(), False, Factory.forProtocol(lambda: self.app),
                              clock=MemoryReactorClock())
        self.server = factory.buildProtocol(None)
        self.wire = CountingTransport()
        self.server.makeConnection(self.wire)
        self.client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
        self.client.set_connect_state()
        for _ in range(10):
            try:
                self.client.do_handshake()
            except SSL.WantReadError:
                pass
            self.toServer()
            self.toClient()
        self.client.do_handshake()
        self.wire.writes = 0

    def toServer(self) -> None:
        try:
            data = self.client.bio_read(1 << 20)
        except SSL.WantReadError:
            return
        self.server.dataReceived(data)

    def toClient(self) -> None:
        data = self.wire.value()
        self.wire.clear()
        if data:
            self.client.bio_write(data)

    def clientReads(self) -> bytes:
        chunks = []
        while True:
            try:
                chunks.append(self.client.recv(1 << 16))
            except SSL.WantReadError:
                return b"".join(chunks)


class FastTLSTests(SynchronousTestCase):
    def test_recordsTogether(self) -> None:
        """
        The records that came in one read reach the protocol in one call,
        whole and in order.
        """
        pair = Pair()
        sent = [bytes([i]) * 10_000 for i in range(5)]
        for chunk in sent:
            pair.client.send(chunk)
        pair.toServer()
        self.assertEqual(pair.app.received, [b"".join(sent)])

    def test_twistedsOnePerRecord(self) -> None:
        """
        What it improves on: Twisted's own layer hands over each record.
        """
        pair = Pair(TLSMemoryBIOFactory)
        for i in range(3):
            pair.client.send(bytes([i]) * 10_000)
        pair.toServer()
        self.assertEqual(len(pair.app.received), 3)

    def test_limit(self) -> None:
        """
        At most L{fasttls.DELIVER_LIMIT} bytes (plus a record) per call.
        """
        pair = Pair()
        total = fasttls.DELIVER_LIMIT * 2 + 5
        payload = b"x" * total
        pair.client.sendall(payload)
        pair.toServer()
        self.assertEqual(b"".join(pair.app.received), payload)
        self.assertGreater(len(pair.app.received), 1)
        self.assertLess(max(map(len, pair.app.received)), fasttls.DELIVER_LIMIT + (1 << 14) + 1)

    def test_dataThenCloseNotify(self) -> None:
        """
        Bytes followed by a close_notify in the same read: the bytes first,
        then a clean end.
        """
        pair = Pair()
        pair.client.send(b"last words")
        pair.client.shutdown()
        pair.toServer()
        self.assertEqual(pair.app.received, [b"last words"])
        self.assertTrue(pair.wire.disconnecting)
        pair.server.connectionLost(Failure(Exception("transport gone")))
        self.assertIsNotNone(pair.app.lost)

    def test_dataThenGarbage(self) -> None:
        """
        Bytes followed by a record that does not decrypt: the bytes reach
        the protocol, then the connection fails with OpenSSL's error.
        """
        pair = Pair()
        pair.client.send(b"good")
        good = pair.client.bio_read(1 << 16)
        pair.server.dataReceived(good + b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
        self.assertEqual(pair.app.received, [b"good"])
        self.assertTrue(pair.wire.disconnecting)
        pair.server.connectionLost(Failure(Exception("transport gone")))
        assert pair.app.lost is not None
        self.assertTrue(pair.app.lost.check(SSL.Error))

    def test_writeOneCall(self) -> None:
        """
        A write of many records reaches the socket's transport in one call,
        and the client decrypts exactly what was written.
        """
        pair = Pair()
        payload = bytes(range(256)) * 400
        pair.server.write(payload)
        self.assertEqual(pair.wire.writes, 1)
        pair.toClient()
        self.assertEqual(pair.clientReads(), payload)

    def test_smallWritesAggregated(self) -> None:
        """
        Small writes are still aggregated until the reactor's next turn
        (Twisted's behaviour kept).
        """
        pair = Pair()
        pair.server.write(b"a")
        pair.server.write(b"b")
        self.assertEqual(pair.wire.writes, 0)
        pair.server.factory._clock.advance(0)
        self.assertEqual(pair.wire.writes, 1)
        pair.toClient()
        self.assertEqual(pair.clientReads(), b"ab")


class MakeConnectionTests(SynchronousTestCase):
    def test_providesAsTwisteds(self) -> None:
        """
        Connected, the layer provides the interfaces Twisted's own does,
        over every kind of transport it has seen.
        """
        for _ in range(2):
            ours = Pair().server
            twisteds = Pair(TLSMemoryBIOFactory).server
            self.assertEqual(list(providedBy(ours)), list(providedBy(twisteds)))
            self.assertTrue(ISSLTransport.providedBy(ours))

    def test_handshakes(self) -> None:
        """
        It starts the handshake as Twisted's does: the client's bytes
        then flow.
        """
        pair = Pair()
        pair.client.send(b"after the handshake")
        pair.toServer()
        self.assertEqual(pair.app.received, [b"after the handshake"])


class ProbeTests(SynchronousTestCase):
    def test_makeConnectionChanged(self) -> None:
        """
        A Twisted whose C{makeConnection} is not the one the layer's was
        written from is named as missing it: its own is used.
        """
        from twisted.protocols import tls

        def makeConnection(self: Any, transport: Any) -> None:
            self._tlsConnection = self.factory._creatorCallable(self)
            self._somethingNew = True

        self.patch(tls.TLSMemoryBIOProtocol, "makeConnection", makeConnection)
        self.assertIn(
            "TLSMemoryBIOProtocol.makeConnection as of Twisted 26.4-26.10", fasttls.missing()
        )

    def test_nothingMissing(self) -> None:
        """
        This Twisted has what the layer relies on, so L{fasttls.tlsFactory}
        makes the accelerator's factory.
        """
        self.assertEqual(fasttls.missing(), [])
        made = fasttls.tlsFactory(serverOptions(), False, Factory.forProtocol(Protocol))
        self.assertIsInstance(made, fasttls.FastTLSFactory)

    def test_fallback(self) -> None:
        """
        A Twisted lacking any of it gets Twisted's own factory.
        """
        self.patch(fasttls, "_checked", False)
        made = fasttls.tlsFactory(serverOptions(), False, Factory.forProtocol(Protocol))
        self.assertIs(type(made), TLSMemoryBIOFactory)

    def test_missingNamed(self) -> None:
        """
        A private name gone from Twisted's TLS protocol is named.
        """
        from twisted.protocols import tls

        self.patch(tls.TLSMemoryBIOProtocol, "_flushSendBIO", None)
        del tls.TLSMemoryBIOProtocol._flushSendBIO
        self.assertIn("TLSMemoryBIOProtocol._flushSendBIO", fasttls.missing())

    def test_otherReactor(self) -> None:
        """
        On a reactor that is not the accelerator's, listeners use Twisted's
        factory.
        """
        self.assertIs(tlsFactoryFor(MemoryReactorClock()), TLSMemoryBIOFactory)

    def test_acceleratorReactor(self) -> None:
        """
        On the accelerator's reactor, its layer.
        """
        from txsockproxy._fast.reactor import EPollReactor

        reactor = EPollReactor()
        self.addCleanup(reactor._poller.close)
        self.assertIs(tlsFactoryFor(reactor), fasttls.tlsFactory)
