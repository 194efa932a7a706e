"""
Unit tests for L{txsockproxy.relay}: the session's states, with fake transports,
fake endpoints and a L{Clock}.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Optional, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.error import ConnectBindError, ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, ISSLTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.fakes import HalfCloseTransport, Proxy, lost, resetSocket, tcpPair
from txsockproxy.interfaces import IBackendInfo, IBalancer, IConnectionInfo
from txsockproxy.listening import LISTENING
from txsockproxy.portable import PortableRelayPath
from txsockproxy.proxyprotocol import TLV_UNIQUE_ID, ProxyHeader, parseHeader
from txsockproxy.relay import (
    HANDSHAKE_TIMEOUT,
    HOLD_LIMIT,
    SETTLE_TIME,
    BackendProtocol,
    ConnectionInfo,
    FrontendProtocol,
)


class InterfaceTests(SynchronousTestCase):
    """
    The relay's protocols and info objects provide their interfaces.
    """

    def test_protocolsAreHalfCloseable(self) -> None:
        """
        L{FrontendProtocol} and L{BackendProtocol} provide
        L{IHalfCloseableProtocol}, so endpoints forward half-closes to them.
        """
        proxy = Proxy()
        client, _ = proxy.accept()
        backend, _ = proxy.endpoints["a"].succeed()
        self.assertIsInstance(client, FrontendProtocol)
        self.assertIsInstance(backend, BackendProtocol)
        verifyObject(IHalfCloseableProtocol, client)
        verifyObject(IHalfCloseableProtocol, backend)

    def test_infoObjects(self) -> None:
        """
        A session's connection info provides L{IConnectionInfo} and carries
        the client's and the listener's addresses; a backend provides
        L{IBackendInfo}.
        """
        proxy = Proxy()
        peer = IPv4Address("TCP", "192.0.2.7", 5555)
        client, _ = proxy.accept(peer)
        info = client.session.connection  # type: ignore[union-attr]
        verifyObject(IConnectionInfo, info)
        self.assertEqual(info.peer, peer)
        self.assertEqual(info.local, IPv4Address("TCP", "127.0.0.1", 8080))
        self.assertIsNone(info.serverName)
        verifyObject(IBackendInfo, proxy.backends["a"])


class LocalAddressTests(SynchronousTestCase):
    """
    The local address of a connection (L{ConnectionInfo.local}): asked of
    the transport, once per listening port bound to one address.
    """

    class Port:
        def __init__(self, host: str) -> None:
            self.host = host

        def getHost(self) -> IPv4Address:
            return IPv4Address("TCP", self.host, 8080)

    def accepted(self, port: Any, local: str) -> HalfCloseTransport:
        transport = HalfCloseTransport()
        transport.hostAddress = IPv4Address("TCP", local, 8080)
        transport.server = port  # type: ignore[attr-defined]
        asked = self.asked

        def getHost() -> IPv4Address:
            asked.append(local)
            return IPv4Address("TCP", local, 8080)

        transport.getHost = getHost  # type: ignore[method-assign]
        return transport

    def setUp(self) -> None:
        self.asked: list[str] = []

    def test_boundToOneAddress(self) -> None:
        """
        The connections of a port bound to one address all have it: the
        first one's transport is asked, the others' are not.
        """
        port = self.Port("192.0.2.1")
        locals_ = [
            ConnectionInfo.ofTransport(self.accepted(port, "192.0.2.1")).local
            for _ in range(3)
        ]
        self.assertEqual(locals_, [IPv4Address("TCP", "192.0.2.1", 8080)] * 3)
        self.assertEqual(self.asked, ["192.0.2.1"])

    def test_wildcard(self) -> None:
        """
        The connections of a port bound to a wildcard address are asked one
        by one: each has the address it was reached at.
        """
        port = self.Port("0.0.0.0")
        locals_ = [
            ConnectionInfo.ofTransport(self.accepted(port, host)).local
            for host in ("127.0.0.1", "192.0.2.1")
        ]
        self.assertEqual(
            [address.host for address in locals_],  # type: ignore[attr-defined]
            ["127.0.0.1", "192.0.2.1"],
        )
        self.assertEqual(self.asked, ["127.0.0.1", "192.0.2.1"])


class ConnectingTests(SynchronousTestCase):
    """
    What the session does while the backend connect is pending.
    """

    def test_holdsClientBytesUntilConnected(self) -> None:
        """
        Bytes the client sends before the backend is connected are held and
        written to the backend, in order, once it connects.
        """
        proxy = Proxy()
        client, _ = proxy.accept()
        client.dataReceived(b"hello ")
        client.dataReceived(b"world")
        self.assertEqual(len(proxy.endpoints["a"].attempts), 1)
        _, bt = proxy.endpoints["a"].succeed()
        self.assertEqual(bt.value(), b"hello world")
        self.assertEqual(proxy.backends["a"].bytesOut, 11)

    def test_pausesClientWhenHoldIsFull(self) -> None:
        """
        Once C{HOLD_LIMIT} bytes are held the client is paused, and it is
        resumed when the backend connects.
        """
        proxy = Proxy()
        client, ct = proxy.accept()
        client.dataReceived(b"x" * (HOLD_LIMIT - 1))
        self.assertEqual(ct.producerState, "producing")
        client.dataReceived(b"x")
        self.assertEqual(ct.producerState, "paused")
        _, bt = proxy.endpoints["a"].succeed()
        self.assertEqual(ct.producerState, "producing")
        self.assertEqual(len(bt.value()), HOLD_LIMIT)

    def test_transportsAreEachOthersProducers(self) -> None:
        """
        Once connected, each transport is registered as the other's
        streaming producer, so a slow reader pauses the fast writer.
        """
        proxy = Proxy()
        _, ct = proxy.accept()
        _, bt = proxy.endpoints["a"].succeed()
        self.assertIs(bt.producer.transport, ct)
        self.assertTrue(bt.streaming)
        self.assertIs(ct.producer.transport, bt)
        self.assertTrue(ct.streaming)
        verifyObject(IPushProducer, bt.producer)
        bt.producer.pauseProducing()
        self.assertEqual(ct.producerState, "paused")
        bt.producer.resumeProducing()
        self.assertEqual(ct.producerState, "producing")

    def test_pausedSidesWatched(self) -> None:
        """
        A side paused by the other's flow control is watched by the proxy's
        L{PausedWatch} until it is resumed, or the session ends.
        """
        proxy = Proxy()
        _, ct = proxy.accept()
        _, bt = proxy.endpoints["a"].succeed()
        watch = proxy.factory.watch
        bt.producer.pauseProducing()
        ct.producer.pauseProducing()
        self.assertEqual(len(watch), 0, "fake transports have no socket to watch")
        session = next(iter(proxy.factory.sessions.open))
        self.assertEqual(session._paused, 3)
        bt.producer.resumeProducing()
        self.assertEqual(session._paused, 2)

    def test_pausedSideReset(self) -> None:
        """
        A paused side found reset ends the session with a reset of both
        sides, recorded as that side's reset.
        """
        proxy = Proxy()
        client, ct = proxy.accept()
        _, bt = proxy.endpoints["a"].succeed()
        session = next(iter(proxy.factory.sessions.open))
        bt.producer.pauseProducing()
        session.pausedSideFailed(True, errno.ECONNRESET)
        self.assertTrue(ct.aborted)
        self.assertTrue(bt.aborted)
        self.assertEqual(session.ended, "client reset")

    def test_pausedSideFinStartsHalfClosedTimeout(self) -> None:
        """
        A FIN seen on a paused side (behind bytes not yet read) starts the
        half-closed timeout: without traffic the session is reset when it
        runs out.
        """
        proxy = Proxy(halfClosedTimeout=30)
        _, ct = proxy.accept()
        _, bt = proxy.endpoints["a"].succeed()
        session = next(iter(proxy.factory.sessions.open))
        session.pausedSideFinished(False)
        proxy.clock.advance(30)
        self.assertTrue(ct.aborted)
        self.assertTrue(bt.aborted)
        self.assertEqual(session.ended, "half-closed timeout")

    def test_clientLeavesWhileConnecting(self) -> None:
        """
        A client that goes away while the connect is pending cancels the
        connect; no other backend is tried and all counts return to zero.
        """
        proxy = Proxy()
        client, _ = proxy.accept()
        endpoint = proxy.endpoints["a"]
        self.assertEqual(proxy.backends["a"].active, 1)
        client.connectionLost(lost(clean=False))
        self.assertEqual(endpoint.cancelled, 1)
        self.assertEqual(proxy.endpoints["b"].attempts, [])
        self.assertEqual(proxy.backends["a"].active, 0)
        self.assertEqual(proxy.backends["a"].failed, 0)
        self.assertEqual(proxy.pool.active, 0)
        self.assertEqual(client.session.ended, "client left while connecting")  # type: ignore[union-attr]

    def test_clientEOFBeforeConnected(self) -> None:
        """
        A client that sends and half-closes before the backend connects has
        its bytes delivered and then the backend's write side shut.
        """
        proxy = Proxy()
        client, ct = proxy.accept()
        client.dataReceived(b"request")
        client.readConnectionLost()
        self.assertEqual(proxy.endpoints["a"].cancelled, 0)
        backend, bt = proxy.endpoints["a"].succeed()
        self.assertEqual(bt.value(), b"request")
        self.assertTrue(bt.writeClosed)
        self.assertIsNone(bt.producer)
        backend.dataReceived(b"reply")
        self.assertEqual(ct.value(), b"reply")


class RelayTests(SynchronousTestCase):
    """
    Relaying bytes and half-closes once connected.
    """

    def setUp(self) -> None:
        self.proxy = Proxy()
        self.client, self.ct = self.proxy.accept()
        self.backend, self.bt = self.proxy.endpoints["a"].succeed()

    def withSockets(
        self, clientSocket: Any = None, backendSocket: Any = None
    ) -> tuple[Any, HalfCloseTransport, Any, HalfCloseTransport]:
        """
        A session of a proxy of its own whose client's and backend's
        transports have the sockets given as their handles.

        @return: the client's protocol and transport, the backend's.
        """
        proxy = Proxy()
        client, ct = proxy.accept(transport=HalfCloseTransport(handle=clientSocket))
        backend, bt = proxy.endpoints["a"].succeed(handle=backendSocket)
        return client, ct, backend, bt

    def test_relaysBothWays(self) -> None:
        """
        Bytes go unchanged both ways and are counted on the backend.
        """
        self.client.dataReceived(b"up")
        self.backend.dataReceived(b"down!")
        self.assertEqual(self.bt.value(), b"up")
        self.assertEqual(self.ct.value(), b"down!")
        backend = self.proxy.backends["a"]
        self.assertEqual((backend.bytesOut, backend.bytesIn), (2, 5))
        self.assertEqual(backend.connected, 1)

    def test_clientHalfCloseFirst(self) -> None:
        """
        A client EOF shuts the backend's write side and unregisters the
        client as its producer; the backend's reply still reaches the client;
        the backend's EOF then shuts the client's write side and closes
        both; the session ends once both are gone.
        """
        self.client.dataReceived(b"question")
        self.client.readConnectionLost()
        self.assertTrue(self.bt.writeClosed)
        self.assertIsNone(self.bt.producer)
        self.assertFalse(self.ct.writeClosed)
        self.assertFalse(self.ct.disconnecting)
        self.backend.dataReceived(b"answer")
        self.assertEqual(self.ct.value(), b"answer")
        self.backend.readConnectionLost()
        self.assertTrue(self.ct.writeClosed)
        self.assertIsNone(self.ct.producer)
        self.assertTrue(self.ct.disconnecting)
        self.assertTrue(self.bt.disconnecting)
        self.assertFalse(self.ct.aborted or self.bt.aborted)
        self.client.connectionLost(lost())
        self.assertEqual(self.proxy.pool.active, 1)
        self.backend.connectionLost(lost())
        self.assertEqual(self.proxy.pool.active, 0)
        self.assertEqual(self.proxy.backends["a"].active, 0)
        self.assertEqual(self.client.session.ended, "client closed")  # type: ignore[union-attr]

    def test_backendHalfCloseFirst(self) -> None:
        """
        A backend EOF shuts the client's write side; the client can still
        send, and what it sends reaches the backend; the client's EOF then
        shuts the backend's write side and closes both.
        """
        self.backend.dataReceived(b"banner")
        self.backend.readConnectionLost()
        self.assertTrue(self.ct.writeClosed)
        self.assertIsNone(self.ct.producer)
        self.assertFalse(self.bt.writeClosed)
        self.client.dataReceived(b"late data")
        self.assertEqual(self.bt.value(), b"late data")
        self.client.readConnectionLost()
        self.assertTrue(self.bt.writeClosed)
        self.assertIsNone(self.bt.producer)
        self.assertTrue(self.ct.disconnecting and self.bt.disconnecting)
        self.backend.connectionLost(lost())
        self.client.connectionLost(lost())
        self.assertEqual(self.proxy.pool.active, 0)

    def drainedPath(self, drained: set[Any]) -> list[tuple[str, Any]]:
        """
        Give the session a relay path that says the transports in
        C{drained} hold nothing, and record its C{shutWrite} and C{close}
        calls.
        """
        calls: list[tuple[str, Any]] = []

        class Recording(PortableRelayPath):
            def drained(self, transport: Any) -> bool:
                return transport in drained

            def shutWrite(self, transport: Any) -> None:
                calls.append(("shutWrite", transport))
                super().shutWrite(transport)

            def close(self, transport: Any, isDrained: bool) -> None:
                calls.append(("close", transport))
                super().close(transport, isDrained)

        self.proxy.factory.relayPath = Recording(self.proxy.clock)
        return calls

    def test_secondEOFClosesDrainedSidesAtOnce(self) -> None:
        """
        When the second EOF arrives and the relay path says nothing is left
        to write to either side, both are closed at once: the side whose
        write side was still open is not shut first (its C{close()} sends
        the FIN).
        """
        calls = self.drainedPath({self.ct, self.bt})
        self.client.readConnectionLost()
        self.assertEqual(calls, [("shutWrite", self.bt)])
        self.backend.readConnectionLost()
        self.assertEqual(calls[1:], [("close", self.ct), ("close", self.bt)])
        self.assertFalse(self.ct.writeClosed)
        self.assertTrue(self.ct.disconnecting and self.bt.disconnecting)
        self.assertFalse(self.ct.aborted or self.bt.aborted)

    def test_secondEOFShutsSideWithBytesHeld(self) -> None:
        """
        When bytes may still be held for the side whose write side is open,
        it is shut after them first, and both are closed only once it is
        (the fake transport's shut is done at once).
        """
        calls = self.drainedPath({self.bt})
        self.client.readConnectionLost()
        self.backend.readConnectionLost()
        self.assertEqual(
            calls,
            [("shutWrite", self.bt), ("shutWrite", self.ct), ("close", self.ct), ("close", self.bt)],
        )
        self.assertTrue(self.ct.writeClosed)

    def test_repeatedEOFIsIgnored(self) -> None:
        """
        A second EOF from the same side changes nothing (a transport may
        report it again when resumed).
        """
        self.client.readConnectionLost()
        self.bt.writeClosed = False
        self.client.readConnectionLost()
        self.assertFalse(self.bt.writeClosed)

    def test_clientResetAbortsBackend(self) -> None:
        """
        A client reset in the middle of a session aborts the backend.
        """
        self.client.connectionLost(lost(clean=False))
        self.assertTrue(self.bt.aborted)
        self.backend.connectionLost(lost(clean=False))
        self.assertEqual(self.client.session.ended, "client reset")  # type: ignore[union-attr]
        self.assertEqual(self.proxy.pool.active, 0)

    def test_backendResetAbortsClient(self) -> None:
        """
        A backend reset in the middle of a session aborts the client.
        """
        self.backend.connectionLost(lost(clean=False))
        self.assertTrue(self.ct.aborted)
        self.client.connectionLost(lost(clean=False))
        self.assertEqual(self.client.session.ended, "backend reset")  # type: ignore[union-attr]
        self.assertEqual(self.proxy.backends["a"].active, 0)

    def test_backendErrorAfterEOFIsReset(self) -> None:
        """
        A backend that sent its reply and EOF, then fails (e.g. it reset
        because the client kept sending) did not get everything the client
        sent: the client is reset, not closed gracefully, so that it does
        not take its truncated upload for a delivered one.
        """
        self.backend.dataReceived(b"reply")
        self.backend.readConnectionLost()
        self.backend.connectionLost(lost(clean=False))
        self.assertTrue(self.ct.aborted)

    def test_clientErrorAfterEOFIsReset(self) -> None:
        """
        Likewise a client that half-closed, then fails while the reply
        flows: the backend is reset.
        """
        self.client.readConnectionLost()
        self.client.connectionLost(lost(clean=False))
        self.assertTrue(self.bt.aborted)

    def test_backendResetReportedAsEOF(self) -> None:
        """
        A backend EOF whose socket holds a reset (a reactor took the reset
        for a hang-up: Linux's poll can show a socket being reset as hung
        up but not readable) is that backend's reset: both sides are
        aborted, the client's write side is not shut (no FIN for a
        truncated stream).
        """
        ours, peer = tcpPair()
        self.addCleanup(ours.close)
        client, ct, backend, bt = self.withSockets(backendSocket=ours)
        resetSocket(peer)
        backend.readConnectionLost()
        self.assertFalse(ct.writeClosed)
        self.assertTrue(ct.aborted)
        self.assertTrue(bt.aborted)
        self.assertEqual(client.session.ended, "backend reset")  # type: ignore[union-attr]

    def test_clientResetReportedAsEOF(self) -> None:
        """
        Likewise a client EOF whose socket holds a reset: the backend's
        write side is not shut, both sides are aborted.
        """
        ours, peer = tcpPair()
        self.addCleanup(ours.close)
        client, ct, backend, bt = self.withSockets(clientSocket=ours)
        resetSocket(peer)
        client.readConnectionLost()
        self.assertFalse(bt.writeClosed)
        self.assertTrue(bt.aborted)
        self.assertTrue(ct.aborted)
        self.assertEqual(client.session.ended, "client reset")  # type: ignore[union-attr]

    def test_finWithSocketIsEOF(self) -> None:
        """
        A backend EOF whose socket holds no error (a FIN) is a half-close,
        as without a socket to ask.
        """
        ours, peer = tcpPair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        client, ct, backend, bt = self.withSockets(backendSocket=ours)
        peer.shutdown(socket.SHUT_WR)
        backend.readConnectionLost()
        self.assertTrue(ct.writeClosed)
        self.assertFalse(ct.aborted or bt.aborted)

    def test_backendCleanCloseUnregistersProducer(self) -> None:
        """
        When the backend connection ends cleanly, the client transport's
        producer is unregistered before it is closed, so the close is not
        held up waiting for a producer that is gone.
        """
        self.backend.connectionLost(lost())
        self.assertIsNone(self.ct.producer)
        self.assertTrue(self.ct.disconnecting)
        self.assertFalse(self.ct.aborted)


class FailoverTests(SynchronousTestCase):
    """
    Connect failures: disabling, retrying, and all backends down.
    """

    def test_refusedFailsOver(self) -> None:
        """
        A refused connect disables that backend for its disable-time, counts
        the failure, and the session goes on to the next backend; the client
        notices nothing.
        """
        proxy = Proxy(disableTime=5)
        client, ct = proxy.accept()
        client.dataReceived(b"early")
        proxy.endpoints["a"].fail(ConnectionRefusedError())
        a = proxy.backends["a"]
        self.assertEqual((a.failed, a.active), (1, 0))
        self.assertEqual(a.lastError, "connection refused")
        self.assertEqual(a.stateAt(proxy.clock.seconds()), "failing")
        self.assertEqual(len(proxy.endpoints["b"].attempts), 1)
        _, bt = proxy.endpoints["b"].succeed()
        self.assertEqual(bt.value(), b"early")
        self.assertFalse(ct.disconnecting)
        proxy.clock.advance(5)
        self.assertEqual(a.stateAt(proxy.clock.seconds()), "up")

    def test_ownListenerFailsOver(self) -> None:
        """
        A backend connection whose peer is one of the proxy's own
        listening addresses is aborted at once and counts as a failed
        connect (the backend is disabled, with the reason); the session
        goes on to the next backend, and what the aborted connection
        reports later does not end it.
        """
        listener = IPv4Address("TCP", "127.0.0.2", 40000)
        LISTENING.add(listener)
        self.addCleanup(LISTENING.remove, listener)
        proxy = Proxy(disableTime=5)
        client, ct = proxy.accept()
        client.dataReceived(b"early")
        protocol, looped = proxy.endpoints["a"].succeed()
        self.assertTrue(looped.disconnecting or looped.disconnected)
        a = proxy.backends["a"]
        self.assertEqual((a.failed, a.active, a.connected), (1, 0, 0))
        self.assertEqual(a.lastError, "the backend is one of this proxy's own listening "
                         "addresses")
        protocol.connectionLost(Failure(ConnectionRefusedError()))
        self.assertFalse(ct.disconnecting)
        _, bt = proxy.endpoints["b"].succeed(peer=IPv4Address("TCP", "127.0.0.3", 40000))
        self.assertEqual(bt.value(), b"early")
        self.assertFalse(ct.disconnecting)

    def test_ownUnixListenerFailsOver(self) -> None:
        """
        Likewise for a unix-socket backend that is one of the proxy's own
        unix-socket listeners (also by another path to the same file):
        every session would otherwise connect to the proxy again, until
        descriptors ran out.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "proxy.sock")
        os.symlink(path, os.path.join(directory, "link.sock"))
        listener = UNIXAddress(path)
        LISTENING.add(listener)
        self.addCleanup(LISTENING.remove, listener)
        proxy = Proxy(disableTime=5)
        client, ct = proxy.accept()
        client.dataReceived(b"early")
        _, looped = proxy.endpoints["a"].succeed(
            peer=UNIXAddress(os.path.join(directory, "link.sock").encode())
        )
        self.assertTrue(looped.disconnecting or looped.disconnected)
        self.assertEqual(proxy.backends["a"].failed, 1)
        _, bt = proxy.endpoints["b"].succeed(peer=UNIXAddress(os.path.join(directory, "b.sock")))
        self.assertEqual(bt.value(), b"early")
        self.assertFalse(ct.disconnecting)

    def test_disabledBackendIsSkipped(self) -> None:
        """
        While a backend is disabled, new sessions do not try it; after its
        disable-time they do again.
        """
        proxy = Proxy(disableTime=2)
        proxy.accept()
        proxy.endpoints["a"].fail(ConnectionRefusedError())
        proxy.endpoints["b"].succeed()
        proxy.accept()
        self.assertEqual(len(proxy.endpoints["a"].attempts), 1)
        self.assertEqual(len(proxy.endpoints["b"].attempts), 2)
        proxy.clock.advance(2)
        proxy.accept()
        self.assertEqual(len(proxy.endpoints["a"].attempts), 2)

    def test_connectTimeoutFailsOver(self) -> None:
        """
        A connect that takes longer than connect-timeout is cancelled,
        counted as a failure with a timeout error, and the session moves on.
        """
        proxy = Proxy(connectTimeout=3)
        proxy.accept()
        proxy.clock.advance(2.9)
        self.assertEqual(proxy.endpoints["a"].cancelled, 0)
        proxy.clock.advance(0.1)
        self.assertEqual(proxy.endpoints["a"].cancelled, 1)
        self.assertEqual(proxy.backends["a"].lastError, "connect timeout after 3s")
        self.assertEqual(len(proxy.endpoints["b"].attempts), 1)

    def test_unresolvableFailsOver(self) -> None:
        """
        A name that does not resolve counts as a connect failure.
        """
        proxy = Proxy()
        proxy.accept()
        proxy.endpoints["a"].fail(DNSLookupError("no.such.host"))
        self.assertIn("cannot resolve", proxy.backends["a"].lastError)
        self.assertEqual(len(proxy.endpoints["b"].attempts), 1)

    def test_outOfDescriptorsIsNotTheBackends(self) -> None:
        """
        A connect that fails because the proxy is out of descriptors (or
        memory) closes the client, counts the event as the proxy's own
        C{resourceErrors}, and neither disables nor blames the backend, nor
        tries the others; the next session uses the same backend.
        """
        for code in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            proxy = Proxy(labels=("a", "b"))
            client, ct = proxy.accept()
            proxy.endpoints["a"].fail(ConnectBindError(code, os.strerror(code)))
            a = proxy.backends["a"]
            self.assertEqual((a.failed, a.active, a.lastError), (0, 0, ""))
            self.assertEqual(a.stateAt(proxy.clock.seconds()), "up")
            self.assertEqual(proxy.endpoints["b"].attempts, [])
            self.assertTrue(ct.disconnecting)
            self.assertEqual((proxy.pool.resourceErrors, proxy.pool.refused), (1, 0))
            client.connectionLost(lost())
            self.assertEqual(client.session.ended, "out of resources")  # type: ignore[union-attr]
            self.assertEqual(proxy.pool.active, 0)
            proxy.accept()
            self.assertEqual(len(proxy.endpoints["a"].attempts), 2)

    def test_outOfDescriptorsLogBounded(self) -> None:
        """
        A flood of sessions closed for lack of descriptors logs a bounded
        number of lines, then one line counting the rest.
        """
        proxy = Proxy(labels=("a",))
        with capturedLogs() as events:
            for _ in range(100):
                proxy.accept()
                proxy.endpoints["a"].fail(ConnectBindError(errno.EMFILE, "Too many open files"))
            proxy.clock.advance(60)
        lines = [e for e in events if "out of resources" in str(e.get("log_format"))]
        summaries = [e for e in events if "not logged" in str(e.get("log_format"))]
        self.assertEqual(len(lines), 10)
        self.assertEqual([e["count"] for e in summaries], [90])
        self.assertEqual(proxy.pool.resourceErrors, 100)

    def test_concurrentFailuresLoggedOnce(self) -> None:
        """
        Connects already under way when a backend's first one fails fail
        too: all are counted, but the failure is logged once per
        disable-time (and again when the error changes).
        """

        def failures(events: list[dict[str, object]]) -> int:
            return sum("failed: {error}" in str(e.get("log_format")) for e in events)

        proxy = Proxy(labels=("a",), disableTime=10)
        with capturedLogs() as events:
            for _ in range(20):
                proxy.accept()
            pending = list(proxy.endpoints["a"].attempts)
            for _, d in pending:
                d.errback(Failure(ConnectionRefusedError()))
            self.assertEqual(proxy.backends["a"].failed, 20)
            self.assertEqual(failures(list(events)), 1)
            proxy.clock.advance(10)
            proxy.accept()
            proxy.endpoints["a"].fail(ConnectionRefusedError())
            self.assertEqual(failures(list(events)), 2)

    def test_allDownClosesClientAtOnce(self) -> None:
        """
        When every backend has failed, the client is closed at once (not
        left hanging), and counted as refused.
        """
        proxy = Proxy()
        client, ct = proxy.accept()
        proxy.endpoints["a"].fail(ConnectionRefusedError())
        proxy.endpoints["b"].fail(ConnectionRefusedError())
        self.assertTrue(ct.disconnecting)
        self.assertEqual(proxy.pool.refused, 1)
        client.connectionLost(lost())
        self.assertEqual(proxy.pool.active, 0)
        self.assertEqual(client.session.ended, "all backends down")  # type: ignore[union-attr]

    def test_allDownLoggedOnce(self) -> None:
        """
        "all backends down" is logged once however many clients are turned
        away, and again only after a backend has answered in between.
        """

        def allDown(events: list[dict[str, object]]) -> int:
            return sum("all backends down" in str(e.get("log_format")) for e in events)

        proxy = Proxy(labels=("a",))
        with capturedLogs() as events:
            proxy.accept()
            proxy.endpoints["a"].fail(ConnectionRefusedError())
            for _ in range(3):
                _, ct = proxy.accept()
                self.assertTrue(ct.disconnecting)
            self.assertEqual(allDown(list(events)), 1)
            proxy.clock.advance(1)
            proxy.accept()
            proxy.endpoints["a"].succeed()
            proxy.accept()
            proxy.endpoints["a"].fail(ConnectionRefusedError())
            self.assertEqual(allDown(list(events)), 2)


