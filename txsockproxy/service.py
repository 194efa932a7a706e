"""
The proxy as a Twisted service: a L{MultiService} whose children are its
listeners (one per listen endpoint, each with its factory: a proxy's
ServerFactory or the status site) and the ticker of debug level 3; the pools
of backends and the session log beside them. Reloading the configuration
builds the new tree beside the running one, binds its new listeners, and only
then commits, without dropping a connection; shutting down is graceful.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, cast

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import defer, threads
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IReactorThreads,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsockproxy import congestion
from txsockproxy.accelerator import relayPathFor, setting, tlsFactoryFor
from txsockproxy.acceptcount import AcceptRecoveryCounter
from txsockproxy.acceptgate import AcceptGate
from txsockproxy.adopting import AdoptingReactor, InheritedSocket
from txsockproxy.alpn import reactorDecliningALPN
from txsockproxy.backends import (
    Backend,
    BackendGroup,
    BackendPool,
    DiscoveredBackends,
    Member,
    resolverCache,
)
from txsockproxy.balancers import balancerFactory
from txsockproxy.config import (
    BackendConfig,
    Config,
    ConfigError,
    ListenTLSConfig,
    ProxyConfig,
)
from txsockproxy.endpoints import listenKey
from txsockproxy.headerfirst import HeaderFirstEndpoint
from txsockproxy.interfaces import IBalancer
from txsockproxy.listening import LISTENING
from txsockproxy.loading import loadConfig
from txsockproxy.relay import ProxyFactory, Sessions
from txsockproxy.sessionlog import SessionLog
from txsockproxy.socketactivation import serverEndpoint
from txsockproxy.status import StatusSite, StatusView, statusResource
from txsockproxy.tlsclient import backendEndpoint
from txsockproxy.tlslisten import ServerTLS, TLSListenEndpoint

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


def boundAddress(address: IAddress) -> str:
    """
    How the log shows the address a listener is bound to: C{127.0.0.1:8080},
    C{[::1]:8080}, C{unix:/run/sockproxy.sock}; any other kind of address
    (systemd, plugins' endpoints) as C{str()} makes it.
    """
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, UNIXAddress):
        name = address.name
        return f"unix:{os.fsdecode(name) if name is not None else ''}"
    return str(address)


class ListenerService(Service):
    """
    One listen endpoint, as a child service of L{ProxyService}: it binds in
    C{privilegedStartService} (or in L{bind}, when a reload asks for it
    before committing), logs the address it is bound to, and stops listening
    when it is stopped.

    It listens through the endpoint's public C{listen()}, as Twisted's
    C{StreamServerEndpointService} does, but raises a bind error at once
    rather than logging it (that service swallows them), and keeps the
    L{IListeningPort} it gets.

    @ivar description: the endpoint string, as configured.
    @ivar proxy: the name of the proxy it serves, or L{None} for the status
        endpoint.
    @ivar factory: what its connections are built by.
    @ivar proxyFactory: C{factory} when it serves a proxy, else L{None}.
    @ivar port: the listening port, once bound.
    @ivar tls: what terminates TLS on it, when its proxy has C{tls-*} keys.
    """

    log = Logger()
    tls: Optional[ServerTLS] = None

    def __init__(
        self,
        description: str,
        proxy: Optional[str],
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
    ) -> None:
        self.description = description
        self.proxy = proxy
        self.endpoint = endpoint
        self.factory = factory
        self.proxyFactory = factory if isinstance(factory, ProxyFactory) else None
        self.port: Optional[IListeningPort] = None
        self._listening: Optional[defer.Deferred[IListeningPort]] = None
        # A failure of a listen() that failed while bind() was calling it.
        self._bindFailure: Optional[Failure] = None
        self._inBind = False

    @property
    def owner(self) -> str:
        """
        Who it listens for, as logs and errors say it: C{proxy NAME} or
        C{status}.
        """
        return "status" if self.proxy is None else f"proxy {self.proxy}"

    def bind(self) -> None:
        """
        Listen, unless listening (or waiting for an endpoint that binds
        later) already.

        @raise ListenError: the endpoint failed to listen at once.
        """
        if self.port is not None or self._listening is not None:
            return
        self._inBind = True
        try:
            listening = defer.maybeDeferred(self.endpoint.listen, self.factory)
            self._listening = listening
            listening.addCallbacks(self._bound, self._notBound)
        finally:
            self._inBind = False
        failure, self._bindFailure = self._bindFailure, None
        if failure is not None:
            raise self._listenError(failure) from None

    def _listenError(self, failure: Failure) -> ListenError:
        reason = getattr(failure.value, "socketError", None) or failure.value
        detail = getattr(reason, "strerror", None) or str(reason)
        # The reason comes first: a daemonizing twistd passes only the first
        # 100 bytes of the error to the waiting parent. A command-line
        # proxy's name is its listen string: not said twice.
        named = f" ({self.owner})" if self.proxy != self.description else ""
        return ListenError(f"{detail}: cannot listen on {self.description}{named}")

    def _bound(self, port: IListeningPort) -> None:
        self._listening = None
        self.port = port
        LISTENING.add(port.getHost())
        self.log.info("{owner}: {listen} is bound to {address}", owner=self.owner,
                      listen=self.description, address=boundAddress(port.getHost()))

    def _notBound(self, failure: Failure) -> None:
        self._listening = None
        if failure.check(defer.CancelledError):
            return
        if self._inBind:
            self._bindFailure = failure
            return
        # An endpoint that binds later (e.g. a plugin's) and then failed.
        self.log.critical("{error}", error=str(self._listenError(failure)))

    def unbind(self) -> defer.Deferred[None]:
        """
        Stop listening (or waiting to), at once.

        @return: a Deferred that fires when the port is closed.
        """
        if self._listening is not None:
            self._listening.cancel()
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        LISTENING.remove(port.getHost())
        stopping: defer.Deferred[Any] = defer.maybeDeferred(cast(Callable[[], Any],
                                                                port.stopListening))
        return stopping.addCallback(lambda _: None)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.bind()

    def startService(self) -> None:
        super().startService()
        self.bind()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self.unbind()


@dataclass
class _PoolPlan:
    """
    A proxy's pool as a new configuration has it: the running pool (kept
    with its counters) or a new one, and what it is to be given on commit.

    @ivar kept: the backends (and backends from DNS) that stay, with their
        new settings.
    """

    pool: BackendPool
    config: ProxyConfig
    backends: list[Member]
    balancer: IBalancer
    kept: list[tuple[Member, BackendConfig]]
    routes: list[BackendGroup]

    def commit(self) -> None:
        for backend, backendConfig in self.kept:
            backend.reconfigure(backendConfig)
        self.pool.reconfigure(self.config, self.backends, self.balancer, self.routes)


@dataclass
class _Tree:
    """
    The service tree of a configuration, built beside the running one:
    nothing running refers to it until it is committed.

    @ivar pools: the plan of each proxy's pool, in config order.
    @ivar listeners: every listener, by L{ListenKey}, in config order:
        running ones that stay, and new ones.
    @ivar added: the new listeners (not yet bound).
    @ivar owners: the proxy (or L{None}: status) each listener serves.
    """

    config: Config
    pools: list[_PoolPlan]
    listeners: dict[ListenKey, ListenerService]
    added: list[ListenerService]
    owners: dict[ListenKey, Optional[str]]
    # Switch kept listeners to their proxy's new certificates (tls-*).
    tlsSwitches: list[Callable[[], None]] = field(default_factory=list)


# What identifies a listener across reloads: whether it is the status
# endpoint's, its endpoint string, and which occurrence of that string it is
# (an ephemeral port, tcp:0, may be given several times).
ListenKey = tuple[bool, str, int]


def listenKeys(config: Config) -> list[ListenKey]:
    """
    The key of each listener of C{config}: the proxies' in config order,
    then the status endpoint's.
    """
    keys: list[ListenKey] = []
    seen: dict[tuple[bool, str], int] = {}
    status = config.status.listen if config.status is not None else ()
    listens = [(False, d) for proxy in config.proxies for d in proxy.listen]
    for kind, desc in listens + [(True, d) for d in status]:
        n = seen.get((kind, desc), 0)
        seen[(kind, desc)] = n + 1
        keys.append((kind, desc, n))
    return keys


def _ownerOf(config: Config, desc: str) -> str:
    return next(proxy.name for proxy in config.proxies if desc in proxy.listen)


def reloadRefused(log: Logger, failure: Failure) -> bool:
    """
    A reload whose file did not load (a L{ConfigError}; anything else is
    passed on): log each problem and that the running configuration stays.

    @return: L{False}, the reload's result.
    """
    failure.trap(ConfigError)
    assert isinstance(failure.value, ConfigError)
    for problem in failure.value.problems:
        log.error("reload: {problem}", problem=str(problem))
    log.error("reload failed: keeping the running configuration")
    return False


class ProxyService(MultiService):
    """
    Every proxy of a configuration, listening; the status endpoint; reload
    (on SIGHUP when run by twistd) and graceful shutdown.

    Its child services are its listeners (a L{ListenerService} per listen
    endpoint) and, at debug level 3, the
    ticker logging the backends' states every second (a L{TimerService}).

    @ivar pools: the L{BackendPool} of each proxy, by proxy name.
    @ivar sessions: the sessions open now, and what they share.
    @ivar statusView: what the status site reads.
    @ivar configPath: the file to read again on reload, if any.
    @ivar runInThread: runs the loader on reload, away from the reactor
        thread (see L{reactorThreadRunner}).
    """

    log = Logger()

    # Called with a L{StartupError} instead of raising it: the twistd plugin
    # reports it as one line and exits.
    onStartupError: Optional[Callable[[StartupError], None]] = None
    # Whether a listener that no socket was handed over for binds its own
    # (a process that took over another's sockets: txsockproxy.takeover)
    # rather than failing to start (a worker: its parent binds).
    bindUnhanded = False

    def __init__(
        self,
        config: Config,
        reactor: Any,
        configPath: Optional[str] = None,
        loader: Callable[[str], Config] = loadConfig,
        runInThread: Optional[ThreadRunner] = None,
        inherited: Optional[Mapping[ListenKey, InheritedSocket]] = None,
        resolverFor: Optional[Callable[[str], Any]] = None,
    ) -> None:
        """
        @param resolverFor: gives the DNS resolver (an
            L{twisted.internet.interfaces.IResolver}) of a C{resolver}
            setting, for backends from DNS; by default one made by
            L{txsockproxy.discovery.makeResolver} per setting.
        """
        super().__init__()
        self.reactor = reactor
        self.resolverFor = resolverFor or resolverCache(reactor)
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
        # How sessions relay, chosen once for the process (a reload that
        # changes the accelerator setting takes effect at the next start).
        self.relayPath, self.relayPathChoice = relayPathFor(
            reactor, setting(config.accelerator)
        )
        # Why this reactor runs, as makeService found (for the start-up log).
        self.reactorChoice = "given by the program that embeds the proxy"
        # Clients Twisted's ports close at accept for lack of descriptors.
        self.acceptRecovery = AcceptRecoveryCounter()
        # Pauses the proxies' listeners at the global max-connections and
        # when accepting runs out of descriptors.
        self.acceptGate = AcceptGate(reactor, self._proxyPorts)
        self.sessions.onCount = self.acceptGate.sessionsChanged
        self.statusView = StatusView(
            clock=reactor, closedAtAccept=lambda: self.acceptRecovery.closed
        )
        self.sessionLog: Optional[SessionLog] = None
        self.handleSignals = False
        self._listeners: dict[ListenKey, ListenerService] = {}
        self._ticker: Optional[TimerService] = None
        self._bound = False
        self._stopping = False
        self._previousHUP: Any = None
        # The listening sockets this process was handed (a worker's, see
        # txsockproxy.worker), by listener key: the proxies' listeners adopt
        # them instead of binding. None: every listener binds its own.
        self.inherited: Optional[Mapping[ListenKey, InheritedSocket]] = inherited
        self.config = config
        self._commit(self._build(config))

    @property
    def adminToken(self) -> str:
        """
        The token admin actions need, or C{""}.
        """
        return self.statusView.adminToken

    @property
    def factories(self) -> list[ProxyFactory]:
        """
        The factory of each proxy listen endpoint, in config order.
        """
        return [
            listener.proxyFactory
            for listener in self._listeners.values()
            if listener.proxyFactory is not None
        ]

    @property
    def listeners(self) -> list[ListenerService]:
        """
        The listeners, in config order: the proxies', then the status
        endpoint's.
        """
        return list(self._listeners.values())

    # -- building -------------------------------------------------------------

    def _build(self, config: Config) -> _Tree:
        """
        The service tree of C{config}, built without changing what runs: a
        proxy that stays keeps its pool object (and counters), a backend
        that stays (same label and endpoint) its counters and state, a
        listen endpoint that stays its listener (and socket).

        @raise StartupError: C{config} moves a listen endpoint between a
            proxy and the status page.
        """
        held = {(key[0], key[1]): listener for key, listener in self._listeners.items()}
        for isStatus, desc, _ in listenKeys(config):
            # An ephemeral port (tcp:0) may be given to both.
            current = held.get((not isStatus, desc))
            if current is None or listenKey(desc) is None:
                continue
            if isStatus:
                raise StartupError(f"{desc} moves from proxy {current.proxy} to the status "
                                   "page: that needs a restart")
            raise StartupError(f"{desc} moves from the status page to proxy "
                               f"{_ownerOf(config, desc)}: that needs a restart")
        plans = [self._planPool(proxy) for proxy in config.proxies]
        pools = {plan.pool.name: plan.pool for plan in plans}
        tree = _Tree(config, plans, {}, [], {})
        keys = iter(listenKeys(config))
        for proxy in config.proxies:
            for desc in proxy.listen:
                key = next(keys)
                listener = self._listeners.get(key)
                tls = _terminatesTLS(proxy, desc)
                if listener is None:
                    factory = ProxyFactory(
                        pools[proxy.name], self.reactor, listen=desc, sessions=self.sessions,
                        relayPath=self.relayPath,
                    )
                    listener = self._newListener(desc, proxy.name, factory, tls, key)
                    tree.added.append(listener)
                else:
                    tree.tlsSwitches.append(_keptTLS(listener, tls))
                tree.listeners[key] = listener
                tree.owners[key] = proxy.name
        status = config.status
        for desc in status.listen if status is not None else ():
            key = next(keys)
            listener = self._listeners.get(key)
            if listener is None:
                assert status is not None
                site = StatusSite(
                    statusResource(self.statusView), maxConnections=status.maxConnections,
                    requestTimeout=status.requestTimeout, maxBodySize=status.maxBodySize,
                )
                listener = self._newListener(desc, None, site, key=key)
                tree.added.append(listener)
            tree.listeners[key] = listener
            tree.owners[key] = None
        return tree

    def _planPool(self, proxy: ProxyConfig) -> _PoolPlan:
        old = self.pools.get(proxy.name)
        kept: list[tuple[Member, BackendConfig]] = []

        def backendsOf(configs: tuple[BackendConfig, ...]) -> list[Member]:
            backends: list[Member] = []
            for backendConfig in configs:
                member: Optional[Member]
                if backendConfig.discovery is not None:
                    member = self._keptDiscovered(old, backendConfig)
                    if member is None:
                        member = DiscoveredBackends(
                            backendConfig, self.resolverFor(backendConfig.discovery.resolver),
                            self.reactor, self._makeBackend, proxy.name,
                        )
                    else:
                        kept.append((member, backendConfig))
                else:
                    member = self._keptBackend(old, backendConfig)
                    if member is None:
                        member = self._makeBackend(backendConfig)
                    else:
                        kept.append((member, backendConfig))
                backends.append(member)
            return backends

        backends = backendsOf(proxy.backends)
        if old is not None and old.config.balance == proxy.balance:
            balancer = old.balancer
        else:
            balancer = balancerFactory(proxy.balance)()
        routes = []
        for route in proxy.routes:
            # A route that stays (same name) keeps its counter, and its
            # balancer's state when the balance is the same.
            oldGroup, sameBalance = None, False
            if old is not None:
                oldGroup = old.route(route.name)
                sameBalance = any(r.name == route.name and r.balance == route.balance
                                  for r in old.config.routes)
            group = BackendGroup(
                route.name, backendsOf(route.backends),
                oldGroup.balancer if oldGroup is not None and sameBalance
                else balancerFactory(route.balance)(),
                route.names,
            )
            if oldGroup is not None:
                group.routed = oldGroup.routed
            routes.append(group)
        pool = (old if old is not None
                else BackendPool(proxy, backends, balancer, self.reactor, routes))
        return _PoolPlan(pool, proxy, backends, balancer, kept, routes)

    def _makeBackend(self, config: BackendConfig) -> Backend:
        return Backend(config, backendEndpoint(self.reactor, config))

    @staticmethod
    def _keptBackend(old: Optional[BackendPool], config: BackendConfig) -> Optional[Backend]:
        if old is not None:
            for backend in old.backends:
                if (
                    backend.source is None
                    and backend.label == config.label and backend.key == config.endpoint
                    # Its endpoint is built with its TLS settings.
                    and backend.config.tls == config.tls
                ):
                    return backend
        return None

    @staticmethod
    def _keptDiscovered(
        old: Optional[BackendPool], config: BackendConfig
    ) -> Optional[DiscoveredBackends]:
        """
        The backends from DNS of the running C{old} pool that C{config}
        keeps, with their addresses, counters and lookups: same label,
        name, resolver and TLS settings (its other settings may change).
        """
        if old is None or config.discovery is None:
            return None
        for member in old.discovered:
            was = member.config
            assert was.discovery is not None
            if (
                was.label == config.label and was.endpoint == config.endpoint
                and was.discovery.resolver == config.discovery.resolver
                and was.tls == config.tls
            ):
                return member
        return None

    def _proxyPorts(self) -> list[IListeningPort]:
        """
        The listening ports of the proxies (not the status site's).
        """
        return [
            listener.port for listener in self._listeners.values()
            if listener.proxyFactory is not None and listener.port is not None
        ]

    def _listenReactor(self, desc: str, key: Optional[ListenKey]) -> Any:
        """
        The reactor a listener's endpoint listens with: this service's, or,
        in a worker, one that adopts the socket handed for C{key}.

        @raise StartupError: this process was handed sockets, but none for
            C{key}.
        """
        if self.inherited is None or key is None:
            return self.reactor
        handed = self.inherited.get(key)
        if handed is None or handed.fileno < 0:
            # A take-over's new (or re-added) listeners bind their own.
            if self.bindUnhanded:
                return self.reactor
            if handed is None:
                raise StartupError(f"no listening socket was handed over for {desc}")
        return AdoptingReactor(self.reactor, handed)

    def _newListener(
        self, desc: str, proxy: Optional[str], factory: IProtocolFactory,
        tls: Optional[ListenTLSConfig] = None, key: Optional[ListenKey] = None,
    ) -> ListenerService:
        # Twisted's backlog of 50 drops SYNs when hundreds of clients connect
        # at once: they then wait for a retransmit (1 s or more).
        # Listening through reactorDecliningALPN: Twisted's TLS listeners
        # fail every client that offers ALPN otherwise (see txsockproxy.alpn).
        listen = desc
        headerFirst = False
        if isinstance(factory, ProxyFactory) and factory.proxyHeader:
            # The proxy reads the PROXY protocol header itself (Twisted's
            # wrapper connects before checking it, and is not half-closeable):
            # in the session's protocol, or, under TLS, before TLS (the
            # header comes in clear, then the ClientHello).
            listen = desc.split(":", 1)[1]
            if tls is not None:
                factory.proxyHeader = False
                headerFirst = True
        reactor = self._listenReactor(desc, key)
        endpoint = serverEndpoint(reactorDecliningALPN(reactor),
                                  withBacklog(listen, systemBacklog()),
                                  handed=isinstance(reactor, AdoptingReactor))
        if tls is None:
            return ListenerService(desc, proxy, endpoint, factory)
        if headerFirst:
            endpoint = HeaderFirstEndpoint(endpoint, factory)
        try:
            serverTLS = ServerTLS(tls)
        except Exception as e:
            # The reader checked the files: OpenSSL refusing them is rare.
            raise StartupError(f"{desc}: cannot use the certificates: {e}") from None
        listener = ListenerService(
            desc, proxy, TLSListenEndpoint(endpoint, serverTLS, tlsFactoryFor(self.reactor)),
            factory,
        )
        listener.tls = serverTLS
        return listener

    def _commit(self, tree: _Tree) -> None:
        """
        Make C{tree} the running tree: the pools get their new settings and
        backends, the factories their pools; listeners that go are removed
        (and stop listening), new ones (bound already, when the service is)
        are added; the ticker follows the debug level.
        """
        config = tree.config
        for plan in tree.pools:
            plan.commit()
        for switch in tree.tlsSwitches:
            switch()
        # Health checks: those of a proxy that goes stop; a serving
        # proxy's new backends (and a new proxy's) start checking.
        for pool in self.pools.values():
            if all(plan.pool is not pool for plan in tree.pools):
                pool.stopChecks()
        self.pools = {plan.pool.name: plan.pool for plan in tree.pools}
        # Resolvers no backend uses any more close their connections.
        keepOnly = getattr(self.resolverFor, "keepOnly", None)
        if keepOnly is not None:
            keepOnly({m.config.discovery.resolver for pool in self.pools.values()
                      for m in pool.discovered if m.config.discovery is not None})
        if self.running and not self._stopping:
            for pool in self.pools.values():
                pool.startChecks()
        for key, listener in self._listeners.items():
            if tree.listeners.get(key) is not listener:
                stopped = listener.disownServiceParent()
                if stopped is not None:
                    stopped.addErrback(
                        lambda f, desc=listener.description: self.log.failure(
                            "closing listener {listen}", f, listen=desc))
        for listener in tree.added:
            listener.setServiceParent(self)
        for key, proxy in tree.owners.items():
            tree.listeners[key].proxy = proxy
        self._listeners = tree.listeners
        self.config = config
        self.sessions.debug = config.debug
        self.acceptGate.limit = config.maxConnections
        self.acceptGate.sessionsChanged(len(self.sessions.open))
        status = config.status
        self.statusView.pools = self.pools
        self.statusView.adminToken = status.adminToken if status is not None else ""
        for listener in self._listeners.values():
            if listener.proxyFactory is not None:
                assert listener.proxy is not None
                listener.proxyFactory.usePool(self.pools[listener.proxy])
            elif status is not None and isinstance(listener.factory, StatusSite):
                # The status site lives on across reloads: give it the limits.
                site = listener.factory
                site.maxConnections = status.maxConnections
                site.requestTimeout = status.requestTimeout
                site.maxBodySize = status.maxBodySize
        self._updateTicker()

    def _updateTicker(self) -> None:
        want = self.config.debug >= 3
        if want and self._ticker is None:
            ticker = TimerService(1.0, self._logBackendStates)
            ticker.clock = self.reactor
            ticker.setServiceParent(self)
            self._ticker = ticker
        elif not want and self._ticker is not None:
            self._ticker.disownServiceParent()
            self._ticker = None

    # -- starting and stopping ----------------------------------------------

    def _fail(self, error: StartupError) -> None:
        if self.onStartupError is not None:
            self.onStartupError(error)
        raise error

    def privilegedStartService(self) -> None:
        self._bound = True
        try:
            # Binds every listener, in config order.
            super().privilegedStartService()
        except ListenError as e:
            for listener in self._listeners.values():
                listener.unbind()
            self._fail(e)

    def startService(self) -> None:
        # "twist" and embedding programs may start us without the privileged
        # step; binding here keeps bind errors just as clear.
        if not self._bound:
            self.privilegedStartService()
        try:
            self._openSessionLog(self.config)
        except StartupError as e:
            self._fail(e)
        self.acceptRecovery.start()
        self.acceptGate.start()
        super().startService()
        # Bound and serving: the backends' health checks start.
        for pool in self.pools.values():
            pool.startChecks()
        if self.handleSignals:
            self._previousHUP = signal.signal(signal.SIGHUP, self._onSIGHUP)
        kind = type(self.reactor)
        self.log.info(
            "reactor: {module}.{name} ({why}); {relayPath}",
            module=kind.__module__, name=kind.__name__, why=self.reactorChoice,
            relayPath=self.relayPathChoice,
        )
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
        # Stops the listeners (they stop listening at once) and the ticker.
        stopped = super().stopService()
        for pool in self.pools.values():
            pool.stopChecks()
        self.acceptRecovery.stop()
        self.acceptGate.stop()
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

        done = defer.gatherResults([stopped, self.sessions.whenEmpty()], consumeErrors=True)
        return done.addBoth(finished)

    def _newSessionLog(self, config: Config) -> Optional[SessionLog]:
        """
        The session log C{config} asks for, opened, or L{None} when the
        running one is it already.

        @raise StartupError: it cannot be opened.
        """
        current = self.sessionLog
        if (current is not None and current.destination == config.sessionLog
                and current.logFormat == config.logFormat):
            return None
        try:
            return SessionLog(config.sessionLog, config.logFormat)
        except (OSError, ValueError) as e:
            # ValueError: a path the system refuses before trying (a NUL in
            # it; loading refuses those, a Config built in code may not).
            raise StartupError(
                f"cannot open session-log {config.sessionLog!r}: "
                f"{getattr(e, 'strerror', None) or e}"
            ) from None

    def _useSessionLog(self, log: Optional[SessionLog]) -> None:
        if log is None:
            return
        if self.sessionLog is not None:
            self.sessionLog.close()
        self.sessionLog = log
        # Not called at all when off (a call less per session).
        self.sessions.recorder = None if log.destination == "off" else log

    def _openSessionLog(self, config: Config) -> None:
        self._useSessionLog(self._newSessionLog(config))

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
        return reloadRefused(self.log, failure)

    def _applyLoaded(self, config: Config) -> bool:
        if self._stopping:
            self.log.info("reload: shutting down: {source} read, not applied",
                          source=config.source)
            return False
        workers = config.workers != self.config.workers
        try:
            self.apply(config)
        except StartupError as e:
            self.log.error("reload failed: {error}; keeping the running configuration",
                           error=str(e))
            return False
        if workers:
            self.log.warn("reload: workers = {workers} takes effect at the next start",
                          workers=config.workers)
        for notice in config.notices:
            self.log.warn("config notice: {notice}", notice=notice)
        self.log.info("reload: applied {source}", source=config.source)
        return True

    def apply(self, config: Config) -> None:
        """
        Switch the service to C{config}: build its tree beside the running
        one, bind the new listeners (when the service is bound already) and
        open the session log; only when all of that worked, commit.

        @raise StartupError: a new listener cannot be bound, or the session
            log cannot be opened; nothing running was changed, and nothing
            of the new tree is left.
        """
        tree = self._build(config)
        bound: list[ListenerService] = []
        try:
            if self._bound:
                for listener in tree.added:
                    bound.append(listener)
                    listener.bind()
            sessionLog = self._newSessionLog(config)
        except StartupError:
            for listener in bound:
                listener.unbind()
            raise
        removed = [listener.description for key, listener in self._listeners.items()
                   if tree.listeners.get(key) is not listener]
        self._commit(tree)
        self._useSessionLog(sessionLog)
        for desc in removed:
            self.log.info("reload: closed listener {listen}", listen=desc)
        for listener in tree.added:
            self.log.info("reload: listening on {listen}", listen=listener.description)


def _terminatesTLS(proxy: ProxyConfig, desc: str) -> Optional[ListenTLSConfig]:
    """
    The TLS settings the listener C{desc} of C{proxy} terminates TLS with
    (its C{tls-*} keys), or L{None}: none, or an C{ssl:} listener.
    """
    if proxy.tls is None or desc.split(":", 1)[0].strip().lower() == "ssl":
        return None
    return proxy.tls


def _keptTLS(listener: ListenerService, tls: Optional[ListenTLSConfig]) -> Callable[[], None]:
    """
    What switches a listener that a reload keeps to its new certificates,
    made now (reading nothing: the loader read the files).

    @raise StartupError: TLS would be added to or removed from it, which
        takes a new socket; or OpenSSL refuses the new certificates.
    """
    if (listener.tls is None) != (tls is None):
        change = "adding" if tls is not None else "removing"
        raise StartupError(f"{change} tls-certificates on {listener.description} "
                           "needs a restart")
    if listener.tls is None or tls is None:
        return _noSwitch
    try:
        return listener.tls.prepare(tls)
    except Exception as e:
        raise StartupError(f"{listener.description}: cannot use the new certificates: "
                           f"{e}") from None


def _noSwitch() -> None:
    return None


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
