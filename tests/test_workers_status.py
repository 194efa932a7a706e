"""
Tests for the status site of an instance with workers
(L{txsockproxy.instancestatus.instanceStatusSite}), served by the parent
from the workers' answers: here a fake parent whose answers the tests give.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
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