class _BrokenBalancer:
    """
    A balancer plugin with a bug: it raises.
    """

    wantsServerName = False

    def choose(
        self, candidates: Sequence[IBackendInfo], connection: IConnectionInfo
    ) -> Optional[IBackendInfo]:
        raise RuntimeError("broken plugin")


class StartFailureTests(SynchronousTestCase):
    """
    A session whose start raises (a bug, here a balancer plugin's) does not
    leave its client connection open.
    """

    def test_clientClosedAndSessionEnds(self) -> None:
        """
        The client is closed at once, the error logged (with its traceback)
        at a bounded rate, and the session ends as its connection goes: no
        active session, connect or slot left.
        """
        proxy = Proxy(balancer=_BrokenBalancer())
        with capturedLogs() as events:
            clients = [proxy.accept() for _ in range(15)]
        for client, ct in clients:
            self.assertTrue(ct.aborted)
            assert client.session is not None
            self.assertEqual(client.session.ended, "internal error")
            client.connectionLost(lost(clean=False))
        self.assertEqual(proxy.pool.active, 0)
        self.assertEqual(proxy.factory.sessions.open, set())
        self.assertEqual(proxy.endpoints["a"].attempts, [])
        self.assertEqual(len(events), 10)
        self.assertEqual(
            formatEvent(events[0]),
            "proxy test: session of 127.0.0.2:40000 failed to start: closed",
        )
        self.assertIsInstance(events[0]["log_failure"].value, RuntimeError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 10)


