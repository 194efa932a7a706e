"""
Tests for C{HEAD} requests to the status site (L{txsockproxy.status.StatusSite}):
answered with the headers of C{GET}, no body, and no log line.
"""

from __future__ import annotations

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from tests.test_status import makeService
from tests.test_status_limits import connect, siteFor

PAGES = (b"/", b"/status.json", b"/metrics", b"/server-statistics")


def ask(site: object, method: bytes, path: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """
    Send one C{method} request for C{path} to C{site} on a new connection.

    @return: the status line, the headers (lower-cased names), and what
        follows them.
    """
    protocol, transport = connect(site)  # type: ignore[arg-type]
    protocol.dataReceived(method + b" " + path + b" HTTP/1.1\r\nHost: status\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b": ")
        headers[name.lower()] = value
    return status, headers, body


class HeadTests(SynchronousTestCase):
    """
    C{HEAD} of any path of the status site answers what C{GET} would
    without its body, and logs nothing.
    """

    def setUp(self) -> None:
        self.site = siteFor(makeService())

    def test_pages(self) -> None:
        """
        C{HEAD} of each page has C{GET}'s status, C{Content-Type} and
        C{Content-Length}, no body, and no log line.
        """
        for path in PAGES:
            getStatus, getHeaders, getBody = ask(self.site, b"GET", path)
            with capturedLogs() as events:
                status, headers, body = ask(self.site, b"HEAD", path)
            self.assertEqual(events, [], path)
            self.assertEqual(body, b"", path)
            self.assertEqual(status, getStatus, path)
            self.assertEqual(headers[b"content-type"], getHeaders[b"content-type"], path)
            length = int(headers[b"content-length"])
            if path == b"/metrics":
                # The process_* values (CPU seconds, memory, descriptors)
                # may differ between the two scrapes: in digits, and in
                # how many digits each float is written with.
                self.assertAlmostEqual(length, len(getBody), delta=200)
            else:
                self.assertEqual(length, len(getBody), path)

    def test_errors(self) -> None:
        """
        C{HEAD} of a path that does not exist answers 404, and of an admin
        action 405, with no body and no line about a body.
        """
        for path, code in ((b"/nothing", b"404"), (b"/backends/db/primary/drain", b"405")):
            with capturedLogs() as events:
                status, headers, body = ask(self.site, b"HEAD", path)
            self.assertEqual(status.split(b" ")[1], code, path)
            self.assertEqual(body, b"", path)
            self.assertGreater(int(headers[b"content-length"]), 0)
            self.assertEqual([e for e in events if "body" in str(e.get("log_format"))], [],
                             path)

    def test_pipelined(self) -> None:
        """
        A C{GET} pipelined after a C{HEAD} on the same connection is
        answered whole right after the C{HEAD}'s headers.
        """
        protocol, transport = connect(self.site)
        protocol.dataReceived(b"HEAD /status.json HTTP/1.1\r\nHost: status\r\n\r\n"
                              b"GET /server-statistics HTTP/1.1\r\nHost: status\r\n\r\n")
        head, get = transport.value().split(b"HTTP/1.1 200 OK\r\n")[1:]
        self.assertTrue(head.endswith(b"\r\n\r\n"), head)
        headers, _, body = get.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: %d\r\n" % (len(body),), headers + b"\r\n")
        self.assertTrue(body.startswith(b"gw.active-requests: 0\n"), body)
