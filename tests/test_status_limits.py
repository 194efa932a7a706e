"""
Tests for the hardening of the status site (L{txsockproxy.status}): endpoint
strings shown without the paths of secrets, request bodies refused before
they are read, refusals logged at a bounded rate, and connections capped in
number and in time.
"""

from __future__ import annotations

import json
import select
import socket
import tempfile
from dataclasses import replace
from io import BytesIO
from typing import Any, Optional

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import PrivateReactorTestCase
from tests.test_status import TOKEN, backends, makeService, render
from txsockproxy.service import ProxyService
from txsockproxy.status import (
    ABORT_TIMEOUT,
    LOG_INTERVAL,
    LOG_LINES,
    MAX_BODY_SIZE,
    MAX_CONNECTIONS,
    MAX_UNSENT,
    REDACTED,
    REQUEST_TIMEOUT,
    RefusalLog,
    StatusSite,
    redactEndpoint,
    statusResource,
)

# Endpoint strings naming files a reader of the status page must not learn.
SECRET_LISTEN = "ssl:5433:privateKey=/etc/secret/server.key:certKey=/etc/secret/server.crt"
SECRET_BACKEND = (
    "tls:db.example:5432:trustRoots=/etc/secret/ca:certificate=/etc/secret/client.crt"
    ":privateKey=/etc/secret/client.key"
)


class RedactEndpointTests(SynchronousTestCase):
    """
    L{redactEndpoint} hides the values of parameters naming keys,
    certificates and other secrets, and nothing else.
    """

    def test_keywordParameters(self) -> None:
        """
        The values of C{privateKey}, C{certKey}, C{trustRoots},
        C{certificate}, C{caCertsDir}, C{extraCertChain} and C{dhParameters}
        are replaced; other parameters are kept.
        """
        self.assertEqual(
            redactEndpoint(SECRET_LISTEN, server=True),
            f"ssl:5433:privateKey={REDACTED}:certKey={REDACTED}",
        )
        self.assertEqual(
            redactEndpoint(SECRET_BACKEND),
            f"tls:db.example:5432:trustRoots={REDACTED}:certificate={REDACTED}"
            f":privateKey={REDACTED}",
        )
        self.assertEqual(
            redactEndpoint("ssl:host=a.example:port=443:caCertsDir=/etc/ca:certKey=/c"),
            f"ssl:host=a.example:port=443:caCertsDir={REDACTED}:certKey={REDACTED}",
        )
        self.assertEqual(
            redactEndpoint("ssl:443:extraCertChain=/x:dhParameters=/y:interface=10.0.0.1",
                           server=True),
            f"ssl:443:extraCertChain={REDACTED}:dhParameters={REDACTED}:interface=10.0.0.1",
        )

    def test_escapes(self) -> None:
        """
        Backslash escapes are honoured as Twisted's parser honours them: an
        escaped colon inside a secret value does not leave part of it shown,
        and an escaped colon in another value is kept as written.
        """
        self.assertEqual(
            redactEndpoint(r"ssl:443:privateKey=C\:\\keys\\k.pem:interface=127.0.0.1",
                           server=True),
            f"ssl:443:privateKey={REDACTED}:interface=127.0.0.1",
        )
        ipv6 = r"tcp6:5432:interface=fd00\:\:1"
        self.assertEqual(redactEndpoint(ipv6, server=True), ipv6)

    def test_nested(self) -> None:
        """
        An endpoint string nested in a parameter's value (escaped) is
        redacted too, and stays escaped.
        """
        self.assertEqual(
            redactEndpoint(r"tls:a.example:443:endpoint=ssl\:host\=a\:port\=1\:certKey\=/k"),
            rf"tls:a.example:443:endpoint=ssl\:host\=a\:port\=1\:certKey\={REDACTED}",
        )

    def test_positional(self) -> None:
        """
        A server C{ssl:} endpoint's key and certificate given as positional
        arguments are replaced, also inside a wrapper such as C{haproxy:},
        and so is the certificate directory of C{le:}; a client string's
        positional host and port are not.
        """
        self.assertEqual(redactEndpoint("ssl:443:/k.pem:/c.pem:interface=::1", server=True),
                         f"ssl:443:{REDACTED}:{REDACTED}:interface=::1")
        self.assertEqual(redactEndpoint("haproxy:ssl:443:/k.pem", server=True),
                         f"haproxy:ssl:443:{REDACTED}")
        self.assertEqual(redactEndpoint("le:/srv/certs:tcp:443", server=True),
                         f"le:{REDACTED}:tcp:443")
        self.assertEqual(redactEndpoint("ssl:db.example:5432"), "ssl:db.example:5432")

    def test_unchanged(self) -> None:
        """
        Endpoint strings without secrets, and plain names, are shown as
        they are.
        """
        for description in ("tcp:host=10.0.0.1:port=5432", "unix:/run/db.sock",
                            "tcp:5432:interface=127.0.0.1", "systemd:domain=INET:index=0", "db"):
            self.assertEqual(redactEndpoint(description, server=True), description)