class TimeoutTests(SynchronousTestCase):
    """
    Idle and half-closed timeouts.
    """

    def test_idleTimeout(self) -> None:
        """
        With an idle timeout, a session with no bytes either way for that
        long is aborted on both sides; any byte restarts the count.
        """
        proxy = Proxy(idleTimeout=10)
        client, ct = proxy.accept()
        backend, bt = proxy.endpoints["a"].succeed()
        proxy.clock.advance(9)
        client.dataReceived(b"x")
        proxy.clock.advance(9)
        backend.dataReceived(b"y")
        proxy.clock.advance(9)
        self.assertFalse(ct.aborted or bt.aborted)
        proxy.clock.advance(1)
        self.assertTrue(ct.aborted and bt.aborted)
        self.assertEqual(client.session.ended, "idle timeout")  # type: ignore[union-attr]

    def test_noIdleTimeoutByDefault(self) -> None:
        """
        Without an idle timeout a silent session stays open.
        """
        proxy = Proxy()
        _, ct = proxy.accept()
        _, bt = proxy.endpoints["a"].succeed()
        proxy.clock.advance(10**6)
        self.assertFalse(ct.aborted or bt.aborted)
        self.assertEqual(proxy.clock.getDelayedCalls(), [])

    def test_halfClosedTimeout(self) -> None:
        """
        Once one side has sent EOF, the other direction may be silent for at
        most the half-closed timeout; bytes in it restart the count.
        """
        proxy = Proxy(halfClosedTimeout=30)
        client, ct = proxy.accept()
        backend, bt = proxy.endpoints["a"].succeed()
        client.readConnectionLost()
        proxy.clock.advance(29)
        backend.dataReceived(b"still working")
        proxy.clock.advance(29)
        self.assertFalse(ct.aborted)
        proxy.clock.advance(1)
        self.assertTrue(ct.aborted and bt.aborted)
        self.assertEqual(client.session.ended, "half-closed timeout")  # type: ignore[union-attr]

    def withSockets(self, **kwargs: Any) -> tuple[Proxy, Any, HalfCloseTransport, Any, HalfCloseTransport]:
        """
        A proxy (made with C{kwargs}) and a session whose transports have
        real sockets under them (the watch needs them).
        """
        sockets = []
        for _ in range(2):
            ours, peer = tcpPair()
            self.addCleanup(ours.close)
            self.addCleanup(peer.close)
            sockets.append(ours)
        proxy = Proxy(**kwargs)
        client, ct = proxy.accept(transport=HalfCloseTransport(handle=sockets[0]))
        backend, bt = proxy.endpoints["a"].succeed(handle=sockets[1])
        return proxy, client, ct, backend, bt

    def test_settledHalfClose(self) -> None:
        """
        A session still half-closed L{SETTLE_TIME} after its first EOF has
        the side that sent it watched and the half-closed timeout armed,
        counted from then.
        """
        proxy, client, ct, backend, bt = self.withSockets(halfClosedTimeout=30)
        client.readConnectionLost()
        self.assertEqual(len(proxy.factory.watch), 0)
        proxy.clock.advance(SETTLE_TIME)
        self.assertEqual(len(proxy.factory.watch), 1)
        proxy.clock.advance(30 - 0.001)
        self.assertFalse(ct.aborted)
        proxy.clock.advance(0.002)
        self.assertTrue(ct.aborted and bt.aborted)
        self.assertEqual(client.session.ended, "half-closed timeout")  # type: ignore[union-attr]

    def test_endedWhileSettling(self) -> None:
        """
        A session whose other direction ends within L{SETTLE_TIME} (most
        do) is never watched and never arms a timer; once it has ended,
        nothing is left pending and nothing refers to it.
        """
        proxy, client, ct, backend, bt = self.withSockets(halfClosedTimeout=30)
        session = client.session
        client.readConnectionLost()
        proxy.clock.advance(SETTLE_TIME / 2)
        backend.readConnectionLost()
        client.connectionLost(lost())
        backend.connectionLost(lost())
        self.assertTrue(session.finished)  # type: ignore[union-attr]
        self.assertEqual(len(proxy.factory.watch), 0)
        self.assertEqual(proxy.factory.settling, set())
        self.assertEqual(proxy.clock.getDelayedCalls(), [])
        self.assertIsNone(session._timer)  # type: ignore[union-attr]

    def test_timersCancelledAtEnd(self) -> None:
        """
        A session that ends leaves no timer behind.
        """
        proxy = Proxy(idleTimeout=10, halfClosedTimeout=5)
        client, _ = proxy.accept()
        backend, _ = proxy.endpoints["a"].succeed()
        client.readConnectionLost()
        backend.readConnectionLost()
        client.connectionLost(lost())
        backend.connectionLost(lost())
        self.assertEqual(proxy.clock.getDelayedCalls(), [])


