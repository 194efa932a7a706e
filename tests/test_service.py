"""
Tests for L{txsockproxy.service}: building listeners from a config, and bind
failures.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, RaisingMemoryReactor
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from txsockproxy import congestion
from txsockproxy.config import BackendConfig, Config, ProxyConfig
from txsockproxy.relay import ProxyFactory
from txsockproxy.service import ListenError, ProxyService


def twoProxies(debug: int = 0) -> Config:
    """
    A config with two proxies, the first listening on two endpoints.
    """
    backend = BackendConfig(endpoint="tcp:host=127.0.0.1:port=10001", label="one")
    return Config(
        proxies=(
            ProxyConfig(
                name="db",
                listen=("tcp:5432:interface=127.0.0.1", "tcp:5433:interface=127.0.0.1"),
                backends=(backend,),
            ),
            ProxyConfig(
                name="cache", listen=("tcp:6379:interface=127.0.0.1",), backends=(backend,),
                balance="round-robin",
            ),
        ),
        debug=debug,
    )


class ProxyServiceTests(SynchronousTestCase):
    """
    L{ProxyService} listens on every endpoint of every proxy.
    """

    def test_oneFactoryPerListenEndpoint(self) -> None:
        """
        Each listen endpoint gets its own L{ProxyFactory}; the listeners of
        one proxy share its backend pool; each proxy has its own pool.
        """
        reactor = MemoryReactorClock()
        service = ProxyService(twoProxies(), reactor)
        service.privilegedStartService()
        service.startService()
        ports = [(port, factory) for port, factory, _, _ in reactor.tcpServers]
        self.assertEqual(sorted(p for p, _ in ports), [5432, 5433, 6379])
        factories = [f for _, f in ports]
        self.assertTrue(all(isinstance(f, ProxyFactory) for f in factories))
        self.assertEqual(len({id(f) for f in factories}), 3)
        byPort = dict(ports)
        self.assertIs(byPort[5432].pool, byPort[5433].pool)  # type: ignore[attr-defined]
        self.assertIsNot(byPort[5432].pool, byPort[6379].pool)  # type: ignore[attr-defined]
        self.assertEqual(sorted(service.pools), ["cache", "db"])

    def test_startWithoutPrivilegedStep(self) -> None:
        """
        Started without C{privilegedStartService} (as C{twist} does), the
        service binds each listener once.
        """
        reactor = MemoryReactorClock()
        service = ProxyService(twoProxies(), reactor)
        service.startService()
        self.assertEqual(len(reactor.tcpServers), 3)

    def test_bindFailureRaisesListenError(self) -> None:
        """
        A listener that cannot bind raises L{ListenError} naming the proxy,
        the endpoint and the reason.
        """
        reactor = RaisingMemoryReactor(
            listenException=CannotListenError("127.0.0.1", 5432, OSError(98, "Address already in use"))
        )
        service = ProxyService(twoProxies(), reactor)
        error = self.assertRaises(ListenError, service.privilegedStartService)
        self.assertEqual(
            str(error),
            "Address already in use: cannot listen on tcp:5432:interface=127.0.0.1 (proxy db)",
        )

    def test_bindFailureExitsWhenAsked(self) -> None:
        """
        With the twistd plugin's handler, a bind failure is logged as one
        critical line and exits with status 1.
        """
        from txsockproxy.tap import Options, makeService

        options = Options()
        options.parseOptions(
            ["--listen", "tcp:5432:interface=127.0.0.1", "--backend", "tcp:host=127.0.0.1:port=1"]
        )
        reactor = RaisingMemoryReactor(
            listenException=CannotListenError("127.0.0.1", 5432, OSError(98, "Address already in use"))
        )
        service = makeService(options, reactor)
        with capturedLogs() as events:
            exit = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(exit.code, 1)
        critical = [e for e in events if e["log_level"].name == "critical"]
        self.assertEqual(len(critical), 1)
        self.assertEqual(
            critical[0]["error"],
            "Address already in use: cannot listen on tcp:5432:interface=127.0.0.1",
        )

    def test_bindFailureReportedToDaemonParent(self) -> None:
        """
        Under a daemonizing twistd the reason is written to the status pipe
        its parent waits on, and the pidfile is removed.
        """
        import os

        from twisted.python import usage

        from txsockproxy.tap import Options, makeService

        read, write = os.pipe()
        self.addCleanup(os.close, read)
        pidfile = self.mktemp()
        with open(pidfile, "w") as f:
            f.write("1234")
        parent = usage.Options()
        parent.update({"statusPipe": write, "pidfile": pidfile, "nodaemon": False})
        options = Options()
        options.parent = parent
        options.parseOptions(
            ["--listen", "tcp:5432:interface=127.0.0.1", "--backend", "tcp:host=127.0.0.1:port=1"]
        )
        reactor = RaisingMemoryReactor(
            listenException=CannotListenError("127.0.0.1", 5432, OSError(98, "Address already in use"))
        )
        service = makeService(options, reactor)
        with capturedLogs():
            self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(
            os.read(read, 200),
            b"1 Address already in use: cannot listen on tcp:5432:interface=127.0.0.1",
        )
        self.assertFalse(os.path.exists(pidfile))

    def test_debug3LogsBackendStateEverySecond(self) -> None:
        """
        At debug level 3 the state of every backend is logged once a second.
        """
        reactor = MemoryReactorClock()
        service = ProxyService(twoProxies(debug=3), reactor)
        service.startService()
        with capturedLogs() as events:
            reactor.advance(1)
            reactor.advance(1)
        states = [e for e in events if "backend {label} {state}" in e.get("log_format", "")]
        self.assertEqual(len(states), 4)
        self.assertEqual({e["state"] for e in states}, {"up"})

    def test_noTickerBelowDebug3(self) -> None:
        """
        Below debug level 3 nothing is scheduled per second.
        """
        reactor = MemoryReactorClock()
        service = ProxyService(twoProxies(debug=2), reactor)
        service.startService()
        self.assertEqual(reactor.getDelayedCalls(), [])

    def startLog(self, config: Config, default: str) -> list[str]:
        """
        The messages a service of C{config} logs as it starts, with
        C{default} as the system's congestion control.
        """
        self.patch(congestion, "systemDefault", lambda: default)
        self.patch(congestion, "available", lambda: ("reno", "cubic", "bbr"))
        service = ProxyService(config, MemoryReactorClock())
        with capturedLogs() as events:
            service.startService()
        return [formatEvent(e) for e in events]

    def test_congestionLogged(self) -> None:
        """
        Under BBR, the start-up log says which algorithm sockets whose peer
        is on this host get; it says nothing when the system's algorithm does
        not pace, or when no proxy or backend is left on C{"auto"}.
        """
        line = (
            "TCP congestion control: the system's is bbr; with the default (auto),"
            " sockets whose peer is on this host use cubic"
        )
        self.assertIn(line, self.startLog(twoProxies(), "bbr"))
        self.assertFalse(
            [m for m in self.startLog(twoProxies(), "cubic") if "congestion" in m]
        )
        backend = BackendConfig(endpoint="tcp:host=127.0.0.1:port=1", label="b", congestion="system")
        config = Config(
            proxies=(
                ProxyConfig(name="p", listen=("tcp:1",), backends=(backend,), clientCongestion="reno"),
            )
        )
        self.assertFalse([m for m in self.startLog(config, "bbr") if "congestion" in m])


def proxyConfig(name: str, listen: tuple[str, ...], *backends: tuple[str, str],
                balance: str = "fair") -> ProxyConfig:
    """
    A proxy listening on C{listen} with backends given as (label, endpoint).
    """
    return ProxyConfig(
        name=name, listen=listen, balance=balance,
        backends=tuple(BackendConfig(endpoint=e, label=label) for label, e in backends),
    )


A = ("a", "tcp:host=10.0.0.1:port=1")
B = ("b", "tcp:host=10.0.0.2:port=1")


class ReloadTests(SynchronousTestCase):
    """
    L{ProxyService.apply} and L{ProxyService.reload} switch a running service
    to a new configuration.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.configs: dict[str, Config] = {}
        first = Config(proxies=(proxyConfig("web", ("tcp:8080",), A, B),))
        self.service = ProxyService(first, self.reactor, configPath="c.toml",
                                    loader=self.load)
        self.service.startService()

    def load(self, path: str) -> Config:
        config = self.configs[path]
        if isinstance(config, Exception):
            raise config
        return config

    def ports(self) -> list[int]:
        return [port for port, *_ in self.reactor.tcpServers]

    def test_congestionReadAgain(self) -> None:
        """
        A reload reads the system's congestion control algorithm again: after
        a change to BBR, loopback sockets of new sessions get C{cubic}, on the
        kept listener and backend as on new ones.
        """
        self.patch(congestion, "available", lambda: ("reno", "cubic", "bbr"))
        self.configs["c.toml"] = Config(
            proxies=(proxyConfig("web", ("tcp:8080",), A, ("c", "tcp:host=10.0.0.3:port=1")),)
        )

        def chosen() -> list[Optional[bytes]]:
            factory = self.service.factories[0]
            backends = self.service.pools["web"].backends
            return [factory.congestion.name] + [b.congestion.name for b in backends]

        self.patch(congestion, "systemDefault", lambda: "cubic")
        self.assertTrue(self.service.reload())
        self.assertEqual(chosen(), [None, None, None])
        self.patch(congestion, "systemDefault", lambda: "bbr")
        self.assertTrue(self.service.reload())
        self.assertEqual(chosen(), [b"cubic", b"cubic", b"cubic"])

    def test_keepsListenersAndCounters(self) -> None:
        """
        A listener that stays keeps its socket (nothing is bound again) and
        its factory; a backend that stays (same label and endpoint) keeps
        its counters and state; the proxy keeps its counters.
        """
        pool = self.service.pools["web"]
        a = pool.backends[0]
        a.connected, a.adminState, pool.accepted = 9, "draining", 4
        factory = self.service.factories[0]
        self.configs["c.toml"] = Config(
            proxies=(proxyConfig("web", ("tcp:8080",), A, ("c", "tcp:host=10.0.0.3:port=1"),
                                 balance="round-robin"),)
        )
        self.assertTrue(self.service.reload())
        self.assertEqual(self.ports(), [8080])
        self.assertIs(self.service.factories[0], factory)
        self.assertIs(self.service.pools["web"], pool)
        self.assertEqual([b.label for b in pool.backends], ["a", "c"])
        self.assertIs(pool.backends[0], a)
        self.assertEqual((a.connected, a.adminState, pool.accepted), (9, "draining", 4))
        self.assertEqual(pool.config.balance, "round-robin")

    def test_newAndRemovedListeners(self) -> None:
        """
        New listen endpoints are bound, removed ones stop listening.
        """
        old = self.service._listeners["tcp:8080"].service
        self.configs["c.toml"] = Config(proxies=(proxyConfig("web", ("tcp:8081",), A),))
        self.assertTrue(self.service.reload())
        self.assertEqual(self.ports(), [8080, 8081])
        self.assertEqual([f.listen for f in self.service.factories], ["tcp:8081"])
        self.assertFalse(old.running)
        self.assertTrue(self.service._listeners["tcp:8081"].service.running)

    def test_sessionInFlightKeepsItsBackend(self) -> None:
        """
        A session started before a reload keeps its backend even when the
        reload removes that backend.
        """
        from relay_fakes import HalfCloseTransport

        factory = self.service.factories[0]
        client = factory.buildProtocol(None)
        client.makeConnection(HalfCloseTransport())
        session = client.session
        assert session is not None
        backend = session.backend
        assert backend is not None
        self.configs["c.toml"] = Config(proxies=(proxyConfig("web", ("tcp:8080",), B),))
        self.service.reload()
        self.assertIs(session.backend, backend)
        self.assertNotIn(backend, self.service.pools["web"].backends)

    def test_invalidConfigKeepsRunning(self) -> None:
        """
        A configuration that fails validation is logged, problem by problem,
        and the running one stays.
        """
        from txsockproxy.config import ConfigError, Problem

        self.configs["c.toml"] = ConfigError(  # type: ignore[assignment]
            [Problem("c.toml", 3, "proxy[0].balance", "unknown balancer 'x'")]
        )
        with capturedLogs() as events:
            self.assertFalse(self.service.reload())
        text = [e.get("problem", "") for e in events]
        self.assertIn("c.toml:3: proxy[0].balance: unknown balancer 'x'", text)
        self.assertEqual([b.label for b in self.service.pools["web"].backends], ["a", "b"])

    def test_bindFailureRollsBack(self) -> None:
        """
        When a new listener cannot be bound nothing changes: not the pools,
        not the listeners.
        """
        pool = self.service.pools["web"]
        self.reactor.listenTCP = _refuseBind(self.reactor.listenTCP, 9999)  # type: ignore[method-assign]
        self.configs["c.toml"] = Config(
            proxies=(proxyConfig("web", ("tcp:8080", "tcp:9999"), ("c", "tcp:host=10.0.0.3:port=1")),)
        )
        with capturedLogs() as events:
            self.assertFalse(self.service.reload())
        self.assertEqual([b.label for b in pool.backends], ["a", "b"])
        self.assertEqual(list(self.service._listeners), ["tcp:8080"])
        self.assertTrue(any("reload failed" in e.get("log_format", "") for e in events))

    def test_noticesLogged(self) -> None:
        """
        The notices of the new configuration (e.g. lighttpd directives that
        are ignored) are logged on reload, as at start-up.
        """
        self.configs["c.toml"] = Config(
            proxies=(proxyConfig("web", ("tcp:8080",), A),),
            notices=("ignored directives: server.document-root",),
        )
        with capturedLogs() as events:
            self.assertTrue(self.service.reload())
        self.assertIn(
            "ignored directives: server.document-root", [e.get("notice") for e in events]
        )

    def test_noConfigFile(self) -> None:
        """
        A proxy from the command line has nothing to reload.
        """
        service = ProxyService(twoProxies(), MemoryReactorClock())
        self.assertFalse(service.reload())


