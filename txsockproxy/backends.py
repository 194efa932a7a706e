"""
Backends (an endpoint with counters and a state) and the pool of one proxy, which
asks the balancer for a backend and keeps track of failures. A proxy with
routes has several groups of backends, each with its balancer: the route a
connection takes is chosen by its TLS server name (see L{txsockproxy.routes}).

A backend takes new sessions when all three say so: what an operator set
(up), the passive check (no connect of a session failed within its
disable-time), and its active health check, if it has one (not down after
C{fall} failed probes; see L{txsockproxy.healthcheck}). The two checks are
independent: a good probe does not end a disable-time, and a failed
session connect does not count as a failed probe.

A backend config whose addresses come from DNS (C{resolve = "dns"}, C{srv})
is not a backend: it is a L{DiscoveredBackends}, which makes a backend of
each address DNS gives, and takes them away (they drain) when DNS stops
giving them. A group's C{members} are its backends and those; its
C{backends}, what the balancer and the status page see, are all of them.
"""

from __future__ import annotations

import errno
import os
from dataclasses import replace
from functools import partial
from typing import Any, Callable, Iterable, Optional, Union

from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from txsockproxy.addresses import formatAddress
from txsockproxy.admission import Admission
from txsockproxy.config import (
    DEFAULT_ROUTE,
    DEFAULT_ROUTE_INSPECT_DELAY,
    BackendConfig,
    ProxyConfig,
)
from txsockproxy.congestion import Congestion
from txsockproxy.discovery import (
    Resolution,
    StreamResolver,
    Target,
    describe,
    lookup,
    makeResolver,
)
from txsockproxy.healthcheck import CHECK_DOWN, HealthCheck
from txsockproxy.interfaces import IBackendInfo, IBalancer, IConnectionInfo
from txsockproxy.listening import LISTENING, Listening
from txsockproxy.proxyprotocol import localHeader
from txsockproxy.ratelimit import RateLimitedLog
from txsockproxy.routes import RouteTable
from txsockproxy.tlsclient import backendEndpoint

# A backend's state, as the status page and metrics show it.
UP = "up"  # in rotation
FAILING = "failing"  # out of rotation for disable-time after a connect failure
CHECKED_DOWN = "unhealthy"  # out of rotation: its health checks fail
DRAINING = "draining"  # set by an operator: no new sessions, current ones finish
MAINTENANCE = "maintenance"  # set by an operator: no new sessions
STATES = (UP, FAILING, CHECKED_DOWN, DRAINING, MAINTENANCE)
# Its health check failed fall times in a row: no new sessions until rise
# good ones (another name of CHECKED_DOWN).
UNHEALTHY = CHECKED_DOWN
# The lines of a backend's health-check changes: at most CHECK_LOG_BURST in
# CHECK_LOG_INTERVAL seconds, then one saying how many were left out.
CHECK_LOG_INTERVAL = 60.0
CHECK_LOG_BURST = 10
#: The names of the states before 0.2 ("disabled" was a failure, "down" an
#: operator's disable), which /status.json still gives as "legacy_state".
LEGACY_STATES = {FAILING: "disabled", CHECKED_DOWN: "disabled", MAINTENANCE: "down"}