class RelayPropertyTests(SynchronousTestCase):
    """
    The relay delivers every byte in order whatever the chunking and the
    order of the two half-closes.
    """

    @settings(max_examples=150, deadline=None)
    @given(
        up=st.lists(st.binary(min_size=1, max_size=64), max_size=8),
        down=st.lists(st.binary(min_size=1, max_size=64), max_size=8),
        held=st.integers(min_value=0, max_value=8),
        order=st.permutations(range(2)),
        seed=st.randoms(use_true_random=False),
    )
    def test_bytesAndCloses(
        self, up: list[bytes], down: list[bytes], held: int, order: list[int], seed: object
    ) -> None:
        """
        For random chunks each way (some sent before the backend connects),
        interleaved at random, and both EOFs in either order: the backend gets
        exactly the client's bytes, the client exactly the backend's, the
        first EOF half-closes the other side, the second closes both, and the
        session ends with all counts at zero.
        """
        import random

        rng: random.Random = seed  # type: ignore[assignment]
        proxy = Proxy()
        client, ct = proxy.accept()
        held = min(held, len(up))
        for chunk in up[:held]:
            client.dataReceived(chunk)
        backend, bt = proxy.endpoints["a"].succeed()
        # Interleave the two directions at random, keeping each one's order.
        pending = {"up": list(up[held:]), "down": list(down)}
        while pending["up"] or pending["down"]:
            direction = rng.choice([d for d in pending if pending[d]])
            chunk = pending[direction].pop(0)
            if direction == "up":
                client.dataReceived(chunk)
            else:
                backend.dataReceived(chunk)
        eofs = [client.readConnectionLost, backend.readConnectionLost]
        for i in order:
            eofs[i]()
        self.assertEqual(bt.value(), b"".join(up))
        self.assertEqual(ct.value(), b"".join(down))
        # The first EOF half-closes the other side; the second the first
        # side, then closes both.
        self.assertEqual([t.writeClosed for t in (bt, ct)], [True, True])
        self.assertTrue(bt.disconnecting and ct.disconnecting)
        losses = [client.connectionLost, backend.connectionLost]
        for i in order:
            losses[i](lost())
        self.assertEqual(proxy.pool.active, 0)
        self.assertEqual(proxy.backends["a"].active, 0)
        self.assertEqual(proxy.clock.getDelayedCalls(), [])




