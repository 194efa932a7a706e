"""
Tests for L{txsockproxy.service}: building listeners from a config, the
service tree (listeners and ticker as child services), bind failures,
reloading as build, bind, then commit, the bound-address log lines, and
shutdown.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import Any, Optional

from twisted.application.internet import TimerService
from twisted.application.service import IService
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorThreads, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock, RaisingMemoryReactor
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.fakes import PrivateReactorTestCase
from txsockproxy import congestion
from txsockproxy import service as serviceModule
from txsockproxy.config import BackendConfig, Config, ProxyConfig, StatusConfig
from txsockproxy.relay import ProxyFactory
from txsockproxy.service import (
    DEFAULT_BACKLOG,
    ListenError,
    ListenerService,
    ProxyService,
    StartupError,
    boundAddress,
    reactorThreadRunner,
    systemBacklog,
    withBacklog,
)


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


class SessionLogStartupTests(SynchronousTestCase):
    """
    A session log that cannot be opened stops start-up with one line.
    """

    def test_nulInPath(self) -> None:
        """
        A session-log path with a NUL (which loading refuses, but a config
        built in code may hold) is a L{StartupError}, not a C{ValueError}.
        """
        config = Config(proxies=twoProxies().proxies, sessionLog="/var/log/s\0")
        service = ProxyService(config, MemoryReactorClock())
        reported: list[StartupError] = []
        service.onStartupError = reported.append
        self.assertRaises(StartupError, service.startService)
        self.assertEqual([str(e) for e in reported],
                         ["cannot open session-log '/var/log/s\\x00': embedded null byte"])


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
        self.assertTrue(self.successResultOf(self.service.reload()))
        self.assertEqual(chosen(), [None, None, None])
        self.patch(congestion, "systemDefault", lambda: "bbr")
        self.assertTrue(self.successResultOf(self.service.reload()))
        self.assertEqual(chosen(), [b"cubic", b"cubic", b"cubic"])

    def test_workersChangeSaid(self) -> None:
        """
        A reload that changes C{workers} says that it takes effect at the
        next start (one process does not start workers on a reload).
        """
        self.configs["c.toml"] = replace(
            Config(proxies=(proxyConfig("web", ("tcp:8080",), A),)), workers=2
        )
        with capturedLogs() as events:
            self.assertTrue(self.successResultOf(self.service.reload()))
        said = [formatEvent(e) for e in events]
        self.assertIn("reload: workers = 2 takes effect at the next start", said)
        with capturedLogs() as events:
            self.assertTrue(self.successResultOf(self.service.reload()))
        self.assertNotIn("reload: workers = 2 takes effect at the next start",
                         [formatEvent(e) for e in events])

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
        self.assertTrue(self.successResultOf(self.service.reload()))
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
        [old] = self.service.listeners
        self.configs["c.toml"] = Config(proxies=(proxyConfig("web", ("tcp:8081",), A),))
        self.assertTrue(self.successResultOf(self.service.reload()))
        self.assertEqual(self.ports(), [8080, 8081])
        self.assertEqual([f.listen for f in self.service.factories], ["tcp:8081"])
        self.assertFalse(old.running)
        self.assertIsNone(old.parent)
        [new] = self.service.listeners
        self.assertTrue(new.running)
        self.assertEqual(list(self.service), [new])

    def test_sessionInFlightKeepsItsBackend(self) -> None:
        """
        A session started before a reload keeps its backend even when the
        reload removes that backend.
        """
        from tests.fakes import HalfCloseTransport

        factory = self.service.factories[0]
        client = factory.buildProtocol(None)
        client.makeConnection(HalfCloseTransport())
        session = client.session
        assert session is not None
        backend = session.backend
        assert backend is not None
        self.configs["c.toml"] = Config(proxies=(proxyConfig("web", ("tcp:8080",), B),))
        self.assertTrue(self.successResultOf(self.service.reload()))
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
            self.assertFalse(self.successResultOf(self.service.reload()))
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
            self.assertFalse(self.successResultOf(self.service.reload()))
        self.assertEqual([b.label for b in pool.backends], ["a", "b"])
        self.assertEqual([c.description for c in self.service.listeners], ["tcp:8080"])
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
            self.assertTrue(self.successResultOf(self.service.reload()))
        self.assertIn(
            "ignored directives: server.document-root", [e.get("notice") for e in events]
        )

    def test_noConfigFile(self) -> None:
        """
        A proxy from the command line has nothing to reload.
        """
        service = ProxyService(twoProxies(), MemoryReactorClock())
        self.assertFalse(self.successResultOf(service.reload()))


class FakeThreadRunner:
    """
    Stands in for a thread pool: records each function given to run, and
    runs it only when the test says so, firing its Deferred then.

    @ivar calls: each call not yet run: the function, its arguments and
        the Deferred returned for it.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, function: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((function, args, d))
        return d

    def runNext(self) -> None:
        """
        Run the oldest recorded call, as the pool's thread would, and fire
        its Deferred with the outcome.
        """
        function, args, d = self.calls.pop(0)
        try:
            result = function(*args)
        except BaseException:
            d.errback()
        else:
            d.callback(result)


