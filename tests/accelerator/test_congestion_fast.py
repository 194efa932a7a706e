"""
Tests of congestion control on the accelerator's relay path: a proxy on the
accelerator's own reactor gives its client and backend sockets the
configured TCP congestion control algorithms, also across reloads.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import Any

from tests.accelerator.reactor_support import ReactorTestCase
from tests.test_congestion import KERNEL_NAMES, algorithmOf
from txsockproxy import congestion
from txsockproxy.congestion import isLoopback, paces


class ProxySocketsTests(ReactorTestCase):
    """
    A proxy gives its client and backend sockets the configured algorithms.
    """

    def setUp(self) -> None:
        if not KERNEL_NAMES:
            raise self.skipTest("needs Linux's congestion control algorithms")
        super().setUp()

    def sessionSockets(self, clientCongestion: str, backendCongestion: str) -> tuple[str, str]:
        """
        The algorithms of the client and backend sockets of one session of a
        proxy with these settings.
        """
        backend = self.listenTCP()
        factory, listening = self.proxy(backend, clientCongestion, backendCongestion)
        client = socket.create_connection(("127.0.0.1", listening.getHost().port))
        self.addCleanup(client.close)
        self.turnUntil(lambda: any(s.backendTransport for s in factory.sessions.open))
        accepted, _ = backend.accept()
        self.addCleanup(accepted.close)
        [session] = factory.sessions.open
        return (
            algorithmOf(session.clientTransport.socket),
            algorithmOf(session.backendTransport.socket),
        )

    def test_named(self) -> None:
        """
        Named algorithms are set on the client and the backend sockets.
        """
        self.assertEqual(self.sessionSockets("reno", "reno"), ("reno", "reno"))

    def test_system(self) -> None:
        """
        With C{"system"}, both sockets keep the system's algorithm.
        """
        default = congestion.systemDefault()
        self.assertEqual(self.sessionSockets("system", "system"), (default, default))

    def test_autoOwnAddress(self) -> None:
        """
        With C{"auto"} under BBR, a client connecting to one of this host's
        addresses other than loopback is on this host too: its socket gets
        C{cubic}.
        """
        if not paces(congestion.systemDefault()):
            raise self.skipTest("the system's algorithm is not BBR")
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent
            own = probe.getsockname()[0]
        except OSError:
            raise self.skipTest("no address but loopback") from None
        finally:
            probe.close()
        if isLoopback(own):
            raise self.skipTest("no address but loopback") from None
        backend = self.listenTCP()
        factory, _ = self.proxy(backend)
        listening = self.reactor.listenTCP(0, factory, interface=own)
        self.addCleanup(listening.stopListening)
        client = socket.create_connection((own, listening.getHost().port))
        self.addCleanup(client.close)
        self.turnUntil(lambda: any(s.backendTransport for s in factory.sessions.open))
        accepted, _ = backend.accept()
        self.addCleanup(accepted.close)
        [session] = factory.sessions.open
        self.assertEqual(algorithmOf(session.clientTransport.socket), "cubic")

    def openSessions(self, factory: Any, listening: Any, backend: socket.socket, count: int) -> list[Any]:
        """
        Open C{count} more sessions through the proxy, one after the other;
        all of its sessions open.
        """
        for _ in range(count):
            expected = len(factory.sessions.open) + 1
            client = socket.create_connection(("127.0.0.1", listening.getHost().port))
            self.addCleanup(client.close)
            self.turnUntil(
                lambda n=expected: sum(1 for s in factory.sessions.open if s.backendTransport) == n
            )
            accepted, _ = backend.accept()
            self.addCleanup(accepted.close)
        return list(factory.sessions.open)

    def test_autoOnLoopbackListener(self) -> None:
        """
        Under BBR, with C{"auto"}, a proxy listening on loopback gives its
        listening socket C{cubic}, so that every client socket has it, and
        gives it to each backend socket before the connect.
        """
        default = congestion.systemDefault()
        if not paces(default) or "cubic" not in (KERNEL_NAMES or ()):
            raise self.skipTest("the system's algorithm is not BBR, or no cubic")
        backend = self.listenTCP()
        factory, listening = self.proxy(backend)
        sessions = self.openSessions(factory, listening, backend, 3)
        self.assertEqual(algorithmOf(listening.socket), "cubic")
        self.assertEqual(
            [(algorithmOf(s.clientTransport.socket), algorithmOf(s.backendTransport.socket),
              s.backendTransport.congestionSet) for s in sessions],
            [("cubic", "cubic", True)] * 3,
        )

    def test_reloadSameSetting(self) -> None:
        """
        A reload that keeps the setting (logrotate's SIGHUP) leaves no client
        on the system's algorithm, even clients waiting to be accepted across
        it.
        """
        from txsockproxy.backends import BackendPool
        from txsockproxy.balancers import FairBalancer

        default = congestion.systemDefault()
        if not paces(default) or "cubic" not in (KERNEL_NAMES or ()):
            raise self.skipTest("the system's algorithm is not BBR, or no cubic")
        backend = self.listenTCP()
        factory, listening = self.proxy(backend)
        self.openSessions(factory, listening, backend, 1)
        address = ("127.0.0.1", listening.getHost().port)
        waiting = [socket.create_connection(address) for _ in range(2)]
        factory.usePool(BackendPool.fromConfig(factory.pool.config, FairBalancer(), self.reactor))
        waiting.append(socket.create_connection(address))
        for client in waiting:
            self.addCleanup(client.close)
        self.turnUntil(lambda: sum(1 for s in factory.sessions.open if s.backendTransport) == 4)
        for _ in range(3):
            accepted, _ = backend.accept()
            self.addCleanup(accepted.close)
        self.assertEqual(
            [algorithmOf(s.clientTransport.socket) for s in factory.sessions.open], ["cubic"] * 4
        )

    def test_reloadReleasesListener(self) -> None:
        """
        A reload to C{"system"} gives the listening socket the system's
        algorithm, and new clients keep it.
        """
        from txsockproxy.backends import BackendPool
        from txsockproxy.balancers import FairBalancer

        default = congestion.systemDefault()
        if not paces(default) or "cubic" not in (KERNEL_NAMES or ()):
            raise self.skipTest("the system's algorithm is not BBR, or no cubic")
        backend = self.listenTCP()
        factory, listening = self.proxy(backend)
        [first] = self.openSessions(factory, listening, backend, 1)
        self.assertEqual(algorithmOf(listening.socket), "cubic")
        config = replace(factory.pool.config, clientCongestion="system")
        factory.usePool(BackendPool.fromConfig(config, FairBalancer(), self.reactor))
        self.assertEqual(algorithmOf(listening.socket), default)
        sessions = self.openSessions(factory, listening, backend, 1)
        [second] = [s for s in sessions if s is not first]
        self.assertEqual(algorithmOf(second.clientTransport.socket), default)

    def test_auto(self) -> None:
        """
        With C{"auto"} (the default), loopback sockets get C{cubic} when the
        system's algorithm is BBR, and keep the system's otherwise.
        """
        default = congestion.systemDefault()
        assert KERNEL_NAMES is not None
        if paces(default):
            expected = "cubic" if "cubic" in KERNEL_NAMES else "reno"
        else:
            expected = default or ""
        self.assertEqual(self.sessionSockets("auto", "auto"), (expected, expected))