@implementer(IBalancer)
class NameRecorder:
    """
    A balancer that uses the SNI name and records what it was given.
    """

    wantsServerName = True

    def __init__(self) -> None:
        self.names: list[Optional[str]] = []

    def choose(
        self, candidates: Sequence[IBackendInfo], connection: IConnectionInfo
    ) -> Optional[IBackendInfo]:
        self.names.append(connection.serverName)
        return candidates[0]


@implementer(ISSLTransport)
class TLSTransport(HalfCloseTransport):
    """
    A client transport of a TLS listener, whose handshake named C{serverName}.
    """

    def __init__(self, serverName: Optional[bytes]) -> None:
        super().__init__()
        self._serverName = serverName

    def getHandle(self) -> Any:
        serverName = self._serverName

        class Handle:
            def get_servername(self) -> Optional[bytes]:
                return serverName

        return Handle()

    def getPeerCertificate(self) -> None:
        return None


class InspectionTests(SynchronousTestCase):
    """
    Waiting for the TLS SNI name before choosing, for balancers that use it.
    """

    def test_waitsForClientHello(self) -> None:
        """
        With inspect-delay, nothing is connected until the ClientHello is
        complete; then the balancer gets its SNI name and the backend gets
        the hello, unchanged.
        """
        from tests.test_sni import clientHello

        recorder = NameRecorder()
        proxy = Proxy(balancer=recorder, inspectDelay=5)
        client, _ = proxy.accept()
        hello = clientHello(b"Shop.Example")
        client.dataReceived(hello[:10])
        client.dataReceived(hello[10:100])
        self.assertEqual(proxy.endpoints["a"].attempts, [])
        client.dataReceived(hello[100:])
        self.assertEqual(recorder.names, ["shop.example"])
        _, bt = proxy.endpoints["a"].succeed()
        self.assertEqual(bt.value(), hello)
        self.assertEqual(proxy.clock.getDelayedCalls(), [])

    def test_helloSentWhileQueued(self) -> None:
        """
        A ClientHello that arrived while the session waited in the queue is
        read when its turn comes: placed by its name at once.
        """
        from tests.test_sni import clientHello
        from txsockproxy.config import Protection

        recorder = NameRecorder()
        proxy = Proxy(
            balancer=recorder, inspectDelay=5,
            protection=Protection(maxConnections=1, maxQueue=1, queueTimeout=30),
        )
        first, _ = proxy.accept()
        first.dataReceived(b"GET / HTTP/1.0\r\n")
        backend, _ = proxy.endpoints["a"].succeed()
        second, _ = proxy.accept()
        hello = clientHello(b"queued.example")
        second.dataReceived(hello)
        self.assertEqual(recorder.names, [None])
        first.connectionLost(lost())
        backend.connectionLost(lost())
        self.assertEqual(recorder.names, [None, "queued.example"])
        _, bt = proxy.endpoints["a"].succeed()
        self.assertEqual(bt.value(), hello)

    def test_notTLSConnectsAtOnce(self) -> None:
        """
        Bytes that are not a ClientHello end the wait at once, with no name.
        """
        recorder = NameRecorder()
        proxy = Proxy(balancer=recorder, inspectDelay=5)
        client, _ = proxy.accept()
        client.dataReceived(b"GET / HTTP/1.0\r\n")
        self.assertEqual(recorder.names, [None])
        self.assertEqual(len(proxy.endpoints["a"].attempts), 1)

    def test_silentClientWaitsInspectDelay(self) -> None:
        """
        A client that sends nothing (a server-speaks-first protocol) is
        placed without a name after inspect-delay.
        """
        recorder = NameRecorder()
        proxy = Proxy(balancer=recorder, inspectDelay=2)
        proxy.accept()
        proxy.clock.advance(1.9)
        self.assertEqual(recorder.names, [])
        proxy.clock.advance(0.1)
        self.assertEqual(recorder.names, [None])

    def test_clientEOFEndsWait(self) -> None:
        """
        A client that half-closes while being inspected is placed at once.
        """
        recorder = NameRecorder()
        proxy = Proxy(balancer=recorder, inspectDelay=2)
        client, _ = proxy.accept()
        client.dataReceived(b"\x16\x03")
        client.readConnectionLost()
        self.assertEqual(recorder.names, [None])
        _, bt = proxy.endpoints["a"].succeed()
        self.assertEqual(bt.value(), b"\x16\x03")
        self.assertTrue(bt.writeClosed)

    def test_noWaitForOtherBalancers(self) -> None:
        """
        A balancer that does not use the name is asked at once, whatever
        inspect-delay says.
        """
        proxy = Proxy(inspectDelay=5)
        proxy.accept()
        self.assertEqual(len(proxy.endpoints["a"].attempts), 1)

    def test_clientLeavesWhileInspected(self) -> None:
        """
        A client that leaves during the wait leaves no timer and no counts.
        """
        proxy = Proxy(balancer=NameRecorder(), inspectDelay=5)
        client, _ = proxy.accept()
        client.connectionLost(lost(clean=False))
        self.assertEqual(proxy.clock.getDelayedCalls(), [])
        self.assertEqual(proxy.pool.active, 0)
        self.assertEqual(proxy.endpoints["a"].attempts, [])

    def test_tlsListenerHandshake(self) -> None:
        """
        On a TLS listener the name comes from the completed handshake.
        """
        recorder = NameRecorder()
        proxy = Proxy(balancer=recorder, inspectDelay=5)
        client, _ = proxy.accept(transport=TLSTransport(b"Api.Example."))
        self.assertEqual(recorder.names, [])
        client.handshakeCompleted()
        self.assertEqual(recorder.names, ["api.example"])


