"""
The proxy as a Twisted service: one ServerFactory per listen endpoint, the pools
of backends, the status endpoint, the session log; reloading the configuration
without dropping a connection, and shutting down gracefully.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet import defer, threads
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IProtocolFactory, IReactorThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsockproxy import congestion
from txsockproxy.acceptcount import AcceptRecoveryCounter
from txsockproxy.alpn import reactorDecliningALPN
from txsockproxy.backends import Backend, BackendPool
from txsockproxy.balancers import balancerFactory
from txsockproxy.config import Config, ConfigError, loadConfig
from txsockproxy.relay import ProxyFactory, Sessions
from txsockproxy.sessionlog import SessionLog

STATUS = "[status]"

# The listen endpoint types that take a backlog= argument, and a wrapper
# whose wrapped endpoint may be one of them.
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix"})
_WRAPPERS = frozenset({"haproxy"})
SOMAXCONN = "/proc/sys/net/core/somaxconn"
# When the system's maximum cannot be read.
DEFAULT_BACKLOG = 1024


def systemBacklog(path: str = SOMAXCONN) -> int:
    """
    The longest listen backlog the system allows (C{net.core.somaxconn}: the
    kernel silently caps larger ones), or L{DEFAULT_BACKLOG} when it cannot be
    read.
    """
    try:
        with open(path, encoding="ascii") as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return DEFAULT_BACKLOG
    return value if value > 0 else DEFAULT_BACKLOG


def withBacklog(description: str, backlog: int) -> str:
    """
    The server endpoint string C{description} with a default listen backlog
    of C{backlog} for the endpoint types that take one (Twisted's own default
    is 50). The argument goes first: Twisted keeps the last of a repeated
    argument, so a C{backlog=} that C{description} gives wins.
    """
    kind, colon, rest = description.partition(":")
    if not colon:
        return description
    if kind.strip().lower() in _WRAPPERS:
        return f"{kind}:{withBacklog(rest, backlog)}"
    if kind.strip().lower() in _BACKLOG_TYPES:
        return f"{kind}:backlog={backlog}:{rest}"
    return description

# Runs a function away from the reactor thread: (function, *args) -> a
# Deferred of its result, fired on the reactor thread.
ThreadRunner = Callable[..., "defer.Deferred[Any]"]


def reactorThreadRunner(reactor: Any) -> ThreadRunner:
    """
    The L{ThreadRunner} of C{reactor}: its thread pool, when it has one
    (L{IReactorThreads}); else (a memory reactor in tests) the function runs
    at once, on the caller's thread.
    """
    if not IReactorThreads.providedBy(reactor):
        return defer.maybeDeferred

    def runInThread(function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    return runInThread


class StartupError(Exception):
    """
    The service cannot start: start-up stops.
    """


class ListenError(StartupError):
    """
    A listen endpoint could not be bound.
    """


@dataclass
class _Listener:
    """
    One listen endpoint: its service, and the factory of a proxy's listener
    (L{None} for the status endpoint).
    """

    description: str
    owner: str  # the proxy's name, or STATUS
    service: Any
    factory: Optional[ProxyFactory]


class ProxyService(MultiService):
    """
    Every proxy of a configuration, listening; the status endpoint; reload
    (on SIGHUP when run by twistd) and graceful shutdown.

    @ivar pools: the L{BackendPool} of each proxy, by proxy name.
    @ivar sessions: the sessions open now, and what they share.
    @ivar adminToken: the token admin actions need, or C{""}.
    @ivar configPath: the file to read again on reload, if any.
    @ivar runInThread: runs the loader on reload, away from the reactor
        thread (see L{reactorThreadRunner}).
    """

    log = Logger()

    # Called with a L{StartupError} instead of raising it: the twistd plugin
    # reports it as one line and exits.
    onStartupError: Optional[Callable[[StartupError], None]] = None

    def __init__(
        self,
        config: Config,
        reactor: Any,
        configPath: Optional[str] = None,
        loader: Callable[[str], Config] = loadConfig,
        runInThread: Optional[ThreadRunner] = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.configPath = configPath
        self.loader = loader
        self.runInThread = runInThread or reactorThreadRunner(reactor)
        # Reloads run one at a time: the one running (if any), and the
        # Deferreds of those asked for since it started, which the next one
        # answers.
        self._reloading = False
        self._reloadsWaiting: list[defer.Deferred[bool]] = []
        self.pools: dict[str, BackendPool] = {}
        self.sessions = Sessions(config.debug)
        # Clients Twisted's ports close at accept for lack of descriptors.
        self.acceptRecovery = AcceptRecoveryCounter()
        self.sessionLog: Optional[SessionLog] = None
        self.adminToken = ""
        self.handleSignals = False
        self._listeners: dict[str, _Listener] = {}
        self._ticker: Optional[TimerService] = None
        self._bound = False
        self._stopping = False
        self._previousHUP: Any = None
        self.config = config
        self._preparePools(config)
        for listener in self._plannedListeners(config):
            self._listeners[listener.description] = listener
        self._applySettings(config)

    @property
    def factories(self) -> list[ProxyFactory]:
        """
        The factory of each proxy listen endpoint, in config order.
        """
        return [
            listener.factory
            for listener in self._listeners.values()
            if listener.factory is not None
        ]

    # -- building -------------------------------------------------------------

    def _preparePools(self, config: Config) -> None:
        """
        Make C{self.pools} match C{config}: a proxy that stays keeps its pool
        object (and counters); a backend that stays (same label and
        endpoint) keeps its counters and state.
        """
        pools: dict[str, BackendPool] = {}
        for proxy in config.proxies:
            old = self.pools.get(proxy.name)
            backends = [self._backend(old, b) for b in proxy.backends]
            if old is not None and old.config.balance == proxy.balance:
                balancer = old.balancer
            else:
                balancer = balancerFactory(proxy.balance)()
            if old is not None:
                old.reconfigure(proxy, backends, balancer)
                pools[proxy.name] = old
            else:
                pools[proxy.name] = BackendPool(proxy, backends, balancer, self.reactor)
        self.pools = pools

    def _backend(self, old: Optional[BackendPool], config: Any) -> Backend:
        if old is not None:
            for backend in old.backends:
                if backend.label == config.label and backend.key == config.endpoint:
                    backend.reconfigure(config)
                    return backend
        return Backend(config, clientFromString(self.reactor, config.endpoint))

    def _plannedListeners(self, config: Config) -> list[_Listener]:
        """
        The listeners C{config} asks for, reusing those already there.
        """
        planned = []
        for proxy in config.proxies:
            for desc in proxy.listen:
                current = self._listeners.get(desc)
                if current is not None and current.factory is not None:
                    planned.append(_Listener(desc, proxy.name, current.service, current.factory))
                else:
                    factory = ProxyFactory(
                        self.pools[proxy.name], self.reactor, listen=desc, sessions=self.sessions
                    )
                    planned.append(self._newListener(desc, proxy.name, factory, factory))
        if config.status is not None:
            from txsockproxy.status import StatusSite, statusResource

            for desc in config.status.listen:
                current = self._listeners.get(desc)
                if current is not None and current.factory is None:
                    planned.append(current)
                else:
                    status = config.status
                    site = StatusSite(
                        statusResource(self), maxConnections=status.maxConnections,
                        requestTimeout=status.requestTimeout, maxBodySize=status.maxBodySize,
                    )
                    planned.append(self._newListener(desc, STATUS, site, None))
        return planned

    def _newListener(
        self, desc: str, owner: str, factory: IProtocolFactory, proxyFactory: Optional[ProxyFactory]
    ) -> _Listener:
        # Twisted's backlog of 50 drops SYNs when hundreds of clients connect
        # at once: they then wait for a retransmit (1 s or more).
        # Listening through reactorDecliningALPN: Twisted's TLS listeners
        # fail every client that offers ALPN otherwise (see txsockproxy.alpn).
        service = strports.service(withBacklog(desc, systemBacklog()), factory,
                                   reactor=reactorDecliningALPN(self.reactor))
        return _Listener(desc, owner, service, proxyFactory)

    def _applySettings(self, config: Config) -> None:
        self.config = config
        self.sessions.debug = config.debug
        self.adminToken = config.status.adminToken if config.status is not None else ""
        status = config.status
        for listener in self._listeners.values():
            site = listener.service.factory if listener.factory is None else None
            if status is not None and site is not None and hasattr(site, "maxConnections"):
                # The status site lives on across reloads: give it the limits.
                site.maxConnections = status.maxConnections
                site.requestTimeout = status.requestTimeout
                site.maxBodySize = status.maxBodySize
        for listener in self._listeners.values():
            if listener.factory is not None:
                listener.factory.usePool(self.pools[listener.owner])

    # -- starting and stopping ----------------------------------------------

    def _fail(self, error: StartupError) -> None:
        if self.onStartupError is not None:
            self.onStartupError(error)
        raise error

    def _bind(self, listener: _Listener) -> None:
        """
        Bind C{listener} now; strports raises bind errors synchronously.

        @raise ListenError: it cannot be bound.
        """
        try:
            listener.service.privilegedStartService()
        except Exception as e:
            reason = getattr(e, "socketError", None) or e
            detail = getattr(reason, "strerror", None) or str(reason)
            # The reason comes first: a daemonizing twistd passes only the
            # first 100 bytes of the error to the waiting parent.
            owner = "status" if listener.owner == STATUS else f"proxy {listener.owner}"
            named = f" ({owner})" if listener.owner != listener.description else ""
            raise ListenError(
                f"{detail}: cannot listen on {listener.description}{named}"
            ) from None

    def privilegedStartService(self) -> None:
        self._bound = True
        for listener in self._listeners.values():
            try:
                self._bind(listener)
            except ListenError as e:
                self._fail(e)
        super().privilegedStartService()

    def startService(self) -> None:
        # "twist" and embedding programs may start us without the privileged
        # step; binding here keeps bind errors just as clear.
        if not self._bound:
            self.privilegedStartService()
        try:
            self._openSessionLog(self.config)
        except StartupError as e:
            self._fail(e)
        super().startService()
        self.acceptRecovery.start()
        for listener in self._listeners.values():
            listener.service.startService()
        self._updateTicker()
        if self.handleSignals:
            self._previousHUP = signal.signal(signal.SIGHUP, self._onSIGHUP)
        for name, pool in self.pools.items():
            self.log.info(
                "proxy {proxy}: listening on {listen}, {count} backend(s), balance {balance}",
                proxy=name, listen=", ".join(pool.config.listen), count=len(pool.backends),
                balance=pool.config.balance,
            )
        if self.config.status is not None:
            self.log.info("status: listening on {listen}",
                          listen=", ".join(self.config.status.listen))
        automatic = congestion.summary()
        if automatic is not None and self._usesAuto():
            self.log.info("{summary}", summary=automatic)

    def _usesAuto(self) -> bool:
        # Whether a proxy or backend leaves its congestion control on "auto".
        return any(
            proxy.clientCongestion == congestion.AUTO
            or any(b.congestion == congestion.AUTO for b in proxy.backends)
            for proxy in self.config.proxies
        )

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop accepting at once; give the sessions in flight up to
        shutdown-timeout seconds to finish, then close them.
        """
        self._stopping = True
        if self.handleSignals:
            # A second SIGTERM or SIGINT ends the sessions at once.
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._onSecondSignal)
        super().stopService()
        self.acceptRecovery.stop()
        if self._ticker is not None and self._ticker.running:
            self._ticker.stopService()
        stopped = [
            defer.maybeDeferred(listener.service.stopService)
            for listener in self._listeners.values()
        ]
        timeout = self.config.shutdownTimeout
        count = len(self.sessions.open)
        if count:
            self.log.info(
                "shutting down: waiting up to {timeout}s for {count} session(s)",
                timeout=timeout, count=count,
            )
        abort = self.reactor.callLater(timeout, self.sessions.abortAll, "shutdown")

        def finished(result: object) -> None:
            if abort.active():
                abort.cancel()
            if self._previousHUP is not None:
                signal.signal(signal.SIGHUP, self._previousHUP)
                self._previousHUP = None
            if self.sessionLog is not None:
                self.sessionLog.close()

        done = defer.gatherResults([*stopped, self.sessions.whenEmpty()], consumeErrors=True)
        return done.addBoth(finished)

    def _openSessionLog(self, config: Config) -> None:
        current = self.sessionLog
        if (current is not None and current.destination == config.sessionLog
                and current.logFormat == config.logFormat):
            return
        try:
            log = SessionLog(config.sessionLog, config.logFormat)
        except (OSError, ValueError) as e:
            # ValueError: a path the system refuses before trying (a NUL in
            # it; loading refuses those, a Config built in code may not).
            raise StartupError(
                f"cannot open session-log {config.sessionLog!r}: "
                f"{getattr(e, 'strerror', None) or e}"
            ) from None
        if current is not None:
            current.close()
        self.sessionLog = log
        self.sessions.recorder = log

    def _updateTicker(self) -> None:
        want = self.config.debug >= 3
        if want and self._ticker is None:
            self._ticker = TimerService(1.0, self._logBackendStates)
            self._ticker.clock = self.reactor
            self._ticker.startService()
        elif not want and self._ticker is not None:
            self._ticker.stopService()
            self._ticker = None

    def _logBackendStates(self) -> None:
        now = self.reactor.seconds()
        for name, pool in self.pools.items():
            for backend in pool.backends:
                self.log.info(
                    "proxy {proxy}: backend {label} {state}: active {active}, "
                    "connected {connected}, failed {failed}",
                    proxy=name, label=backend.label, state=backend.stateAt(now),
                    active=backend.active, connected=backend.connected,
                    failed=backend.failed,
                )

    # -- reloading --------------------------------------------------------------

    def _onSIGHUP(self, signum: int, frame: Any) -> None:
        if self._stopping:
            # Shutting down: no reload, but logrotate still needs a new file.
            if self.sessionLog is not None:
                self.reactor.callFromThread(self.sessionLog.reopen)
            return
        self.reactor.callFromThread(self.reload)

    def _onSecondSignal(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._abortNow, signum)

    def _abortNow(self, signum: int) -> None:
        self.log.warn("signal {signum} during shutdown: closing {count} session(s) now",
                      signum=signum, count=len(self.sessions.open))
        self.sessions.abortAll("shutdown")

    def reload(self) -> defer.Deferred[bool]:
        """
        Read the configuration file again and apply it: unchanged listeners
        keep their sockets, new ones are bound, removed ones closed; new
        sessions use the new pools; sessions in flight go on undisturbed.
        Also reopens the session log file (for logrotate).

        The file is read and its host names resolved on a thread (an
        C{include_shell} may run for seconds, C{getaddrinfo} blocks), while
        the reactor goes on relaying; the result is applied on the reactor
        thread. One reload runs at a time: those asked for while one runs
        are done once, after it, so the last file read is the one applied.
        During shutdown nothing is reloaded.

        @return: a Deferred that fires with whether the new configuration
            was applied. One that fails validation, or whose new listeners
            cannot be bound, is logged and the running configuration stays.
            It never fails.
        """
        # At once, even when a reload is running: logrotate has just moved
        # the file away.
        if self.sessionLog is not None:
            self.sessionLog.reopen()
        if self._stopping:
            self.log.info("reload: shutting down: not reloading")
            return defer.succeed(False)
        done: defer.Deferred[bool] = defer.Deferred()
        self._reloadsWaiting.append(done)
        self._nextReload()
        return done

    def _nextReload(self) -> None:
        """
        Start a reload for those waiting, unless one is running.
        """
        if self._reloading or not self._reloadsWaiting:
            return
        waiting, self._reloadsWaiting = self._reloadsWaiting, []
        if self._stopping:
            self.log.info("reload: shutting down: not reloading")
            for done in waiting:
                done.callback(False)
            return
        self._reloading = True
        self._reloadOnce().addBoth(self._reloaded, waiting)

    def _reloaded(self, applied: object, waiting: list[defer.Deferred[bool]]) -> None:
        self._reloading = False
        result = applied is True
        if isinstance(applied, Failure):
            self.log.failure("reload failed: keeping the running configuration", applied)
        for done in waiting:
            done.callback(result)
        self._nextReload()

    def _reloadOnce(self) -> defer.Deferred[bool]:
        if self.configPath is None:
            self.log.info("reload: no configuration file (command-line proxy): nothing to do")
            return defer.succeed(False)
        try:
            loading = self.runInThread(self.loader, self.configPath)
        except Exception:
            return defer.fail()
        return loading.addCallbacks(self._applyLoaded, self._loadFailed)

    def _loadFailed(self, failure: Failure) -> bool:
        failure.trap(ConfigError)
        assert isinstance(failure.value, ConfigError)
        for problem in failure.value.problems:
            self.log.error("reload: {problem}", problem=str(problem))
        self.log.error("reload failed: keeping the running configuration")
        return False

    def _applyLoaded(self, config: Config) -> bool:
        if self._stopping:
            self.log.info("reload: shutting down: {source} read, not applied",
                          source=config.source)
            return False
        try:
            self.apply(config)
        except StartupError as e:
            self.log.error("reload failed: {error}; keeping the running configuration",
                           error=str(e))
            return False
        for notice in config.notices:
            self.log.warn("config notice: {notice}", notice=notice)
        self.log.info("reload: applied {source}", source=config.source)
        return True

    def apply(self, config: Config) -> None:
        """
        Switch a running service to C{config}.

        @raise StartupError: a new listener cannot be bound, or the session
            log cannot be opened; nothing was changed.
        """
        oldListeners = self._listeners
        for desc in config.status.listen if config.status is not None else ():
            current = oldListeners.get(desc)
            if current is not None and current.factory is not None:
                raise StartupError(f"{desc} moves from proxy {current.owner} to the status "
                                   "page: that needs a restart")
        for proxy in config.proxies:
            for desc in proxy.listen:
                current = oldListeners.get(desc)
                if current is not None and current.factory is None:
                    raise StartupError(f"{desc} moves from the status page to proxy "
                                       f"{proxy.name}: that needs a restart")
        # What to put back if a new listener cannot be bound.
        oldPools = dict(self.pools)
        savedPools = {
            name: (pool.config, list(pool.backends), pool.balancer)
            for name, pool in oldPools.items()
        }
        savedBackends = [
            (backend, backend.config) for pool in oldPools.values() for backend in pool.backends
        ]
        self._preparePools(config)
        planned = self._plannedListeners(config)
        added = [
            listener for listener in planned
            if listener.description not in oldListeners
            or oldListeners[listener.description].service is not listener.service
        ]
        wanted = {listener.description for listener in planned}
        bound: list[_Listener] = []
        try:
            for listener in added:
                self._bind(listener)
                bound.append(listener)
            self._openSessionLog(config)
        except StartupError:
            for listener in bound:
                listener.service.stopService()
            self.pools = oldPools
            for name, (poolConfig, backends, balancer) in savedPools.items():
                oldPools[name].reconfigure(poolConfig, backends, balancer)
            for backend, backendConfig in savedBackends:
                backend.reconfigure(backendConfig)
            raise
        for desc, listener in oldListeners.items():
            if desc not in wanted:
                listener.service.stopService()
                self.log.info("reload: closed listener {listen}", listen=desc)
        for listener in added:
            listener.service.startService()
            self.log.info("reload: listening on {listen}", listen=listener.description)
        self._listeners = {listener.description: listener for listener in planned}
        self._applySettings(config)
        self._updateTicker()


def makeProxyService(
    config: Config, reactor: Any = None, configPath: Optional[str] = None
) -> ProxyService:
    """
    Build the service for C{config}; C{reactor} defaults to the global one.

    @param configPath: the file C{config} came from, read again on reload.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    return ProxyService(config, reactor, configPath=configPath)