class _ReopenCounter:
    """
    A session log that counts its reopens.
    """

    destination = "/var/log/sockproxy.log"
    logFormat = "text"

    def __init__(self) -> None:
        self.reopened = 0

    def reopen(self) -> None:
        self.reopened += 1

    def close(self) -> None:
        pass


class ReloadOffThreadTests(SynchronousTestCase):
    """
    L{ProxyService.reload} reads the file through its thread runner, away
    from the reactor thread, applies the result on the reactor thread, and
    runs one reload at a time.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.runner = FakeThreadRunner()
        self.loaded: list[str] = []
        self.next: list[Any] = []
        first = Config(proxies=(proxyConfig("web", ("tcp:8080",), A),))
        self.service = ProxyService(first, self.reactor, configPath="c.toml",
                                    loader=self.load, runInThread=self.runner)
        self.service.startService()

    def load(self, path: str) -> Config:
        """
        The loader: records the path and returns (or raises) the next of
        C{self.next}.
        """
        self.loaded.append(path)
        outcome = self.next.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, Config)
        return outcome

    def listening(self, port: int) -> Config:
        """
        A config whose one proxy listens on C{port}.
        """
        return Config(proxies=(proxyConfig("web", (f"tcp:{port}",), A),))

    def listen(self) -> list[tuple[str, ...]]:
        return [proxy.listen for proxy in self.service.config.proxies]

    def test_loadsThroughRunner(self) -> None:
        """
        C{reload()} hands the loader and the path to the thread runner and
        returns at once: nothing is read or changed until the runner has run
        it; then the config is applied and the Deferred fires with C{True}.
        """
        self.next.append(self.listening(8081))
        d = self.service.reload()
        self.assertEqual([(f, args) for f, args, _ in self.runner.calls],
                         [(self.load, ("c.toml",))])
        self.assertEqual(self.loaded, [])
        self.assertNoResult(d)
        self.assertEqual(self.listen(), [("tcp:8080",)])
        self.runner.runNext()
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(self.listen(), [("tcp:8081",)])
        self.assertEqual([port for port, *_ in self.reactor.tcpServers], [8080, 8081])

    def test_oneAtATimeInOrder(self) -> None:
        """
        A reload asked for while one runs waits for it: only one load is in
        the runner at a time, and the configs are applied in the order they
        were read, the last one staying.
        """
        self.next.extend([self.listening(8081), self.listening(8082)])
        first = self.service.reload()
        second = self.service.reload()
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.runNext()
        self.assertTrue(self.successResultOf(first))
        self.assertNoResult(second)
        self.assertEqual(self.listen(), [("tcp:8081",)])
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.runNext()
        self.assertTrue(self.successResultOf(second))
        self.assertEqual(self.listen(), [("tcp:8082",)])
        self.assertEqual(self.runner.calls, [])

    def test_waitingReloadsRunOnce(self) -> None:
        """
        Several reloads asked for while one runs are done by one more
        reload, after it; each of their Deferreds fires with its outcome.
        """
        self.next.extend([self.listening(8081), self.listening(8082)])
        first = self.service.reload()
        waiting = [self.service.reload() for _ in range(3)]
        self.runner.runNext()
        self.successResultOf(first)
        self.runner.runNext()
        self.assertEqual([self.successResultOf(d) for d in waiting], [True, True, True])
        self.assertEqual(self.loaded, ["c.toml", "c.toml"])
        self.assertEqual(self.runner.calls, [])

    def test_sessionLogReopenedAtOnce(self) -> None:
        """
        The session log is reopened when a reload is asked for, even while
        another runs (logrotate has just moved the file).
        """
        log = _ReopenCounter()
        self.service.sessionLog = log  # type: ignore[assignment]
        self.next.extend([self.listening(8080), self.listening(8080)])
        self.service.reload()
        self.service.reload()
        self.assertEqual(log.reopened, 2)
        self.assertEqual(len(self.runner.calls), 1)

    def test_notDuringShutdown(self) -> None:
        """
        Once the service is stopping, C{reload()} reads nothing and fires
        with C{False}.
        """
        self.service.stopService()
        with capturedLogs() as events:
            self.assertFalse(self.successResultOf(self.service.reload()))
        self.assertEqual(self.runner.calls, [])
        self.assertIn("reload: shutting down: not reloading",
                      [formatEvent(e) for e in events])

    def test_shutdownDuringLoad(self) -> None:
        """
        A config read while the service started stopping is not applied,
        and a reload that was waiting does not run.
        """
        self.next.append(self.listening(8081))
        running = self.service.reload()
        waiting = self.service.reload()
        self.service.stopService()
        self.runner.runNext()
        self.assertFalse(self.successResultOf(running))
        self.assertFalse(self.successResultOf(waiting))
        self.assertEqual(self.listen(), [("tcp:8080",)])
        self.assertEqual(self.runner.calls, [])

    def test_invalidConfigLogged(self) -> None:
        """
        A config that fails validation in the runner is logged problem by
        problem, as before; the running config stays and the next reload
        runs.
        """
        from txsockproxy.config import ConfigError, Problem

        self.next.append(ConfigError([Problem("c.toml", 3, "debug", "must be 0 to 3, not 9")]))
        self.next.append(self.listening(8081))
        with capturedLogs() as events:
            d = self.service.reload()
            self.runner.runNext()
        self.assertFalse(self.successResultOf(d))
        messages = [formatEvent(e) for e in events]
        self.assertIn("reload: c.toml:3: debug: must be 0 to 3, not 9", messages)
        self.assertIn("reload failed: keeping the running configuration", messages)
        self.assertEqual(self.listen(), [("tcp:8080",)])
        d = self.service.reload()
        self.runner.runNext()
        self.assertTrue(self.successResultOf(d))

    def test_unexpectedErrorLogged(self) -> None:
        """
        An unexpected error of the loader is logged with its traceback, the
        Deferred fires with C{False} (it never fails), and reloads go on.
        """
        self.next.extend([RuntimeError("bug"), self.listening(8081)])
        with capturedLogs() as events:
            d = self.service.reload()
            self.runner.runNext()
        self.assertFalse(self.successResultOf(d))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn("reload failed: keeping the running configuration",
                      [formatEvent(e) for e in events])
        d = self.service.reload()
        self.runner.runNext()
        self.assertTrue(self.successResultOf(d))


class _FakeThreadPool:
    """
    A thread pool that records what it is asked to run.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any, tuple[Any, ...]]] = []

    def callInThreadWithCallback(self, onResult: Any, function: Any, *args: Any) -> None:
        self.calls.append((onResult, function, args))