def handshakeTimers(proxy: Proxy) -> list[Any]:
    """
    The handshake timeouts pending on C{proxy}'s clock.
    """
    return [c for c in proxy.clock.getDelayedCalls() if "_handshakeTimedOut" in repr(c)]


class TLSListenerTests(SynchronousTestCase):
    """
    On a TLS listener, no backend is chosen or connected before the client's
    handshake is done; a handshake that fails or never ends is logged (at a
    bounded rate) and costs no backend connection.
    """

    def test_noBackendBeforeHandshake(self) -> None:
        """
        The backend connect starts when the handshake completes, whatever
        the balancer.
        """
        proxy = Proxy()
        client, _ = proxy.accept(transport=TLSTransport(None))
        self.assertEqual(proxy.endpoints["a"].attempts, [])
        client.handshakeCompleted()
        self.assertEqual(len(proxy.endpoints["a"].attempts), 1)
        self.assertFalse(handshakeTimers(proxy))

    def test_failedHandshake(self) -> None:
        """
        A client whose handshake fails ends its session without any backend
        work, as "TLS handshake failed", with OpenSSL's reason logged.
        """
        from OpenSSL.SSL import Error

        proxy = Proxy()
        with capturedLogs() as events:
            client, _ = proxy.accept(transport=TLSTransport(None))
            reason = Error([("SSL routines", "", "no shared cipher")])
            client.connectionLost(Failure(reason))
        self.assertEqual(proxy.endpoints["a"].attempts, [])
        self.assertEqual(client.session.ended, "TLS handshake failed")  # type: ignore[union-attr]
        self.assertEqual(proxy.pool.active, 0)
        self.assertFalse(handshakeTimers(proxy))
        logged = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(logged), 1)
        self.assertIn("TLS handshake with 127.0.0.2:40000 failed: no shared cipher", logged[0])

    def test_handshakeTimeout(self) -> None:
        """
        A client that does not complete its handshake within
        C{HANDSHAKE_TIMEOUT} is reset, without any backend work.
        """
        proxy = Proxy()
        client, ct = proxy.accept(transport=TLSTransport(None))
        proxy.clock.advance(HANDSHAKE_TIMEOUT - 0.1)
        self.assertFalse(ct.aborted)
        proxy.clock.advance(0.1)
        self.assertTrue(ct.aborted)
        client.connectionLost(lost(clean=False))
        self.assertEqual(proxy.endpoints["a"].attempts, [])
        self.assertEqual(client.session.ended, "TLS handshake timeout")  # type: ignore[union-attr]

    def test_clientLeavesDuringHandshake(self) -> None:
        """
        A client that half-closes before its handshake is done is closed; no
        backend is connected for it.
        """
        proxy = Proxy()
        client, ct = proxy.accept(transport=TLSTransport(None))
        client.readConnectionLost()
        self.assertTrue(ct.disconnecting)
        client.connectionLost(lost())
        self.assertEqual(proxy.endpoints["a"].attempts, [])
        self.assertFalse(handshakeTimers(proxy))

    def test_failedHandshakesLogBounded(self) -> None:
        """
        A flood of failed handshakes logs a bounded number of lines.
        """
        proxy = Proxy()
        with capturedLogs() as events:
            for _ in range(50):
                client, _ = proxy.accept(transport=TLSTransport(None))
                client.connectionLost(lost(clean=False))
        failed = [e for e in events if "TLS handshake with" in str(e.get("log_format"))]
        self.assertEqual(len(failed), 10)