def _refuseBind(listenTCP, refused: int):  # type: ignore[no-untyped-def]
    def listen(port, factory, backlog=50, interface=""):  # type: ignore[no-untyped-def]
        if port == refused:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return listenTCP(port, factory, backlog, interface)

    return listen


class ShutdownTests(SynchronousTestCase):
    """
    L{ProxyService.stopService} stops accepting at once and waits for the
    sessions in flight, up to shutdown-timeout.
    """

    def setUp(self) -> None:
        from relay_fakes import HalfCloseTransport

        self.reactor = MemoryReactorClock()
        # Shorter than the connect timeout (8 s): the session stays connecting.
        config = Config(proxies=(proxyConfig("web", ("tcp:8080",), A),), shutdownTimeout=3)
        self.service = ProxyService(config, self.reactor)
        self.service.startService()
        factory = self.service.factories[0]
        self.client = factory.buildProtocol(None)
        self.clientTransport = HalfCloseTransport()
        self.client.makeConnection(self.clientTransport)

    def test_waitsForSessions(self) -> None:
        """
        The Deferred of C{stopService} fires only once the open session has
        ended, before the timeout.
        """
        d = self.service.stopService()
        self.assertNoResult(d)
        self.reactor.advance(2)
        self.assertNoResult(d)
        self.client.connectionLost(_lost())
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_timeoutAbortsSessions(self) -> None:
        """
        At shutdown-timeout the sessions still open are aborted; the Deferred
        fires when they are gone.
        """
        d = self.service.stopService()
        self.reactor.advance(3)
        self.assertTrue(self.clientTransport.aborted)
        self.assertNoResult(d)
        self.client.connectionLost(_lost())
        self.successResultOf(d)
        self.assertEqual(self.client.session.ended, "shutdown")  # type: ignore[union-attr]

    def test_noSessions(self) -> None:
        """
        With no session open, stopping is immediate.
        """
        self.client.connectionLost(_lost())
        self.successResultOf(self.service.stopService())


def _lost():  # type: ignore[no-untyped-def]
    from relay_fakes import lost

    return lost()
