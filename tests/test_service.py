"""
Tests for L{txsockproxy.service}: building listeners from a config, and bind
failures.
"""

from __future__ import annotations

from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, RaisingMemoryReactor
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

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