class RedactedPagesTests(SynchronousTestCase):
    """
    No page of the status site shows the paths of secrets in listen
    strings, backend endpoints, or the names and labels that default to
    them.
    """

    def setUp(self) -> None:
        self.service = makeService()
        pool = self.service.pools["db"]
        # As the configuration names a proxy and a backend without a name or
        # label of their own: after their endpoint strings.
        pool.config = replace(pool.config, listen=(SECRET_LISTEN,))
        primary, _ = backends(self.service)
        primary.key = primary.label = SECRET_BACKEND
        pool.name = SECRET_LISTEN
        self.service.statusView.pools = {SECRET_LISTEN: pool}
        self.root = statusResource(self.service.statusView)

    def assertNoSecrets(self, body: bytes) -> None:
        """
        C{body} names no file of the secrets, and shows where they were
        redacted.
        """
        self.assertNotIn(b"/etc/secret", body)
        self.assertIn(REDACTED.encode(), body.replace(b"&lt;", b"<").replace(b"&gt;", b">"))

    def test_json(self) -> None:
        """
        C{/status.json} shows the proxy's name and listen strings and the
        backend's label and endpoint redacted.
        """
        code, body, _ = render(self.root, b"/status.json")
        self.assertEqual(code, 200)
        self.assertNoSecrets(body)
        [proxy] = json.loads(body)["proxies"]
        shown = redactEndpoint(SECRET_LISTEN, server=True)
        self.assertEqual((proxy["name"], proxy["listen"]), (shown, [shown]))
        primary = proxy["backends"][0]
        self.assertEqual((primary["label"], primary["endpoint"]),
                         (redactEndpoint(SECRET_BACKEND), redactEndpoint(SECRET_BACKEND)))

    def test_page(self) -> None:
        """
        The HTML page shows them redacted.
        """
        code, body, _ = render(self.root, b"/")
        self.assertEqual(code, 200)
        self.assertNoSecrets(body)

    def test_metrics(self) -> None:
        """
        The C{proxy} and C{backend} labels of C{/metrics} are redacted.
        """
        code, body, _ = render(self.root, b"/metrics")
        self.assertEqual(code, 200)
        self.assertNoSecrets(body)
        labels = {
            (s.labels.get("proxy"), s.labels.get("backend"))
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        self.assertIn(
            (redactEndpoint(SECRET_LISTEN, server=True), redactEndpoint(SECRET_BACKEND)), labels
        )

    def test_serverStatistics(self) -> None:
        """
        The backend labels in C{/server-statistics} counter names are
        redacted.
        """
        code, body, _ = render(self.root, b"/server-statistics")
        self.assertEqual(code, 200)
        self.assertNoSecrets(body)
        self.assertIn(f"gw.backend.{redactEndpoint(SECRET_BACKEND)}.0.connected: 0\n".encode(),
                      body)


def siteFor(service: ProxyService, **limits: Any) -> StatusSite:
    """
    The status site of C{service}, as the service builds it, with
    C{limits} given to L{StatusSite}.
    """
    return StatusSite(statusResource(service.statusView), **limits)


def connect(site: StatusSite, port: int = 40000) -> tuple[Protocol, StringTransport]:
    """
    A connection from 127.0.0.1:C{port} to C{site}.

    @return: the protocol the site built for it, and its transport.
    """
    peer = IPv4Address("TCP", "127.0.0.1", port)
    protocol = site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


def lose(protocol: Protocol) -> None:
    """
    Tell C{protocol} its connection is closed, as the reactor would.
    """
    protocol.connectionLost(Failure(ConnectionDone()))


def post(path: bytes, headers: bytes = b"", token: str = TOKEN) -> bytes:
    """
    The head of an HTTP/1.1 admin request for C{path} with the token.
    """
    return (b"POST " + path + b" HTTP/1.1\r\nHost: status\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n" + headers + b"\r\n")


def warnings(events: list[dict[str, Any]]) -> list[str]:
    """
    The warnings among C{events}, formatted.
    """
    return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]


