"""
Integration tests: the proxy running out of file descriptors is the proxy's
problem, not its backends'. C{twistd sockproxy} runs as a subprocess whose
descriptor limit the test lowers once it has started.
"""

from __future__ import annotations

import select
import socket

import psutil
from integration_support import (
    Deadline,
    connect,
    echoHandler,
    freePort,
    proxyConfig,
    tcpListen,
)
from test_integration import _IntegrationTestCase


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
        port = freePort()
        config = proxyConfig(
            self.tmp, [tcpListen(port)],
            [{"endpoint": backend.endpoint, "disable-time": 60}], debug=1,
        )
        process = self.startTwistd(["sockproxy", "--config", config])
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
        self.assertEqual(process.matching("disabled for"), [])
        self.assertEqual(process.matching("all backends down"), [])
        self.assertNoHandlerErrors(backend)

    def setUp(self) -> None:
        super().setUp()
        # A client refused at accept may be reset by the proxy's kernel.
        self.addCleanup(socket.setdefaulttimeout, socket.getdefaulttimeout())
