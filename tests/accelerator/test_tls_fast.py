"""
The accelerator with TLS backends: its relay path connects an endpoint it
does not know (L{txsockproxy.tlsclient.HandshakingEndpoint}) through the
endpoint's own C{connect()}, and shuts a TLS transport's write side as the
portable path does (C{loseConnection()}, a close_notify).
"""

from __future__ import annotations

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from tests.test_tlsclient import FakeEndpoint, RecordingClientFactory
from txsockproxy._fast import relay as fastrelay
from txsockproxy._fast.path import AcceleratedRelayPath
from txsockproxy.congestion import Congestion
from txsockproxy.tlsclient import HandshakingEndpoint


class AcceleratedTLSTests(SynchronousTestCase):
    """
    L{AcceleratedRelayPath} leaves TLS backends to their endpoint.
    """

    def test_connectThroughEndpoint(self) -> None:
        """
        A L{HandshakingEndpoint} is connected through its C{connect()}, and
        the backend's protocol is built once the handshake is done.
        """
        wrapped = FakeEndpoint()
        factory = RecordingClientFactory()
        path = AcceleratedRelayPath(MemoryReactorClock(), "copy")
        path.connect(HandshakingEndpoint(wrapped), factory, 5, Congestion("auto"))
        tls, _ = wrapped.connected()
        self.assertEqual(factory.built, [])
        tls.wrappedProtocol.handshakeCompleted()  # type: ignore[attr-defined]
        self.assertEqual(len(factory.built), 1)
        self.assertEqual(factory.failures, [])

    def test_shutWriteTLS(self) -> None:
        """
        The accelerator shuts a TLS transport's write side with
        C{loseConnection()}.
        """
        transport = StringTransport()
        directlyProvides(transport, ISSLTransport)
        fastrelay.shutWrite(transport)
        self.assertTrue(transport.disconnecting)