class BodyLimitTests(SynchronousTestCase):
    """
    Request bodies larger than C{maxBodySize} are refused with 413 before
    they are read; none is ever written to a temporary file.
    """

    def setUp(self) -> None:
        self.service = makeService()
        self.site = siteFor(self.service, maxBodySize=100)

    def assertRefused(self, transport: StringTransport) -> None:
        """
        C{transport} got a 413 answer and is being closed.
        """
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), transport.value())
        self.assertIn(b"connection: close", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_contentLengthOverLimit(self) -> None:
        """
        A request declaring a body over the limit is answered 413 and closed
        as soon as its headers are in, without a "100 Continue" nor
        authentication; the body sent after is not read.
        """
        protocol, transport = connect(self.site)
        with capturedLogs() as events:
            protocol.dataReceived(post(b"/backends/db/primary/drain",
                                       b"Content-Length: 1073741824\r\n"
                                       b"Expect: 100-continue\r\n", token="wrong" * 4))
        self.assertRefused(transport)
        self.assertNotIn(b"100 Continue", transport.value())
        [request] = protocol.requests  # type: ignore[attr-defined]
        self.assertIsNone(request.content)
        protocol.dataReceived(b"x" * 1000)
        self.assertIsNone(request.content)
        self.assertEqual(self.site.refusedBodies, 1)
        self.assertEqual(backends(self.service)[0].adminState, "up")
        [warning] = warnings(events)
        self.assertIn("1073741824-byte body", warning)

    def test_chunkedOverLimit(self) -> None:
        """
        A chunked body is kept in memory, and refused with 413 as soon as
        it grows over the limit; what comes after is not kept.
        """
        protocol, transport = connect(self.site)
        protocol.dataReceived(post(b"/backends/db/primary/drain",
                                   b"Transfer-Encoding: chunked\r\n"))
        [request] = protocol.requests  # type: ignore[attr-defined]
        self.assertIsInstance(request.content, BytesIO)
        protocol.dataReceived(b"3c\r\n" + b"a" * 60 + b"\r\n")
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived((b"3c\r\n" + b"b" * 60 + b"\r\n") * 3 + b"0\r\n\r\n")
        self.assertRefused(transport)
        self.assertEqual(request.content.getvalue(), b"a" * 60)
        protocol.dataReceived(b"3c\r\n" + b"c" * 60 + b"\r\n")
        self.assertEqual(request.content.getvalue(), b"a" * 60)
        self.assertEqual(backends(self.service)[0].adminState, "up")

    def test_bodyWithinLimit(self) -> None:
        """
        A body within the limit, declared or chunked, is read and the admin
        action done.
        """
        protocol, transport = connect(self.site)
        protocol.dataReceived(post(b"/backends/db/primary/drain", b"Content-Length: 2\r\n")
                              + b"{}")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())
        self.assertEqual(backends(self.service)[0].adminState, "draining")
        protocol, transport = connect(self.site)
        protocol.dataReceived(post(b"/backends/db/primary/enable",
                                   b"Transfer-Encoding: chunked\r\n") + b"2\r\n{}\r\n0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())
        self.assertEqual(backends(self.service)[0].adminState, "up")

    def test_defaultLimit(self) -> None:
        """
        By default bodies are limited to L{MAX_BODY_SIZE} bytes.
        """
        site = siteFor(self.service)
        self.assertEqual(site.maxBodySize, MAX_BODY_SIZE)
        protocol, transport = connect(site)
        protocol.dataReceived(post(b"/backends/db/primary/drain",
                                   b"Content-Length: %d\r\n" % (MAX_BODY_SIZE + 1,)))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), transport.value())

    def test_resetIfNotRead(self) -> None:
        """
        A refused client that does not take its answer is reset after
        L{ABORT_TIMEOUT} seconds.
        """
        protocol, transport = connect(self.site)
        protocol.dataReceived(post(b"/", b"Content-Length: 101\r\n"))
        self.assertTrue(transport.disconnecting)
        self.service.reactor.advance(ABORT_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnected)
        self.service.reactor.advance(0.1)
        self.assertTrue(transport.disconnected)


