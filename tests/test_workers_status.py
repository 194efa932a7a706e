"""
Tests for the status site of an instance with workers
(L{txsockproxy.instancestatus.instanceStatusSite}), served by the parent
from the workers' answers: here a fake parent whose answers the tests give.
"""

from __future__ import annotations

import gc
import json
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.test_status import TOKEN, makeService
from txsockproxy.config import StatusConfig
from txsockproxy.instancestatus import instanceStatusSite
from txsockproxy.status import StatusSite, serverStatistics, statusDocument
from txsockproxy.workers import WorkerSnapshot


class FakeParent:
    """
    A parent whose snapshots and admin answers are Deferreds the test fires.

    @ivar asked: the Deferreds of the snapshots asked for, in order.
    @ivar actions: the Deferreds of the admin actions asked for, in order.
    """

    def __init__(self) -> None:
        self.reactor = Clock()
        self.adminToken = TOKEN
        self.asked: list[defer.Deferred[Any]] = []
        self.actions: list[defer.Deferred[Any]] = []

    def snapshots(self) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.asked.append(d)
        return d

    def admin(self, proxy: str, label: str, action: str,
              timeout: Optional[float]) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.actions.append(d)
        return d


def snapshots() -> list[WorkerSnapshot]:
    """
    Two workers' snapshots, of the same service.
    """
    view = makeService().statusView
    snapshot = {"status": statusDocument(view), "metrics": "", "statistics":
                serverStatistics(view)}
    return [WorkerSnapshot(i, 100 + i, "serving", 0, snapshot) for i in range(2)]


def connect(site: StatusSite) -> tuple[Any, StringTransport]:
    """
    A connection to C{site}: its protocol and transport.
    """
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    protocol = site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


class InstanceHeadTests(SynchronousTestCase):
    """
    C{HEAD} of a page of the instance's site answers the headers of C{GET},
    its C{Content-Length} too, without a body or a log line.
    """

    def test_head(self) -> None:
        """
        C{HEAD /server-statistics} and C{HEAD /status.json} answer
        C{GET}'s C{Content-Type} and C{Content-Length} and no body.
        """
        parent = FakeParent()
        site = instanceStatusSite(parent, StatusConfig(("tcp:9180",)))
        for path in (b"/server-statistics", b"/status.json"):
            answers = {}
            for method in (b"GET", b"HEAD"):
                protocol, transport = connect(site)
                with capturedLogs() as events:
                    protocol.dataReceived(method + b" " + path
                                          + b" HTTP/1.1\r\nHost: status\r\n\r\n")
                    parent.asked.pop().callback(snapshots())
                self.assertEqual(events, [])
                answers[method] = transport.value().partition(b"\r\n\r\n")
            getHead, _, getBody = answers[b"GET"]
            head, _, body = answers[b"HEAD"]
            self.assertEqual(body, b"")
            self.assertIn(b"Content-Length: %d\r\n" % (len(getBody),), head + b"\r\n")
            self.assertEqual([h for h in head.split(b"\r\n") if not h.startswith(b"Date:")],
                             [h for h in getHead.split(b"\r\n") if not h.startswith(b"Date:")])


ADMIN = (b"POST /backends/db/primary/enable HTTP/1.1\r\nHost: status\r\nConnection: close\r\n"
         b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
GET = b"GET /status.json HTTP/1.1\r\nHost: status\r\nConnection: close\r\n\r\n"


class LostBeforeAnswerTests(SynchronousTestCase):
    """
    A client whose connection is lost before the workers answer gets
    nothing written, and its answer logs no error.
    """

    def setUp(self) -> None:
        self.parent = FakeParent()
        self.site = instanceStatusSite(self.parent, StatusConfig(("tcp:9180",)))

    def assertNoErrors(self, events: list[dict[str, Any]]) -> None:
        """
        No error was logged, nor left in a Deferred to be logged.
        """
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual([e for e in events if e["log_level"] >= LogLevel.error], [])

    def test_admin(self) -> None:
        """
        An admin action whose client went away before the workers applied
        it is still logged, and its answer raises and logs no error.
        """
        protocol, transport = connect(self.site)
        protocol.dataReceived(ADMIN)
        protocol.connectionLost(Failure(ConnectionDone()))
        with capturedLogs() as events:
            self.parent.actions.pop().callback([(0, 200, json.dumps({"state": "up"}))])
            self.assertNoErrors(events)
        self.assertEqual(transport.value(), b"")
        [info] = [e for e in events if e["log_level"] == LogLevel.info]
        self.assertEqual((info["proxy"], info["label"], info["action"]),
                         ("db", "primary", "enable"))

    def test_adminAnswered(self) -> None:
        """
        A client still connected gets the answer of the workers.
        """
        protocol, transport = connect(self.site)
        protocol.dataReceived(ADMIN)
        self.parent.actions.pop().callback([(0, 200, json.dumps({"state": "up"}))])
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())
        self.assertIn(b'"workers": [{"worker": 0', transport.value())

    def test_adminFailed(self) -> None:
        """
        An admin action that fails is logged once, and answered 500 to a
        client still connected, nothing to one gone.
        """
        for lost in (False, True):
            protocol, transport = connect(self.site)
            protocol.dataReceived(ADMIN)
            if lost:
                protocol.connectionLost(Failure(ConnectionDone()))
            with capturedLogs() as events:
                self.parent.actions.pop().errback(Failure(ValueError("boom")))
            self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
            gc.collect()
            self.assertEqual(self.flushLoggedErrors(), [])
            self.assertEqual(len([e for e in events if e["log_level"] >= LogLevel.error]), 1)
            if lost:
                self.assertEqual(transport.value(), b"")
            else:
                self.assertTrue(transport.value().startswith(b"HTTP/1.1 500 "),
                                transport.value())

    def test_page(self) -> None:
        """
        A page whose client went away before the workers answered is not
        written, and its answer logs no error.
        """
        protocol, transport = connect(self.site)
        protocol.dataReceived(GET)
        protocol.connectionLost(Failure(ConnectionDone()))
        with capturedLogs() as events:
            self.parent.asked.pop().callback(snapshots())
            self.assertNoErrors(events)
        self.assertEqual(transport.value(), b"")