@implementer(IBackendInfo)
class Backend:
    """
    One backend of a proxy, with the counters and state the status page shows.

    @ivar active: sessions assigned to it now, including those still connecting.
    @ivar connected: successful connects, ever.
    @ivar failed: failed connects (refused, timed out, unresolvable), ever.
    @ivar bytesIn: bytes received from the backend (relayed to clients).
    @ivar bytesOut: bytes sent to the backend (received from clients).
    @ivar lastError: the most recent connect failure, in words, or C{""}.
    @ivar disabledUntil: the reactor time until which a connect failure keeps
        the backend out of rotation.
    @ivar adminState: what an operator set: C{"up"}, C{"draining"} or
        C{"maintenance"}.
    @ivar congestion: the congestion control its sockets get.
    @ivar route: the name of the group it belongs to: C{"default"} (the
        proxy's own backends) or a route's.
    @ivar health: its active health check (L{HealthCheck}, which keeps its
        own counters), or L{None} when its check is off.
    @ivar priority: the SRV priority of a backend from DNS; a pick only
        considers the available backends of the lowest priority there is.
        0 for every other backend.
    @ivar source: the L{DiscoveredBackends} it comes from, or L{None}.
    @ivar gone: DNS gives its address no more: it takes no new session,
        and leaves the pool when its last one ends.
    """

    def __init__(self, config: BackendConfig, endpoint: IStreamClientEndpoint) -> None:
        self.config = config
        self.endpoint = endpoint
        self.label = config.label
        self.key = config.endpoint
        self.weight = config.weight
        self.congestion = Congestion(config.congestion)
        self.active = 0
        self.connected = 0
        self.failed = 0
        self.bytesIn = 0
        self.bytesOut = 0
        self.lastError = ""
        self.disabledUntil = 0.0
        self.adminState = UP
        # Sessions closed at the deadline of a drain, and that deadline.
        self.drainClosed = 0
        self.drainTimer: Optional[IDelayedCall] = None
        self.route = DEFAULT_ROUTE
        self.health: Optional[HealthCheck] = None
        self.priority = 0
        self.source: Optional[DiscoveredBackends] = None
        self.gone = False

    @property
    def checkDown(self) -> bool:
        """
        Whether its health check says it is down.
        """
        return self.health is not None and self.health.state == CHECK_DOWN

    def stateAt(self, now: float) -> str:
        """
        The backend's state at reactor time C{now}: what an operator set
        (C{"maintenance"}, C{"draining"}) first, else C{"unhealthy"} while
        its health check says down, else C{"failing"} during its
        disable-time after a connect failure, else C{"up"}.
        """
        if self.gone:
            return DRAINING
        if self.adminState != UP:
            return self.adminState
        if self.checkDown:
            return CHECKED_DOWN
        return FAILING if now < self.disabledUntil else UP

    def availableAt(self, now: float) -> bool:
        """
        Whether new sessions may be sent to the backend at reactor time
        C{now}: an operator has it up, no disable-time runs, and its health
        check (if any) does not say down.
        """
        health = self.health  # checkDown, inline
        return (self.adminState == UP and now >= self.disabledUntil and not self.gone
                and (health is None or health.state != CHECK_DOWN))

    @property
    def full(self) -> bool:
        """
        Whether it holds its C{max-connections} sessions: every balancer
        skips it then.
        """
        limit = self.config.maxConnections
        return bool(limit) and self.active >= limit

    def reconfigure(self, config: BackendConfig) -> None:
        """
        Take the settings of C{config} (same label and endpoint), keeping
        counters and state: used when the configuration is reloaded.
        """
        self.config = config
        self.weight = config.weight
        self.congestion = Congestion(config.congestion)

    def __repr__(self) -> str:
        return f"<Backend {self.label!r} {self.key}>"


def discoveredConfig(template: BackendConfig, target: Target) -> BackendConfig:
    """
    The config of the backend that the address C{target} of C{template}
    (a backend config with discovery) is: C{template}'s settings, its
    address as a C{tcp:} endpoint, its label followed by the address
    (C{db/10.0.0.5:5432}), and for SRV the record's weight (a weight of 0
    counts as 1: every balancer divides by weights).
    """
    assert template.discovery is not None
    ip = target.address
    shown = f"[{ip}]:{target.port}" if ":" in ip else f"{ip}:{target.port}"
    return replace(
        template,
        endpoint=f"tcp:host={quoteStringArgument(ip)}:port={target.port}",
        label=f"{template.label}/{shown}",
        weight=max(target.weight, 1) if template.discovery.srv else template.weight,
        discovery=None,
    )