class ConnectionLimitTests(SynchronousTestCase):
    """
    The status site keeps at most C{maxConnections} connections open; those
    beyond are closed at once, counted and logged.
    """

    def setUp(self) -> None:
        self.service = makeService()
        self.site = siteFor(self.service, maxConnections=2)

    def test_overLimitClosedAtOnce(self) -> None:
        """
        A connection beyond the limit is aborted as soon as it is made,
        counted in C{refusedConnections} and logged with the client.
        """
        first, firstTransport = connect(self.site)
        connect(self.site)
        self.assertEqual(self.site.openConnections, 2)
        with capturedLogs() as events:
            third, transport = connect(self.site, port=40003)
        self.assertTrue(transport.disconnected)
        self.assertFalse(firstTransport.disconnecting)
        self.assertEqual((self.site.openConnections, self.site.refusedConnections), (2, 1))
        [warning] = warnings(events)
        self.assertIn("connection from 127.0.0.1 refused: the limit of 2 connections is reached "
                      "(1 refused so far)", warning)
        lose(third)
        self.assertEqual(self.site.openConnections, 2)

    def test_closedMakesRoom(self) -> None:
        """
        Once a connection is closed, a new one is served.
        """
        first, _ = connect(self.site)
        connect(self.site)
        lose(first)
        self.assertEqual(self.site.openConnections, 1)
        protocol, transport = connect(self.site)
        self.assertFalse(transport.disconnected)
        protocol.dataReceived(b"GET /status.json HTTP/1.1\r\nHost: status\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())

    def test_wrappedNotNone(self) -> None:
        """
        Over the limit the site still builds a protocol (which closes its
        connection), so that wrapping factories such as TLS's do not wrap
        L{None}.
        """
        connect(self.site)
        connect(self.site)
        self.assertIsNotNone(self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))

    def test_default(self) -> None:
        """
        By default the limit is L{MAX_CONNECTIONS}.
        """
        site = siteFor(self.service)
        transports = [connect(site, port=40000 + i)[1] for i in range(MAX_CONNECTIONS + 1)]
        self.assertEqual([t.disconnected for t in transports],
                         [False] * MAX_CONNECTIONS + [True])


class RequestTimeoutTests(SynchronousTestCase):
    """
    A connection has C{requestTimeout} seconds for each whole request, from
    its opening and from its previous request's end.
    """

    def setUp(self) -> None:
        self.service = makeService()
        self.clock = self.service.reactor
        self.site = siteFor(self.service, requestTimeout=10)

    def test_slowHeaders(self) -> None:
        """
        A client sending its headers a line at a time, however often, is
        closed when the timeout passes since the connection opened; the
        close is counted and logged.
        """
        protocol, transport = connect(self.site)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        for i in range(9):
            self.clock.advance(1)
            protocol.dataReceived(b"X-%d: y\r\n" % (i,))
        self.assertFalse(transport.disconnecting)
        with capturedLogs() as events:
            self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.site.timedOut, 1)
        [warning] = warnings(events)
        self.assertIn("no whole request within 10 s", warning)

    def test_slowBody(self) -> None:
        """
        The timeout also covers the body.
        """
        protocol, transport = connect(self.site)
        protocol.dataReceived(post(b"/backends/db/primary/drain", b"Content-Length: 10\r\n"))
        protocol.dataReceived(b"12345")
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(backends(self.service)[0].adminState, "up")

    def test_silentConnection(self) -> None:
        """
        A connection that sends nothing is closed after the timeout, and
        reset L{ABORT_TIMEOUT} seconds later if it is still open then.
        """
        protocol, transport = connect(self.site)
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        self.clock.advance(ABORT_TIMEOUT)
        self.assertTrue(transport.disconnected)

    def test_keepAlive(self) -> None:
        """
        A kept-alive connection has the timeout again for its next request,
        from the end of the previous one; idle, it is closed after it
        without a warning.
        """
        protocol, transport = connect(self.site)
        self.clock.advance(9)
        protocol.dataReceived(b"GET /status.json HTTP/1.1\r\nHost: status\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())
        transport.clear()
        self.clock.advance(9)
        protocol.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: status\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())
        self.assertFalse(transport.disconnecting)
        with capturedLogs() as events:
            self.clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(warnings(events), [])
        self.assertEqual(self.site.timedOut, 0)

    def test_noTimerLeft(self) -> None:
        """
        Once the connection is closed, no timer of its is left.
        """
        protocol, transport = connect(self.site)
        protocol.dataReceived(b"GET /status.json HTTP/1.1\r\nHost: status\r\n\r\n")
        lose(protocol)
        self.site.doStop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_default(self) -> None:
        """
        By default the timeout is L{REQUEST_TIMEOUT} seconds.
        """
        protocol, transport = connect(siteFor(self.service))
        self.clock.advance(REQUEST_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)


