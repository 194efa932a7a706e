"""
Integration tests: the proxy running out of file descriptors is the proxy's
problem, not its backends'. C{twistd sockproxy} runs as a subprocess whose
descriptor limit the test lowers once it has started.
"""

from __future__ import annotations

import json
import select
import socket
import urllib.request

import psutil

from tests.integration_support import (
    LOOPBACK,
    Deadline,
    boundPorts,
    connect,
    echoHandler,
    proxyConfig,
)
from tests.test_integration import _IntegrationTestCase


class DescriptorExhaustionIntegrationTests(_IntegrationTestCase):
    """
    Clients beyond the proxy's descriptor limit are closed, and counted;
    the backends stay up.
    """

    def test_backendsStayUp(self) -> None:
        """
        A client accepted with the last descriptor, which leaves none for
        its backend connection, is closed and counted as the proxy's own
        resource error; one that arrives with none left is closed by
        Twisted's recovery at accept, and counted; no backend is disabled
        (disable-time is long), so once descriptors are back every new
        client is served at once.
        """
        backend = self.startServer(echoHandler)
        config = proxyConfig(
            self.tmp, [LOOPBACK],
            [{"endpoint": backend.endpoint, "disable-time": 60}], debug=1,
        )
        with open(config, "a", encoding="utf-8") as f:
            f.write(f'\n[status]\nlisten = "{LOOPBACK}"\n')
        process = self.startTwistd(["sockproxy", "--config", config])
        port, statusPort = boundPorts(process, 2)
        proxy = psutil.Process(process.pid)
        address = ("127.0.0.1", port)

        def ended(client: socket.socket) -> None:
            # The proxy closes the client (EOF, or a reset).
            client.settimeout(10)
            try:
                self.assertEqual(client.recv(100), b"")
            except ConnectionResetError:
                pass
            client.close()

        # One descriptor left: the accept takes it, and the backend socket
        # finds none. (If the proxy held one more descriptor for a moment,
        # the accept finds none instead: then try again.)
        _, hard = proxy.rlimit(psutil.RLIMIT_NOFILE)
        for _ in range(5):
            free = proxy.num_fds() + 1
            # The soft limit only: raising it again needs no privilege.
            proxy.rlimit(psutil.RLIMIT_NOFILE, (free, hard))
            recovered = len(process.matching("EMFILE recovery: Closed"))
            client = connect(address)
            client.sendall(b"x")
            ended(client)
            deadline = Deadline(10, "the proxy logging why it closed the client")
            while not process.matching("out of resources") and len(
                process.matching("EMFILE recovery: Closed")
            ) == recovered:
                select.select([], [], [], min(0.05, deadline.remaining()))
            if process.matching("out of resources"):
                break
        process.waitFor("out of resources", timeout=1)
        # None left: Twisted's port accepts and closes in its recovery. (If
        # a descriptor of the session before was still being closed when
        # they were counted, the accept finds one and the backend socket
        # none: then try again.)
        for _ in range(5):
            proxy.rlimit(psutil.RLIMIT_NOFILE, (proxy.num_fds(), hard))
            recovered = len(process.matching("EMFILE recovery: Closed"))
            outOfResources = len(process.matching("out of resources"))
            client = connect(address)
            deadline = Deadline(10, "the proxy closing a client at accept")
            while len(process.matching("out of resources")) == outOfResources and len(
                process.matching("EMFILE recovery: Closed")
            ) == recovered:
                select.select([], [], [], min(0.05, deadline.remaining()))
            ended(client)
            if len(process.matching("EMFILE recovery: Closed")) > recovered:
                break
        process.waitFor("EMFILE recovery: Closed", count=recovered + 1, timeout=1)
        proxy.rlimit(psutil.RLIMIT_NOFILE, (free + 100, hard))
        for i in range(10):
            with connect(address) as probe:
                probe.settimeout(5)
                probe.sendall(b"probe %d" % i)
                self.assertEqual(probe.recv(100), b"probe %d" % i)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{statusPort}/status.json", timeout=10
        ) as reply:
            document = json.load(reply)
        [proxyStatus] = document["proxies"]
        self.assertGreaterEqual(proxyStatus["resource_errors"], 1)
        self.assertEqual(proxyStatus["backends"][0]["failed"], 0)
        closed = len(process.matching("EMFILE recovery: Closed"))
        self.assertGreaterEqual(closed, 1)
        self.assertEqual(document["closed_at_accept"], closed)
        self.assertEqual(process.matching("disabled for"), [])
        self.assertEqual(process.matching("all backends down"), [])
        self.assertNoHandlerErrors(backend)

    def setUp(self) -> None:
        super().setUp()
        # A client refused at accept may be reset by the proxy's kernel.
        self.addCleanup(socket.setdefaulttimeout, socket.getdefaulttimeout())