class AdoptedListenerTests(SynchronousTestCase):
    """
    A proxy factory tells its congestion control whether its listening
    socket was handed over by systemd (then never changed), from its listen
    endpoint string alone.
    """

    def test_adopted(self) -> None:
        """
        C{systemd:} listeners, also behind C{haproxy:}, are adopted; others
        are not.
        """
        from txsockproxy.relay import ProxyFactory

        proxy = Proxy()
        for listen, adopted in [
            ("systemd:domain=INET:index=0", True),
            ("haproxy:systemd:domain=INET:index=0", True),
            ("tcp:8080", False),
            ("haproxy:tcp:8080", False),
            ("unix:/run/systemd.sock", False),
        ]:
            factory = ProxyFactory(proxy.pool, proxy.clock, listen=listen)
            self.assertEqual(factory.congestion.adopted, adopted, listen)


class EarlyEOFTests(SynchronousTestCase):
    """
    A client that sends its request and its EOF before the backend is
    connected: the backend's write side is shut once, when it connects.
    """

    def test_shutOnce(self) -> None:
        """
        The held request reaches the backend, its write side is shut once
        (a second C{loseWriteConnection} makes Twisted write to a shut
        socket, which fails as a reset), and the backend's EOF then closes
        both cleanly.
        """
        proxy = Proxy()
        client, ct = proxy.accept()
        client.dataReceived(b"request")
        client.readConnectionLost()
        backend, bt = proxy.endpoints["a"].succeed()
        calls: list[None] = []
        original = bt.loseWriteConnection
        bt.loseWriteConnection = lambda: (calls.append(None), original())[1]  # type: ignore[method-assign]
        self.assertEqual(bt.value(), b"request")
        self.assertTrue(bt.writeClosed)
        backend.dataReceived(b"reply")
        backend.readConnectionLost()
        self.assertEqual(calls, [])
        self.assertTrue(ct.disconnecting and bt.disconnecting)
        self.assertFalse(ct.aborted or bt.aborted)