class UnreadTransport(StringTransport):
    """
    A transport to a client that reads nothing until told to: once it holds
    over C{bufferSize} bytes, it pauses its producer, as Twisted's transports
    do when their buffer is full, and resumes it when drained.

    @ivar written: every byte written to it, drained or not.
    @ivar full: whether its producer is paused for it.
    """

    bufferSize = 65536
    full = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.written = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self.written += len(data)
        self._check()

    def writeSequence(self, data: Any) -> None:
        data = list(data)
        super().writeSequence(data)
        self.written += sum(map(len, data))
        self._check()

    def _check(self) -> None:
        if self.producer is not None and not self.full and len(self.value()) > self.bufferSize:
            self.full = True
            self.producer.pauseProducing()

    def drain(self) -> None:
        """
        The client reads everything held.
        """
        self.clear()
        if self.full:
            self.full = False
            self.producer.resumeProducing()


# Requests a scraper would pipeline: the two largest answers.
PIPELINED = (b"GET /metrics HTTP/1.1\r\nHost: status\r\n\r\n"
             b"GET / HTTP/1.1\r\nHost: status\r\n\r\n")


class UnreadAnswersTests(SynchronousTestCase):
    """
    A connection that keeps sending requests and reads none of the answers
    is reset once it has over C{maxUnsent} bytes of answers written while
    its transport's buffer was full; one that reads is not.
    """

    def setUp(self) -> None:
        self.service = makeService()
        self.site = siteFor(self.service, maxUnsent=100_000)

    def connect(self) -> tuple[Protocol, UnreadTransport]:
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        protocol = self.site.buildProtocol(peer)
        transport = UnreadTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_notReadingReset(self) -> None:
        """
        Answers to pipelined requests stop being written soon after the
        bound is passed: the connection is reset, counted and logged once,
        and what it sends later is not answered.
        """
        protocol, transport = self.connect()
        with capturedLogs() as events:
            protocol.dataReceived(PIPELINED * 500)
            protocol.dataReceived(PIPELINED * 500)
        self.assertTrue(transport.disconnected)
        # At most the transport's buffer, the bound, and the rest of the
        # answer being written when it was passed.
        held = transport.written
        self.assertLess(held, transport.bufferSize + 100_000 + 64 * 1024)
        self.assertGreater(held, transport.bufferSize + 100_000)
        self.assertEqual(self.site.unreadClosed, 1)
        [warning] = warnings(events)
        self.assertIn("status: connection from 127.0.0.1 reset: over 100000 bytes of answers "
                      "unread (1 reset so far)", warning)
        protocol.dataReceived(PIPELINED * 10)
        self.assertEqual(transport.written, held)
        lose(protocol)
        self.assertEqual(self.site.openConnections, 0)

    def test_readingNotReset(self) -> None:
        """
        A client that reads its answers, however many, is not reset: the
        bound counts what was written since the transport last drained.
        """
        protocol, transport = self.connect()
        for _ in range(40):
            protocol.dataReceived(PIPELINED * 3)
            transport.drain()
        self.assertGreater(transport.written, 10 * 100_000)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.site.unreadClosed, 0)
        protocol.dataReceived(b"GET /status.json HTTP/1.1\r\nHost: status\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())

    def test_default(self) -> None:
        """
        By default the bound is L{MAX_UNSENT}, 1 MiB.
        """
        self.assertEqual(MAX_UNSENT, 1024 * 1024)
        self.assertEqual(siteFor(self.service).maxUnsent, MAX_UNSENT)


class RefusalLogTests(SynchronousTestCase):
    """
    L{RefusalLog} logs at most C{lines} warnings an interval, and sums up
    the others in one line at the interval's end.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.refusals = RefusalLog(self.clock, lines=3, interval=60)
        self.log = Logger(namespace="test")

    def warn(self, count: int, kind: str = "admin requests") -> None:
        """
        Give C{self.refusals} C{count} warnings of C{kind}.
        """
        for i in range(count):
            self.refusals.warn(self.log, kind, "refused {n}", n=i)

    def test_limited(self) -> None:
        """
        Of a flood of refusals, the first C{lines} are logged, and one line
        at the end of the interval says how many more of each kind there
        were.
        """
        with capturedLogs() as events:
            self.warn(1000)
            self.warn(5, "connections over the limit")
            self.clock.advance(59)
        self.assertEqual(warnings(events), ["refused 0", "refused 1", "refused 2"])
        with capturedLogs() as events:
            self.clock.advance(1)
        self.assertEqual(warnings(events), [
            "status: 1002 more refusals suppressed in 60 s: 997 admin requests, "
            "5 connections over the limit"])

    def test_nextInterval(self) -> None:
        """
        After the interval, warnings are logged again.
        """
        self.warn(10)
        self.clock.advance(60)
        with capturedLogs() as events:
            self.warn(4)
        self.assertEqual(warnings(events), ["refused 0", "refused 1", "refused 2"])

    def test_noSummaryWhenNoneLeftOut(self) -> None:
        """
        Without warnings left out, there is no summary line and no timer.
        """
        with capturedLogs() as events:
            self.warn(3)
            self.clock.advance(120)
        self.assertEqual(len(warnings(events)), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flush(self) -> None:
        """
        L{RefusalLog.flush} logs the summary at once, and cancels its timer;
        a site stopping flushes its refusal log.
        """
        self.warn(5)
        with capturedLogs() as events:
            self.refusals.flush()
        self.assertEqual(warnings(events),
                         ["status: 2 more refusals suppressed in 60 s: 2 admin requests"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        service = makeService()
        site = StatusSite(statusResource(service.statusView), refusals=self.refusals)
        site.doStart()
        self.warn(5)
        with capturedLogs() as events:
            site.doStop()
        self.assertEqual(len(warnings(events)), 1)

    def test_defaults(self) -> None:
        """
        By default L{LOG_LINES} lines are logged in L{LOG_INTERVAL} seconds.
        """
        refusals = RefusalLog(self.clock)
        self.assertEqual((refusals.lines, refusals.interval), (LOG_LINES, LOG_INTERVAL))


class AdminRefusalLogTests(SynchronousTestCase):
    """
    Every refused admin request is logged (as the documentation says), at
    the rate the refusal log allows.
    """

    def setUp(self) -> None:
        self.service = makeService()
        self.root = statusResource(self.service.statusView)

    def refusalsLogged(self, path: bytes, method: bytes = b"POST",
                       authorization: Optional[str] = f"Bearer {TOKEN}") -> list[str]:
        """
        Render C{path}; return the warnings logged.
        """
        with capturedLogs() as events:
            render(self.root, path, method, authorization)
        return warnings(events)

    def test_every400404405Logged(self) -> None:
        """
        Unknown actions (400), unknown proxies, backends and paths (404)
        and methods other than POST (405) are logged with the client and
        the code.
        """
        cases = [
            (b"/backends/db/primary/explode", b"POST", "unknown action 'explode' (400)"),
            (b"/backends/nope/primary/drain", b"POST", "no proxy 'nope' (404)"),
            (b"/backends/db/nope/drain", b"POST", "proxy 'db' has no backend 'nope' (404)"),
            (b"/backends/db/primary", b"POST", "no such action 'db/primary' (404)"),
            (b"/backends/db/primary/drain", b"GET", "GET is not POST (405)"),
            (b"/backends/db/primary/drain", b"DELETE", "DELETE is not POST (405)"),
        ]
        for path, method, expected in cases:
            [warning] = self.refusalsLogged(path, method)
            self.assertTrue(warning.startswith("status: admin request from "), warning)
            self.assertTrue(warning.endswith(" refused: " + expected), warning)

    def test_405Answer(self) -> None:
        """
        Any method but POST is answered 405 with C{Allow: POST}.
        """
        for method in (b"GET", b"PUT", b"DELETE"):
            code, _, request = render(self.root, b"/backends/db/primary/drain", method)
            self.assertEqual(code, 405)
            self.assertEqual(request.responseHeaders.getRawHeaders(b"allow"), [b"POST"])

    def test_floodLimited(self) -> None:
        """
        A flood of requests without a token logs L{LOG_LINES} lines, then
        one line saying how many more were refused.
        """
        with capturedLogs() as events:
            for _ in range(1000):
                render(self.root, b"/backends/db/primary/drain", b"POST")
            self.service.reactor.advance(LOG_INTERVAL)
        lines = warnings(events)
        self.assertEqual(len(lines), LOG_LINES + 1)
        self.assertEqual(lines[-1], f"status: {1000 - LOG_LINES} more refusals suppressed in "
                         f"{LOG_INTERVAL} s: {1000 - LOG_LINES} admin requests")


def readable(sock: socket.socket) -> bool:
    """
    Whether C{sock} is readable now (no waiting).
    """
    return bool(select.select([sock], [], [], 0)[0])


class StatusSiteLoopbackIntegrationTests(PrivateReactorTestCase):
    """
    The status site on a real loopback socket, on a private reactor turned
    by the test: the limits hold for real clients.

    The reactor is Twisted's select reactor, not installed: the status site
    is part of the portable core, which runs on every reactor.
    """

    def listen(self, **limits: Any) -> tuple[StatusSite, int]:
        """
        The status site of a test service, with C{limits}, listening on
        loopback.

        @return: the site and its port.
        """
        site = StatusSite(statusResource(makeService().statusView), reactor=self.reactor, **limits)
        port = self.reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return site, port.getHost().port

    def client(self, port: int) -> socket.socket:
        """
        A non-blocking client socket connected to C{port}.
        """
        sock = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(sock.close)
        sock.setblocking(False)
        return sock

    def readAll(self, sock: socket.socket) -> tuple[bytes, bool]:
        """
        What C{sock} can read now, and whether it was closed (EOF or reset).
        """
        data = b""
        while readable(sock):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data, True
            if not chunk:
                return data, True
            data += chunk
        return data, False

    def test_largeBodyNeverSpooled(self) -> None:
        """
        A client announcing a 1 GiB body and sending as fast as it can gets
        413 and its connection closed; no temporary file is opened and the
        server stops reading after at most what the socket buffers held.
        """
        opened: list[object] = []
        self.patch(tempfile, "TemporaryFile", lambda *a, **k: opened.append(a) or BytesIO())
        site, port = self.listen()
        sock = self.client(port)
        sock.sendall(post(b"/backends/db/primary/drain", b"Content-Length: 1073741824\r\n",
                          token="x" * 16))
        sent, answer, closed = 0, b"", False
        block = b"\0" * 65536
        for _ in range(400):
            try:
                sent += sock.send(block)
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            self.reactor.runUntilCurrent()
            self.reactor.doIteration(0.005)
            data, closed = self.readAll(sock)
            answer += data
            if closed:
                break
        self.assertTrue(closed, "the connection was not closed")
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:100])
        self.assertEqual(opened, [])
        self.assertEqual(site.refusedBodies, 1)
        self.assertLess(sent, 64 << 20)

    def test_connectionLimit(self) -> None:
        """
        With a limit of 3, of 5 idle clients the last 2 are closed at once
        and the first 3 are served.
        """
        site, port = self.listen(maxConnections=3)
        socks = []
        for _ in range(5):
            socks.append(self.client(port))
            self.turnUntil(lambda: site.openConnections + site.refusedConnections == len(socks))
        self.turnUntil(lambda: all(self.readAll(s)[1] for s in socks[3:]))
        self.assertEqual((site.openConnections, site.refusedConnections), (3, 2))
        for sock in socks[:3]:
            sock.sendall(b"GET /status.json HTTP/1.1\r\nHost: status\r\n\r\n")
        answers = [b""] * 3

        def answered() -> bool:
            for i, sock in enumerate(socks[:3]):
                answers[i] += self.readAll(sock)[0]
            return all(b"\r\n\r\n" in a for a in answers)

        self.turnUntil(answered)
        self.assertEqual([a[:13] for a in answers], [b"HTTP/1.1 200 "] * 3)