@implementer(IReactorThreads)
class _ThreadedMemoryReactor(MemoryReactorClock):
    """
    A memory reactor with a thread pool of L{_FakeThreadPool}, whose calls
    from threads are recorded.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pool = _FakeThreadPool()
        self.fromThreads: list[tuple[Any, tuple[Any, ...]]] = []

    def getThreadPool(self) -> _FakeThreadPool:  # type: ignore[override]
        return self.pool

    def callFromThread(self, callable: Any, *args: Any, **kwargs: Any) -> None:
        self.fromThreads.append((callable, args))

    def callInThread(self, callable: Any, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError()

    def suggestThreadPoolSize(self, size: int) -> None:
        raise NotImplementedError()


class ReactorThreadRunnerTests(SynchronousTestCase):
    """
    L{reactorThreadRunner} runs functions in the reactor's thread pool when
    it has one, and at once when it has none.
    """

    def test_reactorThreadPool(self) -> None:
        """
        With a reactor that provides L{IReactorThreads}, a reload's loader is
        given to the reactor's thread pool, and the result comes back through
        C{callFromThread} before it is applied.
        """
        reactor = _ThreadedMemoryReactor()
        self.assertTrue(verifyObject(IReactorThreads, reactor))
        loaded = Config(proxies=(proxyConfig("web", ("tcp:8081",), A),))
        first = Config(proxies=(proxyConfig("web", ("tcp:8080",), A),))
        service = ProxyService(first, reactor, configPath="c.toml", loader=lambda p: loaded)
        service.startService()
        d = service.reload()
        [(onResult, function, args)] = reactor.pool.calls
        self.assertEqual(args, ("c.toml",))
        self.assertNoResult(d)
        onResult(True, function(*args))
        self.assertNoResult(d)
        [(callable, callArgs)] = reactor.fromThreads
        callable(*callArgs)
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(service.config, loaded)

    def test_noThreads(self) -> None:
        """
        With a reactor without threads, the function runs at once and the
        Deferred has its result.
        """
        run = reactorThreadRunner(MemoryReactorClock())
        self.assertEqual(self.successResultOf(run(lambda a, b: a + b, 2, 3)), 5)


class BacklogTests(SynchronousTestCase):
    """
    Listeners get the system's longest listen backlog unless their endpoint
    string gives one.
    """

    def test_systemBacklog(self) -> None:
        """
        L{systemBacklog} reads C{net.core.somaxconn}; a file that is missing
        or holds no positive number gives L{DEFAULT_BACKLOG}, 1024.
        """
        path = self.mktemp()
        for text, expected in [("2048\n", 2048), ("x\n", 1024), ("0\n", 1024), ("-5", 1024)]:
            with open(path, "w") as f:
                f.write(text)
            self.assertEqual(systemBacklog(path), expected, text)
        self.assertEqual(systemBacklog(path + ".missing"), 1024)
        self.assertEqual(DEFAULT_BACKLOG, 1024)

    def test_systemBacklogIsSomaxconn(self) -> None:
        """
        By default L{systemBacklog} is the value in
        C{/proc/sys/net/core/somaxconn}.
        """
        try:
            with open("/proc/sys/net/core/somaxconn") as f:
                expected = int(f.read())
        except OSError:
            raise SkipTest("no /proc/sys/net/core/somaxconn") from None
        self.assertEqual(systemBacklog(), expected)

    def test_withBacklog(self) -> None:
        """
        L{withBacklog} gives C{tcp:}, C{tcp6:}, C{ssl:} and C{unix:} endpoint
        strings (also wrapped in C{haproxy:}) a first C{backlog=} argument;
        others are left as they are.
        """
        cases = {
            "tcp:8080": "tcp:backlog=99:8080",
            "tcp:8080:interface=127.0.0.1:backlog=7": "tcp:backlog=99:8080:interface=127.0.0.1:backlog=7",
            "TCP6:8080:interface=\\:\\:1": "TCP6:backlog=99:8080:interface=\\:\\:1",
            "ssl:443:privateKey=k.pem": "ssl:backlog=99:443:privateKey=k.pem",
            "unix:/run/p.sock": "unix:backlog=99:/run/p.sock",
            "haproxy:tcp:8080": "haproxy:tcp:backlog=99:8080",
            "systemd:domain=INET:index=0": "systemd:domain=INET:index=0",
            "stdio:": "stdio:",
            "8080": "8080",
        }
        for desc, expected in cases.items():
            self.assertEqual(withBacklog(desc, 99), expected, desc)

    def test_backlogGivenToListen(self) -> None:
        """
        The backlog the reactor is asked to listen with is the system's for
        every kind of listener, and the one the endpoint string gives when
        it gives one.
        """
        from tests.fakes import certificate

        self.patch(serviceModule, "systemBacklog", lambda: 3333)
        pem = self.mktemp()
        with open(pem, "wb") as f:
            f.write(certificate())
        unixPath = self.mktemp()
        config = Config(proxies=(
            proxyConfig("p", (
                "tcp:8080", "tcp6:8081:interface=\\:\\:1", "haproxy:tcp:8082",
                "tcp:8083:backlog=7", f"unix:{unixPath}", f"unix:{unixPath}2:backlog=8",
                f"ssl:8443:privateKey={pem}", f"ssl:8444:privateKey={pem}:backlog=9",
            ), A),
        ))
        reactor = MemoryReactorClock()
        ProxyService(config, reactor).startService()
        self.assertEqual(
            [(port, backlog) for port, _, backlog, _ in reactor.tcpServers],
            [(8080, 3333), (8081, 3333), (8082, 3333), (8083, 7)],
        )
        self.assertEqual([backlog for _, _, backlog, _, _ in reactor.unixServers], [3333, 8])
        self.assertEqual(
            [(port, backlog) for port, _, _, backlog, _ in reactor.sslServers],
            [(8443, 3333), (8444, 9)],
        )

    def test_statusBacklog(self) -> None:
        """
        The status endpoint's listener gets the system's backlog too.
        """
        self.patch(serviceModule, "systemBacklog", lambda: 3333)
        config = Config(proxies=(proxyConfig("p", ("tcp:8080",), A),),
                        status=StatusConfig(listen=("tcp:9090",)))
        reactor = MemoryReactorClock()
        ProxyService(config, reactor).startService()
        self.assertEqual([(port, backlog) for port, _, backlog, _ in reactor.tcpServers],
                         [(8080, 3333), (9090, 3333)])


class StatusLimitsTests(SynchronousTestCase):
    """
    The status site gets the limits of C{[status]}, at start and, as it
    lives on across reloads, at each reload.
    """

    def site(self, reactor: MemoryReactorClock) -> Any:
        [site] = [factory for port, factory, _, _ in reactor.tcpServers if port == 9090]
        return site

    def test_limits(self) -> None:
        """
        C{max-connections}, C{request-timeout} and C{max-body-size} reach
        the site, and a reload that changes them changes the running site.
        """
        status = StatusConfig(listen=("tcp:9090",), maxConnections=5, requestTimeout=3.0,
                              maxBodySize=10)
        config = Config(proxies=(proxyConfig("p", ("tcp:8080",), A),), status=status)
        reactor = MemoryReactorClock()
        service = ProxyService(config, reactor)
        service.startService()
        site = self.site(reactor)
        self.assertEqual((site.maxConnections, site.requestTimeout, site.maxBodySize),
                         (5, 3.0, 10))
        changed = replace(config, status=replace(status, maxConnections=7, maxBodySize=0))
        service.apply(changed)
        self.assertIs(self.site(reactor), site)
        self.assertEqual((site.maxConnections, site.requestTimeout, site.maxBodySize),
                         (7, 3.0, 0))


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
        from tests.fakes import HalfCloseTransport

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
    from tests.fakes import lost

    return lost()


@implementer(IListeningPort)
class _RecordingPort:
    """
    A listening port that records whether it was stopped.
    """

    def __init__(self, address: Any) -> None:
        self.address = address
        self.stopped = False

    def startListening(self) -> None:
        pass

    def stopListening(self) -> None:
        self.stopped = True

    def getHost(self) -> Any:
        return self.address


class _RecordingReactor(MemoryReactorClock):
    """
    A memory reactor whose TCP ports record being stopped, and that refuses
    to bind the ports in C{refused}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: dict[int, _RecordingPort] = {}
        self.refused: set[int] = set()

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,  # type: ignore[override]
                  interface: str = "") -> _RecordingPort:
        if port in self.refused:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        self.tcpServers.append((port, factory, backlog, interface))
        recording = _RecordingPort(IPv4Address("TCP", interface or "0.0.0.0", port))
        self.ports[port] = recording
        return recording


