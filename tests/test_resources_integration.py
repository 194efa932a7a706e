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
    A spike of clients beyond the proxy's descriptor limit closes the
    clients it cannot serve, and leaves the backends up.
    """

    def test_backendsStayUp(self) -> None:
        """
        With more clients than descriptors, the clients that cannot get a
        backend connection are closed and counted as the proxy's own
        resource errors; no backend is disabled (disable-time is long), so
        once the spike is over every new client is served at once.
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
        # Odd: once 20 sessions hold 40, the next accept takes the last
        # descriptor, and its backend socket finds none.
        limit = proxy.num_fds() + 41
        proxy.rlimit(psutil.RLIMIT_NOFILE, (limit, limit))
        address = ("127.0.0.1", port)
        clients = []
        for _ in range(60):
            try:
                clients.append(connect(address))
            except OSError:
                break
        for client in clients:
            client.setblocking(False)
            try:
                client.send(b"x")
            except OSError:
                pass
        process.waitFor("out of resources", timeout=10)
        for client in clients:
            client.close()
        # Back under the limit once the spike's sessions are gone.
        deadline = Deadline(10, "the spike's sessions ending")
        while proxy.num_fds() > limit - 30:
            select.select([], [], [], min(0.05, deadline.remaining()))
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
        # The spike goes on past the descriptors: later clients are closed
        # at accept, and counted.
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