class ProxyProtocolListenerTests(SynchronousTestCase):
    """
    Behind a PROXY protocol listener (C{haproxy:...}) the session starts
    only once a valid header is in, with the header's client address.
    """

    def setUp(self) -> None:
        self.proxy = Proxy(listen="haproxy:tcp:8080")
        self.client, self.ct = self.proxy.accept()
        self.attempts = self.proxy.endpoints["a"].attempts

    def test_noBackendBeforeHeader(self) -> None:
        """
        Nothing is connected while the header is incomplete; once it is,
        the session has the header's address, and the bytes after it reach
        the backend.
        """
        self.client.dataReceived(b"PROXY TCP4 192.0.2.9 ")
        self.assertEqual(self.attempts, [])
        self.assertEqual(self.proxy.pool.accepted, 0)
        self.client.dataReceived(b"198.51.100.1 4000 5432\r\nhello")
        self.assertEqual(len(self.attempts), 1)
        session = self.client.session
        assert session is not None
        self.assertEqual(session.connection.peer, IPv4Address("TCP", "192.0.2.9", 4000))
        self.assertEqual(session.connection.local, IPv4Address("TCP", "198.51.100.1", 5432))
        _, bt = self.proxy.endpoints["a"].succeed()
        self.assertEqual(bt.value(), b"hello")

    def test_unknownKeepsConnectionAddress(self) -> None:
        """
        C{PROXY UNKNOWN} is valid: the connection's own address stands.
        """
        self.client.dataReceived(b"PROXY UNKNOWN\r\n")
        session = self.client.session
        assert session is not None
        self.assertEqual(session.connection.peer, self.ct.getPeer())
        self.assertEqual(len(self.attempts), 1)

    def test_malformedHeader(self) -> None:
        """
        A malformed header closes the client (reset), connects nothing,
        counts, and is logged with the client's address and why.
        """
        with capturedLogs() as events:
            self.client.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertTrue(self.ct.aborted)
        self.assertEqual(self.attempts, [])
        self.assertEqual(self.proxy.pool.badHeaders, 1)
        self.assertIsNone(self.client.session)
        text = [formatEvent(e) for e in events]
        self.assertEqual(
            text, ["proxy test: closing 127.0.0.2:40000: not a PROXY protocol header"]
        )
        # Later bytes on the closing connection are ignored.
        self.client.dataReceived(b"more")
        self.assertEqual(self.proxy.pool.badHeaders, 1)

    def test_malformedHeadersRateLimited(self) -> None:
        """
        A flood of bad headers is logged at a bounded pace, all counted.
        """
        with capturedLogs() as events:
            for _ in range(100):
                client, _ = self.proxy.accept()
                client.dataReceived(b"\x16\x03\x01")
        self.assertEqual(self.proxy.pool.badHeaders, 100)
        self.assertLess(len(events), 20)

    def test_headerTimeout(self) -> None:
        """
        A client that does not finish its header within
        C{proxy-header-timeout} is closed; nothing was connected.
        """
        self.client.dataReceived(b"PROXY TCP4")
        self.proxy.clock.advance(self.proxy.config.proxyHeaderTimeout - 0.1)
        self.assertFalse(self.ct.aborted)
        self.proxy.clock.advance(0.1)
        self.assertTrue(self.ct.aborted)
        self.assertEqual(self.attempts, [])
        self.assertEqual(self.proxy.pool.badHeaders, 1)

    def test_closedBeforeHeader(self) -> None:
        """
        A client that half-closes before its header is closed; its timer is
        cancelled when the connection goes.
        """
        self.client.dataReceived(b"PROXY ")
        self.client.readConnectionLost()
        self.assertTrue(self.ct.aborted)
        self.client.connectionLost(lost())
        self.assertIsNone(self.client.headerTimer)
        self.assertFalse(
            [c for c in self.proxy.clock.getDelayedCalls() if "_headerTimedOut" in repr(c)]
        )
        self.assertEqual(self.attempts, [])

    def test_resetBeforeHeader(self) -> None:
        """
        A client reset before its header is complete (with part of one, or
        none) is counted and logged as one that closes first.
        """
        with capturedLogs() as events:
            self.client.dataReceived(b"PROXY TCP4 ")
            self.client.connectionLost(lost(clean=False))
            other, _ = self.proxy.accept()
            other.connectionLost(lost(clean=False))
        self.assertEqual(self.proxy.pool.badHeaders, 2)
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["proxy test: closing 127.0.0.2:40000: reset before a complete PROXY protocol header"]
            * 2,
        )
        self.assertIsNone(self.client.headerTimer)
        self.assertEqual(self.attempts, [])

    def test_halfCloseThroughListener(self) -> None:
        """
        A client's FIN after its header and request shuts the backend's
        write side only: the reply still reaches the client.
        """
        self.client.dataReceived(b"PROXY UNKNOWN\r\nquestion")
        backend, bt = self.proxy.endpoints["a"].succeed()
        self.client.readConnectionLost()
        self.assertTrue(bt.writeClosed)
        self.assertFalse(self.ct.writeClosed or self.ct.aborted)
        backend.dataReceived(b"answer")
        self.assertEqual(self.ct.value(), b"answer")


class SendProxyTests(SynchronousTestCase):
    """
    A backend with C{send-proxy} gets a PROXY protocol header, then the
    client's bytes.
    """

    def test_v1(self) -> None:
        proxy = Proxy(sendProxy="v1")
        client, _ = proxy.accept(IPv4Address("TCP", "192.0.2.7", 5555))
        client.dataReceived(b"early")
        _, bt = proxy.endpoints["a"].succeed()
        self.assertEqual(bt.value(), b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 8080\r\nearly")
        self.assertEqual(proxy.backends["a"].bytesOut, 5)

    def test_v2(self) -> None:
        """
        Version 2 carries the session's id (the session log's) as unique id.
        """
        proxy = Proxy(sendProxy="v2")
        client, _ = proxy.accept(IPv4Address("TCP", "192.0.2.7", 5555))
        _, bt = proxy.endpoints["a"].succeed()
        header = parseHeader(bt.value())
        assert isinstance(header, ProxyHeader)
        self.assertEqual(header.source, IPv4Address("TCP", "192.0.2.7", 5555))
        session = client.session
        assert session is not None
        self.assertEqual(header.tlvs[TLV_UNIQUE_ID], session.id.encode())

    def test_clientBytesSentWithHeader(self) -> None:
        """
        Client bytes that the relay path sends with the header (read from the
        client's socket before they reach its protocol) are counted as
        relayed.
        """

        class Coalescing(PortableRelayPath):
            def writePreamble(self, client: Any, backend: Any, data: bytes) -> int:
                backend.write(data + b"pending")
                return 7

        proxy = Proxy(sendProxy="v1")
        proxy.factory.relayPath = Coalescing(proxy.clock)
        client, _ = proxy.accept(IPv4Address("TCP", "192.0.2.7", 5555))
        _, bt = proxy.endpoints["a"].succeed()
        self.assertEqual(bt.value(), b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 8080\r\npending")
        session = client.session
        assert session is not None
        self.assertEqual((session.bytesFromClient, proxy.backends["a"].bytesOut), (7, 7))

    def test_headerAddressPassedOn(self) -> None:
        """
        Behind a PROXY protocol listener, the backend is told the header's
        client, not the load balancer's address.
        """
        proxy = Proxy(listen="haproxy:tcp:8080", sendProxy="v1")
        client, _ = proxy.accept()
        client.dataReceived(b"PROXY TCP4 203.0.113.5 198.51.100.1 1234 443\r\n")
        _, bt = proxy.endpoints["a"].succeed()
        self.assertEqual(bt.value(), b"PROXY TCP4 203.0.113.5 198.51.100.1 1234 443\r\n")

    def test_sessionIdsDiffer(self) -> None:
        proxy = Proxy()
        first, _ = proxy.accept()
        second, _ = proxy.accept()
        assert first.session is not None and second.session is not None
        self.assertNotEqual(first.session.id, second.session.id)