@implementer(IStreamServerEndpoint)
class _LaterEndpoint:
    """
    A server endpoint that binds when the test says so: C{listen()} returns
    a Deferred the test fires.
    """

    def __init__(self) -> None:
        self.listening: list[Deferred[Any]] = []
        self.cancelled = 0

    def listen(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred(self.cancel)
        self.listening.append(d)
        return d

    def cancel(self, d: Deferred[Any]) -> None:
        self.cancelled += 1
        d.errback(CancelledError())


class ServiceTreeTests(SynchronousTestCase):
    """
    L{ProxyService}'s listeners and ticker are its child services.
    """

    def test_listenersAreChildren(self) -> None:
        """
        Each listen endpoint is a L{ListenerService} child with its endpoint
        string, the proxies' in config order and then the status endpoint's;
        without debug level 3 there is no other child.
        """
        config = replace(twoProxies(), status=StatusConfig(listen=("tcp:9090",)))
        service = ProxyService(config, MemoryReactorClock())
        children = list(service)
        self.assertEqual([c.description for c in children],  # type: ignore[attr-defined]
                         ["tcp:5432:interface=127.0.0.1", "tcp:5433:interface=127.0.0.1",
                          "tcp:6379:interface=127.0.0.1", "tcp:9090"])
        for child in children:
            self.assertIsInstance(child, ListenerService)
            self.assertIs(child.parent, service)
            self.assertTrue(verifyObject(IService, child))
        self.assertEqual([c.owner for c in children],  # type: ignore[attr-defined]
                         ["proxy db", "proxy db", "proxy cache", "status"])
        self.assertEqual(service.listeners, children)

    def test_childrenStartAndStopWithTheService(self) -> None:
        """
        Starting the service binds and starts every listener; stopping it
        stops them, and they stop listening at once.
        """
        reactor = _RecordingReactor()
        service = ProxyService(twoProxies(), reactor)
        service.privilegedStartService()
        self.assertEqual(sorted(reactor.ports), [5432, 5433, 6379])
        self.assertFalse(any(child.running for child in service))
        service.startService()
        self.assertTrue(all(child.running for child in service))
        self.assertEqual(len(reactor.tcpServers), 3)
        self.successResultOf(service.stopService())
        self.assertFalse(any(child.running for child in service))
        self.assertTrue(all(port.stopped for port in reactor.ports.values()))

    def test_bindFailureLeavesNothingListening(self) -> None:
        """
        When a listener cannot be bound at start-up, those bound before it
        stop listening, and the error reaches C{onStartupError}.
        """
        reactor = _RecordingReactor()
        reactor.refused.add(6379)
        service = ProxyService(twoProxies(), reactor)
        reported: list[StartupError] = []
        service.onStartupError = reported.append
        self.assertRaises(ListenError, service.privilegedStartService)
        self.assertEqual([str(e) for e in reported], [
            "Address already in use: cannot listen on tcp:6379:interface=127.0.0.1 "
            "(proxy cache)"])
        self.assertEqual(sorted(reactor.ports), [5432, 5433])
        self.assertTrue(all(port.stopped for port in reactor.ports.values()))

    def test_tickerIsAChild(self) -> None:
        """
        At debug level 3 the ticker is a L{TimerService} child, logging
        through the service's reactor; a reload to a lower level removes it
        (nothing is scheduled any more), and one back to 3 adds it again.
        """
        reactor = MemoryReactorClock()
        configs = [replace(twoProxies(), debug=debug) for debug in (3, 0, 3)]
        service = ProxyService(configs[0], reactor, configPath="c.toml",
                               loader=lambda path: configs.pop(0))
        [ticker] = [c for c in service if isinstance(c, TimerService)]
        self.assertIs(ticker.clock, reactor)
        service.startService()
        self.assertTrue(ticker.running)
        configs.pop(0)
        self.assertTrue(self.successResultOf(service.reload()))
        self.assertFalse(ticker.running)
        self.assertEqual([c for c in service if isinstance(c, TimerService)], [])
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertTrue(self.successResultOf(service.reload()))
        [again] = [c for c in service if isinstance(c, TimerService)]
        self.assertTrue(again.running)
        with capturedLogs() as events:
            reactor.advance(1)
        self.assertEqual(
            len([e for e in events if "backend {label} {state}" in e.get("log_format", "")]), 2)


class BuildBindCommitTests(SynchronousTestCase):
    """
    A reload builds the new tree beside the running one, binds its new
    listeners, and commits only when all of them are bound: otherwise the
    running tree is untouched and nothing of the new one is left.
    """

    def setUp(self) -> None:
        self.reactor = _RecordingReactor()
        self.first = Config(proxies=(proxyConfig("web", ("tcp:8080",), A, B),
                                     proxyConfig("old", ("tcp:7070",), A)))
        self.next: list[Config] = []
        self.service = ProxyService(self.first, self.reactor, configPath="c.toml",
                                    loader=lambda path: self.next.pop(0))
        self.service.startService()

    def snapshot(self) -> Any:
        """
        What a failed reload must leave as it was: the pools and their
        settings, backends and balancers; each backend's settings; the
        factories and their pools; the child services; the config.
        """
        service = self.service
        return (
            dict(service.pools),
            [(pool.config, list(pool.backends), pool.balancer)
             for pool in service.pools.values()],
            [(b, b.config, b.weight) for pool in service.pools.values() for b in pool.backends],
            [(f, f.pool) for f in service.factories],
            list(service),
            service.config,
            dict(service.statusView.pools),
        )

    def changed(self, *listen: str, sessionLog: str = "-") -> Config:
        """
        A config that changes everything: a backend's weight, a new
        backend, a new balancer, a new proxy, a removed proxy, and the
        listen endpoints C{listen}.
        """
        heavy = BackendConfig(endpoint=A[1], label="a", weight=5)
        return Config(
            proxies=(
                ProxyConfig(name="web", listen=listen, balance="round-robin",
                            backends=(heavy, BackendConfig(endpoint="tcp:host=10.0.0.3:port=1",
                                                           label="c"))),
                proxyConfig("new", ("tcp:6060",), B),
            ),
            sessionLog=sessionLog, debug=3,
        )

    def test_bindFailureLeavesRunningTree(self) -> None:
        """
        When one new listener cannot be bound, the reload fails; the pools,
        backends, factories, children and config are those that ran before
        (not restored copies: never changed), the listeners bound for the
        new tree stop listening, and nothing of it is scheduled.
        """
        before = self.snapshot()
        self.reactor.refused.add(6060)
        self.next.append(self.changed("tcp:8080", "tcp:8081"))
        with capturedLogs() as events:
            self.assertFalse(self.successResultOf(self.service.reload()))
        self.assertEqual(self.snapshot(), before)
        self.assertEqual(self.service.pools["web"].backends[0].weight, 1)
        # tcp:8081 was bound for the new tree, then dropped.
        self.assertEqual({port: p.stopped for port, p in self.reactor.ports.items()},
                         {7070: False, 8080: False, 8081: True})
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertIn(
            "reload failed: Address already in use: cannot listen on tcp:6060 (proxy new); "
            "keeping the running configuration", [formatEvent(e) for e in events])

    def test_sessionLogFailureLeavesRunningTree(self) -> None:
        """
        When the new session log cannot be opened, the listeners bound for
        the new tree stop listening and the running tree is untouched.
        """
        before = self.snapshot()
        self.next.append(self.changed("tcp:8080", "tcp:8081",
                                      sessionLog=self.mktemp() + "/missing/s.log"))
        with capturedLogs():
            self.assertFalse(self.successResultOf(self.service.reload()))
        self.assertEqual(self.snapshot(), before)
        self.assertTrue(self.reactor.ports[8081].stopped)
        self.assertTrue(self.reactor.ports[6060].stopped)

    def test_commit(self) -> None:
        """
        When every new listener is bound, the commit gives the kept pool its
        new settings and backends, keeps its factory and listener, adds the
        new listeners and the ticker as children and removes the old
        proxy's listener, which stops listening.
        """
        pool = self.service.pools["web"]
        a = pool.backends[0]
        [kept, _] = self.service.listeners
        self.next.append(self.changed("tcp:8080", "tcp:8081"))
        self.assertTrue(self.successResultOf(self.service.reload()))
        self.assertIs(self.service.pools["web"], pool)
        self.assertEqual([b.label for b in pool.backends], ["a", "c"])
        self.assertIs(pool.backends[0], a)
        self.assertEqual((a.weight, pool.config.balance), (5, "round-robin"))
        self.assertEqual(list(self.service.pools), ["web", "new"])
        self.assertIs(self.service.statusView.pools, self.service.pools)
        self.assertEqual([getattr(c, "description", None) for c in self.service],
                         ["tcp:8080", "tcp:8081", "tcp:6060", None])
        self.assertIs(self.service.listeners[0], kept)
        self.assertTrue(all(c.running for c in self.service))
        self.assertTrue(self.reactor.ports[7070].stopped)
        self.assertEqual([f.pool for f in self.service.factories],
                         [pool, pool, self.service.pools["new"]])

    def test_ephemeralPortsGivenSeveralTimes(self) -> None:
        """
        C{tcp:0} may be given by several proxies and the status endpoint:
        each is a listener of its own, bound to its own port; a reload that
        keeps them keeps every socket, and a proxy that goes takes only its
        own.
        """
        reactor = _RecordingReactor()
        zero = "tcp:0:interface=127.0.0.1"
        config = Config(proxies=(proxyConfig("a", (zero,), A), proxyConfig("b", (zero,), A)),
                        status=StatusConfig(listen=(zero,)))
        service = ProxyService(config, reactor)
        service.startService()
        self.assertEqual([(c.owner, c.description) for c in service.listeners],
                         [("proxy a", zero), ("proxy b", zero), ("status", zero)])
        self.assertEqual(len(reactor.tcpServers), 3)
        first = service.listeners
        service.apply(config)
        self.assertEqual(service.listeners, first)
        self.assertEqual(len(reactor.tcpServers), 3)
        service.apply(replace(config, proxies=config.proxies[:1]))
        self.assertEqual(service.listeners, [first[0], first[2]])
        self.assertTrue(all(child.running for child in service))
        self.assertFalse(first[1].running)
        self.assertEqual(len(reactor.tcpServers), 3)

    def test_fixedPortCannotMove(self) -> None:
        """
        A fixed listen endpoint cannot move from a proxy to the status
        page by a reload: nothing changes.
        """
        before = self.snapshot()
        moved = replace(self.first, status=StatusConfig(listen=("tcp:7070",)),
                        proxies=self.first.proxies[:1])
        error = self.assertRaises(StartupError, self.service.apply, moved)
        self.assertEqual(str(error),
                         "tcp:7070 moves from proxy old to the status page: that needs a restart")
        self.assertEqual(self.snapshot(), before)

    def test_applyBeforeStartBindsNothing(self) -> None:
        """
        Applied to a service that is not started, a config binds nothing:
        its listeners are bound when the service starts.
        """
        reactor = _RecordingReactor()
        service = ProxyService(self.first, reactor)
        service.apply(self.changed("tcp:8081"))
        self.assertEqual(reactor.ports, {})
        service.startService()
        self.assertEqual(sorted(reactor.ports), [6060, 8081])


class ListenerServiceTests(SynchronousTestCase):
    """
    L{ListenerService} listens through an endpoint's public C{listen()} and
    logs the address it is bound to.
    """

    def test_boundAddress(self) -> None:
        """
        L{boundAddress} shows IPv4 as C{host:port}, IPv6 as C{[host]:port},
        a unix socket as C{unix:path}, anything else as C{str()} shows it.
        """
        class Other:
            def __str__(self) -> str:
                return "systemd fd 3"

        self.assertEqual(boundAddress(IPv4Address("TCP", "127.0.0.1", 41234)),
                         "127.0.0.1:41234")
        self.assertEqual(boundAddress(IPv6Address("TCP", "::1", 41234)), "[::1]:41234")
        self.assertEqual(boundAddress(UNIXAddress("/run/p.sock")), "unix:/run/p.sock")
        self.assertEqual(boundAddress(UNIXAddress(b"/run/p.sock")), "unix:/run/p.sock")
        self.assertEqual(boundAddress(Other()), "systemd fd 3")  # type: ignore[arg-type]

    def test_logsBoundAddress(self) -> None:
        """
        Each listener logs, once bound, C{OWNER: LISTEN is bound to ADDRESS}
        with the endpoint string as configured.
        """
        config = Config(proxies=(proxyConfig("web", ("tcp:8080", "tcp6:8081"), A),),
                        status=StatusConfig(listen=("tcp:9090:interface=127.0.0.1",)))
        with capturedLogs() as events:
            ProxyService(config, MemoryReactorClock()).privilegedStartService()
        self.assertEqual(
            [formatEvent(e) for e in events if "is bound to" in e.get("log_format", "")],
            ["proxy web: tcp:8080 is bound to 0.0.0.0:8080",
             "proxy web: tcp6:8081 is bound to [::]:8081",
             "status: tcp:9090:interface=127.0.0.1 is bound to 0.0.0.0:9090"])

    def test_endpointThatBindsLater(self) -> None:
        """
        With an endpoint whose C{listen()} fires later, starting does not
        wait: the bound line is logged when it fires, and the port kept.
        """
        endpoint = _LaterEndpoint()
        listener = ListenerService("later:1", "p", endpoint, Factory())
        with capturedLogs() as events:
            listener.privilegedStartService()
            listener.startService()
            self.assertEqual(len(endpoint.listening), 1)
            port = _RecordingPort(IPv4Address("TCP", "127.0.0.1", 4000))
            endpoint.listening[0].callback(port)
        self.assertIs(listener.port, port)
        self.assertEqual([formatEvent(e) for e in events],
                         ["proxy p: later:1 is bound to 127.0.0.1:4000"])
        self.successResultOf(listener.stopService())
        self.assertTrue(port.stopped)

    def test_stoppedBeforeBound(self) -> None:
        """
        Stopped before its endpoint has bound, a listener cancels the
        listening; a later failure of it is logged as one critical line.
        """
        endpoint = _LaterEndpoint()
        listener = ListenerService("later:1", None, endpoint, Factory())
        listener.startService()
        with capturedLogs() as events:
            listener.stopService()
        self.assertEqual((endpoint.cancelled, events), (1, []))
        listener.startService()
        with capturedLogs() as events:
            endpoint.listening[1].errback(CannotListenError("", 1, OSError(13, "Permission denied")))
        self.assertEqual([(e["log_level"].name, formatEvent(e)) for e in events],
                         [("critical", "Permission denied: cannot listen on later:1 (status)")])
        self.assertIsNone(listener.port)


class BoundAddressLoopbackIntegrationTests(PrivateReactorTestCase):
    """
    On a real (private, not installed) reactor, the bound line gives the
    port the system chose for port 0, and a unix socket's path: what tests
    and operators read a listener's port from.
    """

    def start(self, config: Config) -> tuple[ProxyService, list[str]]:
        service = ProxyService(config, self.reactor)
        with capturedLogs() as events:
            service.startService()
        self.addCleanup(self.stop, service)
        return service, [formatEvent(e) for e in events
                         if "is bound to" in e.get("log_format", "")]

    def stop(self, service: ProxyService) -> None:
        stopped = service.stopService()
        self.reactor.runUntilCurrent()
        self.successResultOf(stopped)

    def test_tcpPortZero(self) -> None:
        """
        C{tcp:0:interface=127.0.0.1} logs the port it got, and that port
        accepts connections.
        """
        listen = "tcp:0:interface=127.0.0.1"
        _, lines = self.start(Config(proxies=(proxyConfig("web", (listen,), A),)))
        [line] = lines
        prefix = f"proxy web: {listen} is bound to 127.0.0.1:"
        self.assertTrue(line.startswith(prefix), line)
        port = int(line[len(prefix):])
        self.assertNotEqual(port, 0)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass

    def test_unixAndStatus(self) -> None:
        """
        A unix listener logs C{unix:PATH}; the status endpoint's listener
        logs as C{status}.
        """
        path = self.mktemp()
        _, lines = self.start(Config(
            proxies=(proxyConfig("web", (f"unix:{path}",), A),),
            status=StatusConfig(listen=("tcp:0:interface=127.0.0.1",)),
        ))
        self.assertEqual(lines[0], f"proxy web: unix:{path} is bound to unix:{path}")
        self.assertRegex(lines[1],
                         r"^status: tcp:0:interface=127\.0\.0\.1 is bound to 127\.0\.0\.1:[1-9]\d*$")
        self.assertEqual(len(lines), 2)