class DiscoveredBackends:
    """
    The backends of one backend config whose addresses come from DNS: one
    per address of the last good answer (in a canonical order, so that
    balancers do the same whatever order DNS gave), and those DNS no longer
    gives that still have sessions (they drain: no new session; they go
    when their last session ends). A failed or empty answer changes
    nothing (see L{Resolution}).

    @ivar config: the backend config (a template, with C{discovery}).
    @ivar current: the backends of the last good answer.
    @ivar leaving: backends DNS gives no more, with sessions still open.
    @ivar resolution: what looks the addresses up, and when.
    @ivar onChange: called when C{backends} changes (the pool sets it).
    """

    log = Logger()

    def __init__(
        self,
        config: BackendConfig,
        resolver: Any,
        clock: IReactorTime,
        makeBackend: Callable[[BackendConfig], Backend],
        proxy: str = "",
        listening: Listening = LISTENING,
    ) -> None:
        """
        @param listening: the proxy process's listeners: an address DNS
            gives that is one of them is left out (sessions would connect
            to the proxy itself, again and again).
        """
        discovery = config.discovery
        assert discovery is not None
        self.config = config
        self.listening = listening
        self._ownLogged: set[tuple[str, int]] = set()
        self.proxy = proxy
        self.makeBackend = makeBackend
        self.current: list[Backend] = []
        self.leaving: list[Backend] = []
        self.onChange: Callable[[], None] = lambda: None
        self._targets: dict[str, Target] = {}
        self.resolution = Resolution(
            clock, partial(lookup, resolver, discovery), self._answered,
            discovery.resolveMin, discovery.resolveMax,
            what=f"proxy {proxy}: backend {config.label} ({describe(discovery)})",
        )
        # A flapping answer changes the set at every lookup: its lines are
        # bounded.
        self._changeLog = RateLimitedLog(
            clock, self.log, f"changes of backend {config.label}'s addresses",
            interval=60.0, burst=10,
        )

    def stop(self) -> None:
        """
        Stop looking up (the proxy stops, or no longer has it).
        """
        self.resolution.stop()
        self._changeLog.stop()

    @property
    def label(self) -> str:
        """
        The label of its config (its backends' labels start with it).
        """
        return self.config.label

    @property
    def key(self) -> str:
        """
        What identifies it across reloads: its config's endpoint (which
        names the host name and port, or the SRV name).
        """
        return self.config.endpoint

    @property
    def backends(self) -> list[Backend]:
        """
        Its backends: the current ones, then those leaving.
        """
        return self.current + self.leaving

    def reconfigure(self, config: BackendConfig) -> None:
        """
        Take the settings of C{config} (same label, name and resolver):
        its backends get them, keeping counters and state.
        """
        self.config = config
        assert config.discovery is not None
        self.resolution.configure(config.discovery.resolveMin, config.discovery.resolveMax)
        for backend in self.backends:
            target = self._targets.get(backend.key)
            if target is not None:
                backend.reconfigure(discoveredConfig(config, target))

    def _notOwn(self, targets: list[Target]) -> list[Target]:
        kept = []
        for target in targets:
            if not self.listening.covers(target.address, target.port):
                kept.append(target)
                continue
            where = (target.address, target.port)
            # Once per address (and no more than a few: a hostile server
            # could make up many).
            if where not in self._ownLogged and len(self._ownLogged) < 16:
                self._ownLogged.add(where)
                self.log.error(
                    "proxy {proxy}: backend {label}: DNS gives {address}, a listener of "
                    "this proxy: left out (sessions would connect to the proxy itself)",
                    proxy=self.proxy, label=self.label,
                    address=(f"[{target.address}]:{target.port}" if ":" in target.address
                             else f"{target.address}:{target.port}"),
                )
        return kept

    def _answered(self, targets: list[Target]) -> None:
        targets = self._notOwn(targets)
        byKey = {b.key: b for b in self.current}
        leaving = {b.key: b for b in self.leaving}
        current: list[Backend] = []
        added: list[str] = []
        for target in targets:
            config = discoveredConfig(self.config, target)
            self._targets[config.endpoint] = target
            backend = byKey.pop(config.endpoint, None)
            if backend is None:
                backend = leaving.pop(config.endpoint, None)
                if backend is not None:
                    # Back before its last session ended: it takes sessions again.
                    backend.gone = False
                else:
                    backend = self.makeBackend(config)
                    backend.source = self
                added.append(config.label)
            if backend.config != config:
                backend.reconfigure(config)
            backend.priority = target.priority
            current.append(backend)
        removed = [b.label for b in byKey.values()]
        for backend in byKey.values():
            backend.gone = True
            if backend.active > 0:
                leaving[backend.key] = backend
            else:
                self._targets.pop(backend.key, None)
        changed = [b.key for b in current] != [b.key for b in self.current] or (
            list(leaving) != [b.key for b in self.leaving])
        self.current = current
        self.leaving = list(leaving.values())
        if added or removed:
            self._changeLog.emit(
                LogLevel.info,
                "proxy {proxy}: backend {label}: DNS gives {count} address(es)"
                "{added}{removed}",
                proxy=self.proxy, label=self.label, count=len(current),
                added=f"; new: {_some(added)}" if added else "",
                removed=f"; gone (draining): {_some(removed)}" if removed else "",
            )
        if changed or added or removed:
            self.onChange()

    def released(self, backend: Backend) -> None:
        """
        C{backend}, one it no longer gives, has a session fewer: it leaves
        when that was its last.
        """
        if backend.gone and backend.active <= 0 and backend in self.leaving:
            self.leaving.remove(backend)
            self._targets.pop(backend.key, None)
            self.log.info(
                "proxy {proxy}: backend {label} drained: its last session ended",
                proxy=self.proxy, label=backend.label,
            )
            self.onChange()

    def __repr__(self) -> str:
        return f"<DiscoveredBackends {self.label!r} {self.key}>"


# The labels a change line names, at most: an answer of hundreds of
# addresses makes one line of a few.
CHANGE_LABELS_SHOWN = 8


def _some(labels: list[str]) -> str:
    shown = ", ".join(labels[:CHANGE_LABELS_SHOWN])
    more = len(labels) - CHANGE_LABELS_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


# What a group is made of, in config order: backends of their own, and
# backend configs whose backends come from DNS.
Member = Union[Backend, DiscoveredBackends]


def flatten(members: Iterable[Member]) -> list[Backend]:
    """
    The backends C{members} stand for, in order.
    """
    backends: list[Backend] = []
    for member in members:
        if isinstance(member, DiscoveredBackends):
            backends.extend(member.backends)
        else:
            backends.append(member)
    return backends


class BackendGroup:
    """
    Backends that one balancer chooses among: a proxy's own (the default
    group) or those of one of its routes.

    @ivar name: C{"default"}, or the route's name.
    @ivar names: the server-name patterns that lead to it (normalized).
    @ivar routed: sessions sent to the group, ever.
    @ivar members: its backends and its L{DiscoveredBackends}, in config
        order.
    @ivar backends: every backend it has now (those of its
        L{DiscoveredBackends} included).
    """

    def __init__(
        self,
        name: str,
        backends: Iterable[Member],
        balancer: IBalancer,
        names: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.members = list(backends)
        self.backends = flatten(self.members)
        self.balancer = balancer
        self.names = tuple(names)
        self.routed = 0
        self.allDown = False

    @property
    def discovered(self) -> list[DiscoveredBackends]:
        """
        Its members whose backends come from DNS.
        """
        return [m for m in self.members if isinstance(m, DiscoveredBackends)]

    def refresh(self) -> None:
        """
        Take the backends its members stand for now.
        """
        self.backends = flatten(self.members)

    def __repr__(self) -> str:
        return f"<BackendGroup {self.name!r}>"


class BackendPool:
    """
    The backends of one proxy, its balancer, and its per-proxy counters.

    With routes, the backends of C{config.backends} are the default group,
    and C{backends} lists every group's backends: the default's first, then
    each route's, in config order.

    @ivar accepted: client connections accepted, ever.
    @ivar active: sessions open now.
    @ivar refused: client connections closed because no backend was available.
    @ivar resourceErrors: client connections closed because the proxy itself
        ran out of a resource (descriptors, memory) while connecting to a
        backend; the backend is not blamed for these.
    @ivar badHeaders: client connections closed on a PROXY protocol
        listener for a missing, late or malformed header.
    """

    log = Logger()

    def __init__(
        self,
        config: ProxyConfig,
        backends: Iterable[Member],
        balancer: IBalancer,
        clock: IReactorTime,
        routes: Iterable[BackendGroup] = (),
    ) -> None:
        self.config = config
        self.name = config.name
        self.clock = clock
        self._useGroups(BackendGroup(DEFAULT_ROUTE, backends, balancer), routes)
        # Access rules, per-client limits and the queue.
        self.admission = Admission(clock, self.name, config.protection)
        # The open sessions (a txsockproxy.relay.Sessions), given by the
        # listeners' factories: a drain's deadline closes those of a backend.
        self.sessions: Any = None
        # The last pick found backends up, but all full.
        self.lastFull = False
        self.accepted = 0
        self.active = 0
        self.refused = 0
        self.resourceErrors = 0
        self.badHeaders = 0
        self.checking = False
        # The lines of each backend's health-check state changes: a
        # backend that flaps (rise = fall = 1, a short interval) would log
        # one per probe.
        self._checkLogs: dict[Backend, RateLimitedLog] = {}
        self._syncChecks()
        self._resourceLog = RateLimitedLog(
            clock, self.log, "sessions closed for lack of resources"
        )
        # A client chooses its server name: one per name would be too many.
        self._noRouteLog = RateLimitedLog(
            clock, self.log, "sessions closed for want of a route"
        )

    def _useGroups(self, default: BackendGroup, routes: Iterable[BackendGroup]) -> None:
        self.default = default
        self.balancer = default.balancer
        self.routes = list(routes)
        self._table: RouteTable[BackendGroup] = RouteTable(
            (pattern, group) for group in self.routes for pattern in group.names
        )
        self._byName = {group.name: group for group in (default, *self.routes)}
        for group in (default, *self.routes):
            group.refresh()
            for member in group.discovered:
                member.onChange = self._discoveredChanged
        self.backends = list(default.backends)
        for backend in default.backends:
            backend.route = DEFAULT_ROUTE
        for group in self.routes:
            for backend in group.backends:
                backend.route = group.name
            self.backends.extend(group.backends)

    @property
    def discovered(self) -> list[DiscoveredBackends]:
        """
        The members of every group whose backends come from DNS.
        """
        return [member for group in self.groups for member in group.discovered]

    def _discoveredChanged(self) -> None:
        """
        DNS gave other addresses, or a backend it gives no more has drained:
        the groups take their backends again; those that went stop their
        health checks, new ones start theirs.
        """
        before = self.backends
        self._useGroups(self.default, self.routes)
        staying = set(self.backends)
        for backend in before:
            if backend not in staying and backend.health is not None:
                backend.health.stop()
            if backend not in staying:
                # Its window ends on its own (with its summary, if any).
                self._checkLogs.pop(backend, None)
        self._syncChecks()

    @property
    def groups(self) -> list[BackendGroup]:
        """
        The default group, then the routes' groups.
        """
        return [self.default, *self.routes]

    @property
    def inspectDelay(self) -> float:
        """
        At most how many seconds a new session waits for the client's TLS
        server name before a backend is chosen: for routes (C{inspect-delay},
        or 5 s when it is 0) or a balancer that places by name, else 0.
        """
        if self.routes:
            return self.config.inspectDelay or DEFAULT_ROUTE_INSPECT_DELAY
        if getattr(self.balancer, "wantsServerName", False):
            return self.config.inspectDelay
        return 0.0

    def groupOf(self, connection: IConnectionInfo) -> BackendGroup:
        """
        The group whose backends serve C{connection}: the route its server
        name matches best, else the default group.
        """
        if not self.routes:
            return self.default
        return self._table.lookup(connection.serverName) or self.default

    def whyRefused(self, connection: IConnectionInfo) -> str:
        """
        Why L{pick} found nothing for C{connection}, in words.
        """
        group = self.groupOf(connection)
        if not group.backends and not group.discovered:
            return "no route"
        if self.lastFull:
            return "all backends full"
        return "all backends down"

    @classmethod
    def fromConfig(
        cls, config: ProxyConfig, balancer: IBalancer, reactor: IReactorTime
    ) -> BackendPool:
        """
        Build a pool whose backends connect through C{reactor}, from endpoint
        strings parsed once, here, rather than per connection.
        """
        return cls(config, membersFor(config.backends, reactor, config.name), balancer, reactor)

    def pick(
        self, connection: IConnectionInfo, exclude: set[Backend] | frozenset[Backend] = frozenset()
    ) -> Optional[Backend]:
        """
        Choose a backend for C{connection} among those available now, leaving
        out C{exclude} (those this session already failed to reach).

        The chosen backend's C{active} count is raised at once, so that
        concurrent choices see it. When nothing is available, the "all
        backends down" error is logged once until a backend answers again.
        """
        if self.routes:
            group = self._table.lookup(connection.serverName) or self.default
            if not exclude:
                group.routed += 1
        else:
            group = self.default
        if not group.backends and not group.discovered:
            # Only the default group may be empty: a proxy whose backends
            # are all in routes. (One whose backends come from DNS has none
            # until DNS answers: all down, then.)
            self._noRouteLog.emit(
                LogLevel.warn,
                "proxy {proxy}: closing {client}: no route for server name {name} "
                "and no default backends",
                proxy=self.name, client=formatAddress(connection.peer),
                name=repr(connection.serverName) if connection.serverName else "(none)",
            )
            return None
        now = self.clock.seconds()
        # One loop, not comprehensions and any(): each of those is a call
        # of its own, per session.
        available: list[Backend] = []
        candidates: list[Backend] = []
        prioritized = False
        for b in group.backends:
            if b in exclude or not b.availableAt(now):
                continue
            available.append(b)
            if not b.full:
                candidates.append(b)
                if b.priority:
                    prioritized = True
        if prioritized:
            # SRV priorities: the lowest of the backends that can take it.
            best = min(b.priority for b in candidates)
            candidates = [b for b in candidates if b.priority == best]
        self.lastFull = bool(available) and not candidates
        if self.lastFull:
            return None
        if not candidates:
            if not group.allDown:
                group.allDown = True
                if self.routes:
                    self.log.error(
                        "proxy {proxy}: all backends of route {route} down, closing "
                        "client connections until one answers again",
                        proxy=self.name, route=group.name,
                    )
                else:
                    self.log.error(
                        "proxy {proxy}: all backends down, closing client connections "
                        "until one answers again",
                        proxy=self.name,
                    )
            return None
        chosen = group.balancer.choose(candidates, connection)
        if chosen is None:
            # The balancer refused this connection on purpose: backends are
            # not down, so nothing to report beyond the refused count.
            return None
        backend = chosen if isinstance(chosen, Backend) else self._own(chosen, group)
        backend.active += 1
        return backend

    def reconfigure(
        self,
        config: ProxyConfig,
        backends: Iterable[Member],
        balancer: IBalancer,
        routes: Iterable[BackendGroup] = (),
    ) -> None:
        """
        Use new settings, backends, balancer and routes for new sessions,
        keeping the proxy's counters: used when the configuration is
        reloaded. Sessions in flight keep the backend they have.
        """
        self.config = config
        self.admission.reconfigure(config.protection)
        default = BackendGroup(DEFAULT_ROUTE, backends, balancer)
        default.routed = self.default.routed
        before = self.backends
        beforeDiscovered = self.discovered
        self._useGroups(default, routes)
        staying = set(self.backends)
        for backend in before:
            if backend not in staying and backend.health is not None:
                backend.health.stop()
            if backend not in staying:
                # Its window ends on its own (with its summary, if any).
                self._checkLogs.pop(backend, None)
        stayingDiscovered = set(self.discovered)
        for member in beforeDiscovered:
            if member not in stayingDiscovered:
                member.stop()
        self._syncChecks()

    # -- health checks ------------------------------------------------------------

    def startChecks(self) -> None:
        """
        Start the health checks of the backends that have one (the proxy
        now serves); those of backends added later start as they come.
        """
        self.checking = True
        self._syncChecks()

    def stopChecks(self) -> None:
        """
        Stop every health check (the proxy stops): no probe stays in flight
        or scheduled. Their states and counters stay for the status page.
        """
        self.checking = False
        for backend in self.backends:
            if backend.health is not None:
                backend.health.stop()
        for member in self.discovered:
            member.stop()
        checkLogs, self._checkLogs = self._checkLogs, {}
        for log in checkLogs.values():
            log.stop()

    def _syncChecks(self) -> None:
        """
        Give each backend the health check its config asks for: a new one,
        the one it has with the new settings (state and counters kept), or
        none; started when the proxy serves.
        """
        if self.checking:
            for member in self.discovered:
                member.resolution.start()
        for backend in self.backends:
            # One DNS gives no more takes no session: nothing to check.
            want = None if backend.gone else backend.config.check
            health = backend.health
            if want is None:
                if health is not None:
                    health.stop()
                    backend.health = None
                    if health.state == CHECK_DOWN and not backend.gone:
                        self.log.info(
                            "proxy {proxy}: backend {label} is up again (health check "
                            "turned off)", proxy=self.name, label=backend.label,
                        )
                continue
            if health is None:
                health = HealthCheck(
                    self.clock, backend.endpoint, partial(self._checkChanged, backend),
                    kind=want.kind, interval=want.interval, timeout=want.timeout,
                    rise=want.rise, fall=want.fall, send=want.send, expect=want.expect,
                    **_checkPreamble(backend.config),
                )
                backend.health = health
            else:
                health.configure(
                    want.kind, want.interval, want.timeout, want.rise, want.fall,
                    want.send, want.expect,
                )
                # send-proxy may change on reload (its endpoint may not).
                health.preamble = _checkPreamble(backend.config).get("preamble", b"")
                health.endpointSendsPreamble = backend.config.tls is not None
            if self.checking:
                health.start()

    def _checkChanged(self, backend: Backend, check: HealthCheck, why: str) -> None:
        # Called once per change of the check's state: one line each, at
        # most CHECK_LOG_BURST a CHECK_LOG_INTERVAL per backend, then a
        # summary that says where it stands (status and metrics count all).
        log = self._checkLogs.get(backend)
        if log is None:
            log = self._checkLogs[backend] = RateLimitedLog(
                self.clock, self.log,
                f"health-check changes of backend {backend.label} of proxy {self.name}",
                interval=CHECK_LOG_INTERVAL, burst=CHECK_LOG_BURST,
                now=lambda: "down" if backend.checkDown else "up",
            )
        if check.state == CHECK_DOWN:
            log.emit(
                LogLevel.warn,
                "proxy {proxy}: backend {label} is down (health check: {why}, "
                "{count} failed checks in a row)",
                proxy=self.name, label=backend.label, why=why, count=-check.streak,
            )
        else:
            log.emit(
                LogLevel.info,
                "proxy {proxy}: backend {label} is up again ({why})",
                proxy=self.name, label=backend.label, why=why,
            )

    def route(self, name: str) -> BackendGroup | None:
        """
        The group called C{name} (C{"default"} or a route's name), if any.
        """
        return self._byName.get(name)

    def backend(self, label: str) -> Optional[Backend]:
        """
        The backend labelled C{label}, if the proxy has one.
        """
        for backend in self.backends:
            if backend.label == label:
                return backend
        return None

    def _own(self, chosen: IBackendInfo, group: BackendGroup) -> Backend:
        # A third-party balancer may hand back a proxy object; map it back.
        for backend in group.backends:
            if backend.key == chosen.key:
                return backend
        raise ValueError(f"balancer returned {chosen!r}, which is not a candidate")

    def connectFailed(self, backend: Backend, reason: Failure) -> None:
        """
        Record a failed connect: count it and disable the backend for its
        disable-time. Logged once per disable-time: the connects already
        under way when the first failed fail too, and are only counted.
        """
        backend.active -= 1
        backend.failed += 1
        now = self.clock.seconds()
        wasAvailable = now >= backend.disabledUntil
        error = describeFailure(reason, backend.config.connectTimeout)
        backend.disabledUntil = now + backend.config.disableTime
        self._leaveIfGone(backend)
        if not wasAvailable and error == backend.lastError:
            return
        backend.lastError = error
        self.log.error(
            "proxy {proxy}: connecting to backend {label} ({endpoint}) failed: "
            "{error}; disabled for {seconds}s",
            proxy=self.name,
            label=backend.label,
            endpoint=backend.key,
            error=backend.lastError,
            seconds=backend.config.disableTime,
        )

    def resourceError(self, backend: Backend, reason: Failure, client: str) -> None:
        """
        Record a connect to C{backend} that failed for lack of a resource
        of the proxy's own (see L{localResourceError}): the backend is
        neither counted as failed nor disabled; the proxy's
        C{resourceErrors} counts it, and it is logged at a bounded rate.
        """
        backend.active -= 1
        self.resourceErrors += 1
        self._leaveIfGone(backend)
        self._resourceLog.emit(
            LogLevel.error,
            "proxy {proxy}: closing {client}: cannot connect to backend {label}: "
            "the proxy is out of resources ({error}); the backend stays up",
            proxy=self.name, client=client, label=backend.label,
            error=describeFailure(reason, backend.config.connectTimeout),
        )

    def connectSucceeded(self, backend: Backend) -> None:
        """
        Record a successful connect.
        """
        backend.connected += 1
        group = self._byName.get(backend.route)
        if group is not None and group.allDown:
            group.allDown = False
            self.log.info(
                "proxy {proxy}: backend {label} answers again", proxy=self.name,
                label=backend.label,
            )

    def setAdminState(
        self, backend: Backend, state: str, drainTimeout: Optional[float] = None
    ) -> None:
        """
        Set what an operator wants of C{backend}: C{"up"}, C{"maintenance"}
        (no new sessions) or C{"draining"} (no new sessions; those open are closed
        after C{drainTimeout} seconds, by default the proxy's
        C{drain-timeout}, if not 0).
        """
        backend.adminState = state
        if backend.drainTimer is not None:
            if backend.drainTimer.active():
                backend.drainTimer.cancel()
            backend.drainTimer = None
        if state != DRAINING:
            return
        if drainTimeout is None:
            drainTimeout = self.config.protection.drainTimeout
        if drainTimeout > 0:
            backend.drainTimer = self.clock.callLater(
                drainTimeout, self._drainDeadline, backend, drainTimeout
            )

    def _drainDeadline(self, backend: Backend, seconds: float) -> None:
        backend.drainTimer = None
        if backend.adminState != DRAINING or self.sessions is None:
            return
        closing = [
            s for s in list(self.sessions.open)
            if s.backend is backend and not s.finished
        ]
        if not closing:
            # Drained by itself: nothing to warn about.
            return
        backend.drainClosed += len(closing)
        self.log.warn(
            "proxy {proxy}: backend {label} drained: {count} session(s) still open after "
            "{seconds:g}s closed",
            proxy=self.name, label=backend.label, count=len(closing), seconds=seconds,
        )
        for session in closing:
            session.abort("drain deadline")

    def released(self, backend: Backend) -> None:
        """
        A session that had C{backend} is over: it had connected, or its
        client left while it connected.
        """
        backend.active -= 1
        if backend.gone:
            self._leaveIfGone(backend)

    @staticmethod
    def _leaveIfGone(backend: Backend) -> None:
        # A backend DNS gives no more leaves with its last session.
        if backend.gone and backend.source is not None:
            backend.source.released(backend)


def membersFor(
    configs: Iterable[BackendConfig],
    reactor: Any,
    proxy: str = "",
    resolverFor: Optional[Callable[[str], Any]] = None,
) -> list[Member]:
    """
    The members of a group of C{configs}, connecting through C{reactor}: a
    L{Backend} of each config, or a L{DiscoveredBackends} of each config
    whose addresses come from DNS, looked up through C{resolverFor(server)}
    (by default L{txsockproxy.discovery.makeResolver}, one per server).
    """
    if resolverFor is None:
        resolverFor = resolverCache(reactor)

    def makeBackend(config: BackendConfig) -> Backend:
        return Backend(config, backendEndpoint(reactor, config))

    members: list[Member] = []
    for config in configs:
        if config.discovery is None:
            members.append(makeBackend(config))
        else:
            members.append(DiscoveredBackends(
                config, resolverFor(config.discovery.resolver), reactor, makeBackend, proxy,
            ))
    return members


class ResolverCache:
    """
    Gives one resolver per C{resolver} setting (see
    L{txsockproxy.discovery.makeResolver}), made when first asked for, and
    drops (closing its connections) those no backend uses any more.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.made: dict[str, Any] = {}

    def __call__(self, server: str) -> Any:
        if server not in self.made:
            self.made[server] = makeResolver(self.reactor, server)
        return self.made[server]

    def keepOnly(self, servers: Iterable[str]) -> None:
        """
        Drop the resolvers of settings not in C{servers}; the system's
        (C{""}) stays (C{twisted.names} keeps rereading resolv.conf for it
        whatever is done).
        """
        wanted = set(servers) | {""}
        for server in [s for s in self.made if s not in wanted]:
            chain = self.made.pop(server)
            for resolver in getattr(chain, "resolvers", ()):
                if isinstance(resolver, StreamResolver):
                    resolver.close()


def resolverCache(reactor: Any) -> ResolverCache:
    """
    A L{ResolverCache} of resolvers connecting through C{reactor}.
    """
    return ResolverCache(reactor)


def _checkPreamble(config: BackendConfig) -> dict[str, Any]:
    """
    What a backend's probes send first: the PROXY protocol header of a
    connection of the proxy's own (C{LOCAL}) when it is sent C{send-proxy}
    headers, since it expects one on every connection; with TLS, in clear
    before the handshake, as sessions send theirs.
    """
    if not config.sendProxy:
        return {}
    return {"preamble": localHeader(config.sendProxy),
            "endpointSendsPreamble": config.tls is not None}


# Errors of the proxy's own resources, not the backend's doing.
LOCAL_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def localResourceError(reason: Failure) -> Optional[int]:
    """
    The errno of C{reason} if it says the proxy ran out of a resource of its
    own (descriptors, buffers, memory) rather than that the backend failed,
    else L{None}.
    """
    from twisted.internet import error

    value = reason.value
    code: object = None
    if isinstance(value, error.ConnectError):
        code = value.osError
    elif isinstance(value, OSError):
        code = value.errno
    return code if isinstance(code, int) and code in LOCAL_RESOURCE_ERRORS else None


def describeFailure(reason: Failure, connectTimeout: float) -> str:
    """
    A one-line description of why a connect failed.
    """
    from twisted.internet import defer, error

    # Cancelled connects here are the connect timeout's doing: a session
    # whose client left does not report its cancelled connect.
    if reason.check(
        defer.TimeoutError, error.TimeoutError, defer.CancelledError,
        error.ConnectingCancelledError,
    ):
        return f"connect timeout after {connectTimeout:g}s"
    value = reason.value
    if reason.check(error.ConnectionRefusedError):
        return "connection refused"
    if reason.check(error.DNSLookupError):
        return f"cannot resolve: {value}"
    if isinstance(value, error.ConnectError) and value.osError:
        return os.strerror(value.osError)
    if isinstance(value, OSError) and value.strerror:
        return value.strerror
    text = str(value).strip()
    return text or reason.type.__name__  # type: ignore[union-attr]
