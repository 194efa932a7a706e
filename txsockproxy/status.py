"""
The status web resource: an HTML page, JSON, Prometheus metrics, lighttpd-style
statistics, and the admin actions (drain, disable, enable a backend); and the
site serving it. The site shares the process, and its file descriptors, with
the relay, so it is kept small: request bodies are refused beyond a small
size before they are read, connections are limited in number and in time,
refusals are logged at a bounded rate, and endpoint strings are shown without
the paths of keys and certificates.

Everything here reads a L{StatusView} (the pools, a clock, the admin token and
one counter of the process), never the service that builds it; it only reads
the counters kept by the pools and backends, except the admin actions, which
set a backend's administrative state.
"""

from __future__ import annotations

import hmac
import html
import json
import math
import platform
from dataclasses import dataclass, field
from importlib import metadata
from io import BytesIO
from typing import Any, Callable, Iterator, Mapping, Optional, cast

from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

import twisted
from txsockproxy.backends import (
    CHECKED_DOWN,
    DRAINING,
    FAILING,
    LEGACY_STATES,
    MAINTENANCE,
    STATES,
    UP,
    Backend,
    BackendPool,
    DiscoveredBackends,
)
from txsockproxy.config import (
    DEFAULT_STATUS_MAX_BODY_SIZE,
    DEFAULT_STATUS_MAX_CONNECTIONS,
    DEFAULT_STATUS_REQUEST_TIMEOUT,
)
from txsockproxy.rates import INTERVAL, POINT_SAMPLES, POINTS, Rate, RateTracker

#: The largest request body accepted, in bytes. Admin actions have none; a
#: larger one is refused with 413 before any of it is read.
MAX_BODY_SIZE = DEFAULT_STATUS_MAX_BODY_SIZE
#: Connections open to the status site at once; more are closed at once.
MAX_CONNECTIONS = DEFAULT_STATUS_MAX_CONNECTIONS
#: Seconds a connection has to send a whole request (headers and body), from
#: its opening and from the end of its previous request: slow or idle clients
#: are closed after it.
REQUEST_TIMEOUT = DEFAULT_STATUS_REQUEST_TIMEOUT
#: Seconds a closed connection has to take the rest of its reply before it is
#: reset.
ABORT_TIMEOUT = 5.0
#: Bytes of answers a connection may have written while its transport's
#: buffer is full (the client does not read); beyond it is reset. Pipelined
#: requests are answered as they come, read or not.
MAX_UNSENT = 1 << 20
#: Refusals logged per interval; those beyond are counted and summed up in one
#: line at the end of the interval.
LOG_LINES = 10
#: That interval, in seconds.
LOG_INTERVAL = 60.0

REDACTED = "<redacted>"

# Endpoint-string parameters whose values are (paths of) secrets: Twisted's
# privateKey, certKey, extraCertChain, dhParameters (ssl:), certificate,
# trustRoots (tls:), caCertsDir (ssl: clients), txtorcon's hiddenServiceDir
# and privateKeyFile, and any password or token a plugin takes.
_SECRET_PARTS = ("key", "cert", "pass", "secret", "token", "trust", "dhparam",
                 "hiddenservicedir")
# Server endpoint types with positional secrets: the positional arguments
# (counted after the type) that are. ssl:PORT:PRIVATEKEY:CERTKEY, and
# txacme's le:/lets:CERTIFICATE-DIRECTORY:ENDPOINT.
_POSITIONAL_SECRETS = {"ssl": (1, 2), "le": (0,), "lets": (0,)}


def _splitEscaped(text: str, separator: str, limit: int = -1) -> list[str]:
    """
    Split C{text} at C{separator}s not escaped by a backslash, as Twisted's
    endpoint-string parser does, keeping the escapes in the parts.
    """
    parts, current, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if c == separator and limit != 0:
            parts.append("".join(current))
            current = []
            limit -= 1
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def _escape(text: str) -> str:
    return "".join("\\" + c if c in ":=\\" else c for c in text)


def _isSecret(name: str) -> bool:
    lowered = _unescape(name).lower()
    return any(part in lowered for part in _SECRET_PARTS)


def redactEndpoint(description: str, server: bool = False) -> str:
    """
    C{description}, an endpoint string, with the values of the parameters that
    name keys, certificates or other secrets replaced by C{<redacted>}.

    Parameters are found as Twisted's parser finds them, minding backslash
    escapes; an endpoint string nested in a parameter's value (escaped) is
    redacted too.

    @param server: whether C{description} is a server endpoint string, whose
        C{ssl:} type also takes the key and certificate as positional
        arguments (C{ssl:443:server.pem}).
    """
    out = []
    secret: tuple[int, ...] = ()
    position = -1  # the type is not a positional argument
    for segment in _splitEscaped(description, ":"):
        parameter = _splitEscaped(segment, "=", 1)
        if len(parameter) == 2:
            name, value = parameter
            out.append(f"{name}={REDACTED if _isSecret(name) else _redactValue(value)}")
            continue
        if position in secret:
            out.append(REDACTED)
            position += 1
            continue
        out.append(_redactValue(segment))
        kind = _unescape(segment).lower()
        if server and kind in _POSITIONAL_SECRETS:
            # Also a wrapper's inner type (haproxy:ssl:...).
            secret, position = _POSITIONAL_SECRETS[kind], 0
        else:
            position += 1
    return ":".join(out)


def _redactValue(value: str) -> str:
    # Only a value holding an escaped colon can be a nested endpoint string.
    if "\\:" not in value:
        return value
    inner = _unescape(value)
    redacted = redactEndpoint(inner)
    return value if redacted == inner else _escape(redacted)


def _noneClosed() -> int:
    return 0


def _version() -> str:
    try:
        return metadata.version("txsockproxy")
    except metadata.PackageNotFoundError:
        # Run from a source tree that was never installed.
        return "unknown"


#: The version of txsockproxy, Twisted and Python, as the page and the
#: C{sockproxy_build_info} metric show them.
VERSIONS = {
    "version": _version(),
    "twisted": twisted.__version__,
    "python": platform.python_version(),
}


@dataclass
class StatusView:
    """
    All the status site reads of the running proxy: it never sees the
    service itself. The service keeps it up to date (a reload replaces the
    pools and the token).

    @ivar clock: the time backends' states are read at.
    @ivar pools: the pool of each proxy, by proxy name, in config order.
    @ivar adminToken: the token admin actions need, or C{""} (refused).
    @ivar closedAtAccept: how many clients the process closed at accept,
        for lack of descriptors, so far.
    @ivar startedAt: the C{clock} time the uptime counts from; by default
        the view's creation (the service's).
    @ivar rates: the session and byte rates of every proxy and backend,
        sampled while a status site listens (see L{StatusSite}).
    """

    clock: IReactorTime
    pools: Mapping[str, BackendPool] = field(default_factory=dict)
    adminToken: str = field(default="", repr=False)
    closedAtAccept: Callable[[], int] = _noneClosed
    startedAt: Optional[float] = None
    rates: RateTracker = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # A test's reactor may keep no time; the uptime is 0 for it.
        if self.startedAt is None and IReactorTime.providedBy(self.clock):
            self.startedAt = self.clock.seconds()
        self.rates = RateTracker(self.clock, self._counters)

    def _counters(self) -> dict[tuple[str, ...], tuple[int, int]]:
        # Sessions and bytes (both ways) of every proxy and backend.
        counters: dict[tuple[str, ...], tuple[int, int]] = {}
        for name, pool in self.pools.items():
            total = 0
            for b in pool.backends:
                moved = b.bytesIn + b.bytesOut
                total += moved
                counters[(name, b.label)] = (b.connected, moved)
            counters[(name,)] = (pool.accepted, total)
        return counters


def _rates(rate: Optional[Rate]) -> dict[str, float]:
    if rate is None:
        return {"sessions": 0.0, "max_sessions": 0.0, "bytes": 0.0, "max_bytes": 0.0}
    return {"sessions": rate.current[0], "max_sessions": rate.highest[0],
            "bytes": rate.current[1], "max_bytes": rate.highest[1]}


def backendStatus(backend: Backend, now: float) -> dict[str, Any]:
    """
    One backend as C{/status.json} shows it.

    Its C{state} is one of L{STATES}; C{legacy_state} is the same by the
    earlier names ("disabled" for a failure, "down" for an operator's
    disable), for scripts written against them. C{retry_in} is, while the
    backend is "failing", the seconds until it is tried again.
    """
    state = backend.stateAt(now)
    return {
        "label": redactEndpoint(backend.label),
        "endpoint": redactEndpoint(backend.key),
        "state": state,
        "legacy_state": LEGACY_STATES.get(state, state),
        "retry_in": round(backend.disabledUntil - now, 3) if state == FAILING else None,
        "weight": backend.weight,
        "active": backend.active,
        "connected": backend.connected,
        "failed": backend.failed,
        "bytes_in": backend.bytesIn,
        "bytes_out": backend.bytesOut,
        "last_error": backend.lastError,
        "max_connections": backend.config.maxConnections or None,
        "drain_closed": backend.drainClosed,
        "check": checkStatus(backend, now),
    }


def checkStatus(backend: Backend, now: float) -> dict[str, Any] | None:
    """
    A backend's health check as C{/status.json} shows it, or L{None} when
    its check is off. C{last_change} is in seconds ago (of the last change
    of state, or of the check's start).
    """
    health = backend.health
    if health is None:
        return None
    return {
        "kind": health.kind,
        "state": health.state,
        "last_result": health.lastResult,
        "last_change": round(max(0.0, now - health.lastChange), 3),
        "checks": health.checks,
        "failures": health.failures,
    }


def discoveryStatus(member: DiscoveredBackends, now: float) -> dict[str, Any]:
    """
    A backend config whose addresses come from DNS as C{/status.json}
    shows it: what is looked up, how many backends it gives now (and how
    many that DNS gives no more still drain), and how its lookups go.
    C{next_lookup_in} is in seconds.
    """
    discovery = member.config.discovery
    resolution = member.resolution
    assert discovery is not None
    return {
        "label": redactEndpoint(member.label),
        "name": discovery.name,
        "record": "SRV" if discovery.srv else "A/AAAA",
        "port": discovery.port or None,
        "resolver": discovery.resolver or "system",
        "addresses": len(member.current),
        "draining": len(member.leaving),
        "failing": resolution.failing,
        "last_error": resolution.lastError,
        "lookups": resolution.lookups,
        "failures": resolution.failures,
        "next_lookup_in": (round(max(0.0, resolution.nextAt - now), 3)
                           if resolution.nextAt is not None else None),
    }


def statusDocument(view: StatusView) -> dict[str, Any]:
    """
    The whole C{/status.json} document. Endpoint strings, and the names and
    labels that default to them, are shown by L{redactEndpoint}.
    """
    now = view.clock.seconds()
    proxies = []
    rates = view.rates
    for name, pool in view.pools.items():
        proxy = _proxyStatus(pool, now)
        proxy["rates"] = _rates(rates.rate((name,)))
        for b, shown in zip(pool.backends, proxy["backends"], strict=True):
            shown["rates"] = _rates(rates.rate((name, b.label)))
        proxies.append(proxy)
    started = view.startedAt if view.startedAt is not None else now
    return {
        **VERSIONS,
        "uptime": round(now - started, 3),
        "proxies": proxies,
        "closed_at_accept": view.closedAtAccept(),
    }


def _proxyStatus(pool: BackendPool, now: float) -> dict[str, Any]:
    """
    One proxy as C{/status.json} shows it. A proxy with routes also lists
    its routes (the default group first), and each backend its route.
    """
    document: dict[str, Any] = {
        "name": redactEndpoint(pool.name, server=True),
        "listen": [redactEndpoint(d, server=True) for d in pool.config.listen],
        "balance": pool.config.balance,
        "accepted": pool.accepted,
        "active": pool.active,
        "refused": pool.refused,
        "resource_errors": pool.resourceErrors,
        "bad_proxy_headers": pool.badHeaders,
        "denied": pool.admission.denied,
        "client_limited": pool.admission.limited,
        "serving": pool.admission.serving,
        "max_connections": pool.config.protection.maxConnections or None,
        "queue": {
            "waiting": len(pool.admission.queue),
            "max_waiting": pool.admission.maxQueued,
            "limit": pool.config.protection.maxQueue,
            "total": pool.admission.queuedTotal,
            "full": pool.admission.queueFull,
            "timeouts": pool.admission.queueTimeouts,
        },
        "backends": [backendStatus(b, now) for b in pool.backends],
    }
    discovered = pool.discovered
    if discovered:
        document["dns"] = [discoveryStatus(member, now) for member in discovered]
    if pool.routes:
        for b, shown in zip(pool.backends, document["backends"], strict=True):
            shown["route"] = b.route
        document["routes"] = [
            {
                "name": group.name,
                "names": list(group.names),
                "balance": (pool.config.balance if group is pool.default
                            else _routeBalance(pool, group.name)),
                "sessions": group.routed,
                "backends": [redactEndpoint(b.label) for b in group.backends],
            }
            for group in pool.groups
        ]
    return document


def _routeBalance(pool: BackendPool, name: str) -> str:
    for route in pool.config.routes:
        if route.name == name:
            return route.balance
    return ""


class _Collector:
    """
    A Prometheus collector reading the counters of a L{StatusView} at each
    scrape.
    """

    def __init__(self, view: StatusView) -> None:
        self._view = view

    def collect(self) -> Iterator[Any]:
        view = self._view
        now = view.clock.seconds()
        proxyLabels = ["proxy"]
        backendLabels = ["proxy", "backend"]
        accepted = CounterMetricFamily(
            "sockproxy_accepted", "Client connections accepted.", labels=proxyLabels
        )
        refused = CounterMetricFamily(
            "sockproxy_refused",
            "Client connections closed because no backend was available.",
            labels=proxyLabels,
        )
        active = GaugeMetricFamily(
            "sockproxy_active_sessions", "Sessions open now.", labels=proxyLabels
        )
        resourceErrors = CounterMetricFamily(
            "sockproxy_resource_errors",
            "Client connections closed because the proxy ran out of descriptors or "
            "memory while connecting to a backend.",
            labels=proxyLabels,
        )
        badHeaders = CounterMetricFamily(
            "sockproxy_bad_proxy_headers",
            "Client connections closed on a PROXY protocol listener for a missing, late or "
            "malformed header.",
            labels=proxyLabels,
        )
        denied = CounterMetricFamily(
            "sockproxy_denied", "Client connections closed by an access rule.",
            labels=proxyLabels,
        )
        limited = CounterMetricFamily(
            "sockproxy_client_limited",
            "Client connections closed by a per-client limit (sessions or rate).",
            labels=proxyLabels,
        )
        queueWaiting = GaugeMetricFamily(
            "sockproxy_queue_waiting", "Clients waiting in the queue now.", labels=proxyLabels
        )
        queueRefused = CounterMetricFamily(
            "sockproxy_queue_refused",
            "Clients closed because the queue was full or they waited queue-timeout.",
            labels=proxyLabels + ["why"],
        )
        drainClosed = CounterMetricFamily(
            "sockproxy_backend_drain_closed",
            "Sessions closed at a draining backend's deadline.",
            labels=backendLabels,
        )
        closedAtAccept = CounterMetricFamily(
            "sockproxy_closed_at_accept",
            "Client connections closed at accept by the process for lack of descriptors.",
            value=view.closedAtAccept(),
        )
        bActive = GaugeMetricFamily(
            "sockproxy_backend_active_sessions",
            "Sessions assigned to the backend now, including those connecting.",
            labels=backendLabels,
        )
        connected = CounterMetricFamily(
            "sockproxy_backend_connects", "Successful connects.", labels=backendLabels
        )
        failed = CounterMetricFamily(
            "sockproxy_backend_connect_failures",
            "Failed connects (refused, timed out, unresolvable).",
            labels=backendLabels,
        )
        bytesIn = CounterMetricFamily(
            "sockproxy_backend_received_bytes",
            "Bytes received from the backend (relayed to clients).",
            labels=backendLabels,
        )
        bytesOut = CounterMetricFamily(
            "sockproxy_backend_sent_bytes",
            "Bytes sent to the backend (received from clients).",
            labels=backendLabels,
        )
        up = GaugeMetricFamily(
            "sockproxy_backend_up", "1 if the backend takes new sessions.", labels=backendLabels
        )
        state = GaugeMetricFamily(
            "sockproxy_backend_state",
            "1 for the backend's current state: up, failing, unhealthy, draining or "
            "maintenance.",
            labels=backendLabels + ["state"],
        )
        checkUp = GaugeMetricFamily(
            "sockproxy_backend_check_up",
            "1 if the backend's health check says up, 0 if down; only for backends "
            "with a health check.",
            labels=backendLabels,
        )
        checks = CounterMetricFamily(
            "sockproxy_backend_checks", "Health checks done.", labels=backendLabels
        )
        checkFailures = CounterMetricFamily(
            "sockproxy_backend_check_failures", "Health checks failed.", labels=backendLabels
        )
        build = GaugeMetricFamily(
            "sockproxy_build_info", "The versions running: always 1.",
            labels=list(VERSIONS),
        )
        build.add_metric(list(VERSIONS.values()), 1)
        routed = CounterMetricFamily(
            "sockproxy_route_sessions",
            "Sessions sent to a route by their TLS server name (\"default\": no route "
            "matched); only for proxies with routes.",
            labels=["proxy", "route"],
        )
        for pool in view.pools.values():
            proxy = redactEndpoint(pool.name, server=True)
            if pool.routes:
                for group in pool.groups:
                    routed.add_metric([proxy, group.name], group.routed)
            accepted.add_metric([proxy], pool.accepted)
            refused.add_metric([proxy], pool.refused)
            resourceErrors.add_metric([proxy], pool.resourceErrors)
            badHeaders.add_metric([proxy], pool.badHeaders)
            admission = pool.admission
            denied.add_metric([proxy], admission.denied)
            limited.add_metric([proxy], admission.limited)
            queueWaiting.add_metric([proxy], len(admission.queue))
            queueRefused.add_metric([proxy, "full"], admission.queueFull)
            queueRefused.add_metric([proxy, "timeout"], admission.queueTimeouts)
            active.add_metric([proxy], pool.active)
            for b in pool.backends:
                labels = [proxy, redactEndpoint(b.label)]
                bActive.add_metric(labels, b.active)
                drainClosed.add_metric(labels, b.drainClosed)
                connected.add_metric(labels, b.connected)
                failed.add_metric(labels, b.failed)
                bytesIn.add_metric(labels, b.bytesIn)
                bytesOut.add_metric(labels, b.bytesOut)
                current = b.stateAt(now)
                up.add_metric(labels, 1 if current == UP else 0)
                for name in STATES:
                    state.add_metric(labels + [name], 1 if name == current else 0)
                if b.health is not None:
                    checkUp.add_metric(labels, 0 if b.checkDown else 1)
                    checks.add_metric(labels, b.health.checks)
                    checkFailures.add_metric(labels, b.health.failures)
        yield from (build, accepted, refused, resourceErrors, badHeaders, denied, limited,
                    queueWaiting,
                    queueRefused, closedAtAccept, active, bActive, connected, failed, bytesIn,
                    bytesOut, up, state, routed, drainClosed, checkUp, checks, checkFailures)


def statisticsLabel(label: str) -> str:
    """
    C{label} as it is written in the counter names of C{/server-statistics}:
    each C{%}, whitespace or control character (a newline would split the
    line) as C{%XX} of its UTF-8 bytes, and so is a dot that would leave a
    part of the name empty (at the start or end of C{label}, or after
    another dot): C{.} is C{%2E}, C{..} C{%2E%2E}, C{a..b} C{a.%2Eb}.
    Other labels, such as C{db1.example} or an endpoint string, are kept.
    """
    out = []
    for i, c in enumerate(label):
        if c == "." and (i == 0 or i == len(label) - 1 or label[i - 1] == "."):
            out.append("%2E")
        elif c == "%" or c.isspace() or not c.isprintable():
            out.append("".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")))
        else:
            out.append(c)
    return "".join(out)


def serverStatistics(view: StatusView) -> str:
    """
    lighttpd's mod_status C{statistics-url} text, with its counter names, so
    that existing scrapers keep working: one C{name: value} a line, backend
    labels written by L{statisticsLabel}.

    Backends with the same label in several proxies are summed, as lighttpd
    merges hosts that share a label.
    """
    counters: dict[str, int] = {}

    def add(name: str, value: int) -> None:
        counters[name] = counters.get(name, 0) + value

    add("sockproxy.requests", 0)
    add("gw.active-requests", 0)
    for pool in view.pools.values():
        for b in pool.backends:
            label = statisticsLabel(redactEndpoint(b.label))
            add("sockproxy.requests", b.connected)
            add("gw.active-requests", b.active)
            add(f"gw.backend.{label}.load", b.active)
            add(f"gw.backend.{label}.0.connected", b.connected)
            add(f"gw.backend.{label}.0.died", b.failed)
            add(f"gw.backend.{label}.0.overloaded", 0)
            # Every failure disables the backend for its disable-time.
            add(f"gw.backend.{label}.0.disabled", b.failed)
            add(f"gw.backend.{label}.0.load", b.active)
    # lighttpd sorts by key length, then by key.
    return "".join(
        f"{name}: {value}\n" for name, value in sorted(counters.items(), key=lambda i: (len(i[0]), i[0]))
    )


_CSS = """
body { font-family: sans-serif; margin: 1.2em 1.5em; color: #222; background: #fff; }
h1 { margin: 0 0 0.2em; font-size: 1.5em; }
h2 { margin: 1.4em 0 0.3em; font-size: 1.2em; }
h2 small { font-weight: normal; color: #555; font-size: 0.8em; }
p.meta, p.legend { margin: 0.2em 0; color: #444; }
table { border-collapse: collapse; margin: 0.4em 0 0.8em; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 0.15em 0.45em; text-align: right; }
td { white-space: nowrap; }
th { background: #e8ecf2; font-weight: 600; text-align: center; }
thead tr:first-child th { background: #d5dce8; }
td.text { text-align: left; }
td.check small { display: block; max-width: 22em; overflow: hidden; text-overflow: ellipsis; }
td.none { color: #999; text-align: center; }
td.hot { background: #fde3c4; }
td small { color: #555; }
tbody tr:nth-child(even) td { background-color: #f7f7f7; }
td.state, span.state { font-weight: 600; white-space: nowrap; }
.st-up { background: #c8efc8 !important; color: #145214; }
.st-failing, .st-unhealthy { background: #f7b9b9 !important; color: #7a0c0c; }
.st-draining { background: #ffe08a !important; color: #5c4300; }
.st-maintenance { background: #c9d3e6 !important; color: #1f3358; }
span.state { padding: 0 0.4em; border-radius: 3px; }
div.sparks { display: flex; gap: 2em; margin: 0.3em 0; }
figure { margin: 0; }
figcaption { font-size: 0.8em; color: #444; }
svg.spark { display: block; background: #f4f6fa; border: 1px solid #d5dce8; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}">
<title>sockproxy status</title>
<style>{css}</style></head><body>
<h1>sockproxy status</h1>
{header}
{proxies}
</body></html>
"""

#: How the page names each state, and what the legend says of it.
_STATE_WORDS = {
    UP: ("up", "takes new sessions"),
    FAILING: ("failing", "a connect failed: out of rotation for its disable-time"),
    CHECKED_DOWN: ("unhealthy", "its health checks fail"),
    DRAINING: ("draining", "an operator's drain: no new sessions, open ones go on"),
    MAINTENANCE: ("maintenance", "an operator's disable: no new sessions"),
}

_SPARK_WIDTH = 240
_SPARK_HEIGHT = 36


def humanBytes(count: float) -> str:
    """
    C{count} bytes in binary units: C{"512 B"}, C{"1.5 KiB"}, C{"20.0 MiB"}.
    """
    if count < 1024:
        return f"{count:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        count /= 1024
        if count < 1024 or unit == "TiB":
            break
    return f"{count:.1f} {unit}"


def humanDuration(seconds: float) -> str:
    """
    C{seconds} in the two largest units that matter: C{"42 s"},
    C{"3 min 2 s"}, C{"5 h 1 min"}, C{"12 d 3 h"}.
    """
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def _perSecond(rate: float) -> str:
    return f"{rate:.1f}" if rate < 10 else f"{rate:.0f}"


def _since(value: float, now: float) -> float:
    # A check's last change as a reactor time, or as the seconds since it.
    return now - value if value > 1e9 else value


def sparkline(values: list[float], colour: str, title: str) -> str:
    """
    An inline SVG line of C{values} (the newest at the right edge), scaled
    to their highest.
    """
    step = _SPARK_WIDTH / (POINTS - 1)
    top = max(values, default=0.0) or 1.0
    scale = (_SPARK_HEIGHT - 4) / top
    n = len(values)
    points = " ".join(
        f"{_SPARK_WIDTH - (n - 1 - i) * step:.1f},{_SPARK_HEIGHT - 2 - v * scale:.1f}"
        for i, v in enumerate(values)
    )
    shape = ""
    if n > 1:
        left = _SPARK_WIDTH - (n - 1) * step
        shape = (f'<polygon points="{left:.1f},{_SPARK_HEIGHT} {points} '
                 f'{_SPARK_WIDTH},{_SPARK_HEIGHT}" fill="{colour}" fill-opacity="0.2"/>'
                 f'<polyline points="{points}" fill="none" stroke="{colour}" '
                 'stroke-width="1.5"/>')
    return (f'<svg class="spark" width="{_SPARK_WIDTH}" '
            f'height="{_SPARK_HEIGHT}" viewBox="0 0 {_SPARK_WIDTH} {_SPARK_HEIGHT}" '
            f'role="img"><title>{html.escape(title)}</title>{shape}</svg>')


def _state(b: Mapping[str, Any]) -> tuple[str, str]:
    # The state's class and words on the page.
    state = b["state"]
    check = b.get("check")
    if state == UP and check and check.get("state") == "down":
        state = CHECKED_DOWN
    words = _STATE_WORDS.get(state, (state, ""))[0]
    if state == FAILING and b.get("retry_in") is not None:
        words = f"failing (retry in {math.ceil(b['retry_in'])} s)"
    return state, words


def _checkCell(check: Optional[Mapping[str, Any]], now: float) -> str:
    e = html.escape
    if not check:
        return '<td class="check none">–</td>'
    state = str(check.get("state", ""))
    since = humanDuration(_since(float(check.get("last_change") or 0), now))
    result = str(check.get("last_result", ""))
    return (f'<td class="check text" title="{e(result)}">'
            f'<span class="state st-{"up" if state == "up" else "unhealthy"}">{e(state)}</span>'
            f' for {since}<small>{e(result[:60])} · {check.get("checks", 0)} checks, '
            f'{check.get("failures", 0)} failed</small></td>')


def _number(value: Any, cls: str = "") -> str:
    attribute = f' class="{cls}"' if cls else ""
    if value is None:
        return f'<td class="none {cls}">–</td>' if cls else '<td class="none">–</td>'
    return f"<td{attribute}>{value}</td>"


def _bytes(count: float, cls: str) -> str:
    return f'<td class="{cls}" title="{count} bytes">{humanBytes(count)}</td>'


_BACKEND_HEAD = (
    "<th rowspan=\"2\">backend</th><th rowspan=\"2\">endpoint</th><th rowspan=\"2\">state</th>"
    "<th rowspan=\"2\">health check</th><th rowspan=\"2\">weight</th>"
    "<th colspan=\"3\">sessions</th><th colspan=\"2\">sessions/s</th>"
    "<th colspan=\"3\">bytes from / to backend</th><th colspan=\"2\">errors</th>"
    "<th rowspan=\"2\">last error</th></tr>\n<tr>"
    "<th>now</th><th>limit</th><th>total</th><th>now</th><th>max</th>"
    "<th>from</th><th>to</th><th>per s</th>"
    "<th title=\"failed connects\">failed</th>"
    "<th title=\"sessions closed at a drain's deadline\">drained</th></tr>"
)

_PROXY_HEAD = (
    "<tr><th colspan=\"3\">queue</th><th colspan=\"2\">sessions/s</th>"
    "<th colspan=\"4\">sessions</th><th colspan=\"3\">bytes from / to clients</th>"
    "<th colspan=\"7\">clients closed</th></tr>\n<tr>"
    "<th>now</th><th>max</th><th>limit</th><th>now</th><th>max</th>"
    "<th>now</th><th>serving</th><th>limit</th><th>total</th>"
    "<th>from</th><th>to</th><th>per s</th>"
    "<th>no backend</th><th>denied</th><th>client limit</th><th>queue full</th>"
    "<th>queue timeout</th><th>bad PROXY</th><th>no resources</th></tr>"
)


def _backendRow(b: Mapping[str, Any], routes: bool, now: float) -> str:
    e = html.escape
    state, words = _state(b)
    rates = b["rates"]
    limit = b.get("max_connections")
    full = limit is not None and b["active"] >= limit
    route = f'<td class="text route">{e(b["route"])}</td>' if routes else ""
    return (
        f'<tr class="{e(b["state"])}">{route}<td class="text">{e(b["label"])}</td>'
        f'<td class="text">{e(b["endpoint"])}</td>'
        f'<td class="state text st-{e(state)}">{e(words)}</td>'
        + _checkCell(b.get("check"), now)
        + f'<td>{b["weight"]}</td>'
        f'<td class="active{" hot" if full else ""}">{b["active"]}</td>'
        + _number(limit)
        + f'<td class="connected">{b["connected"]}</td>'
        f'<td>{_perSecond(rates["sessions"])}</td><td>{_perSecond(rates["max_sessions"])}</td>'
        + _bytes(b["bytes_in"], "bytes-in") + _bytes(b["bytes_out"], "bytes-out")
        + f'<td>{humanBytes(rates["bytes"])}/s</td>'
        f'<td class="failed">{b["failed"]}</td><td>{b["drain_closed"]}</td>'
        f'<td class="text">{e(b["last_error"])}</td></tr>'
    )


def _proxyRow(proxy: Mapping[str, Any]) -> str:
    queue = proxy["queue"]
    rates = proxy["rates"]
    fromClients = sum(b["bytes_out"] for b in proxy["backends"])
    toClients = sum(b["bytes_in"] for b in proxy["backends"])
    limit = proxy["max_connections"]
    full = limit is not None and proxy["serving"] >= limit
    return (
        f'<tr><td class="queue{" hot" if queue["waiting"] else ""}">{queue["waiting"]}</td>'
        f'<td>{queue["max_waiting"]}</td>'
        + _number(queue["limit"] or None)
        + f'<td>{_perSecond(rates["sessions"])}</td><td>{_perSecond(rates["max_sessions"])}</td>'
        f'<td class="active">{proxy["active"]}</td>'
        f'<td class="serving{" hot" if full else ""}">{proxy["serving"]}</td>'
        + _number(limit)
        + f'<td class="accepted">{proxy["accepted"]}</td>'
        + _bytes(fromClients, "bytes-from-clients") + _bytes(toClients, "bytes-to-clients")
        + f'<td>{humanBytes(rates["bytes"])}/s</td>'
        f'<td class="refused">{proxy["refused"]}</td>'
        f'<td class="denied">{proxy["denied"]}</td>'
        f'<td class="client-limited">{proxy["client_limited"]}</td>'
        f'<td class="queue-full">{queue["full"]}</td>'
        f'<td class="queue-timeouts">{queue["timeouts"]}</td>'
        f'<td class="bad-proxy-headers">{proxy["bad_proxy_headers"]}</td>'
        f'<td class="resource-errors">{proxy["resource_errors"]}</td></tr>'
    )


def _sparks(proxy: Mapping[str, Any], rate: Optional[Rate]) -> str:
    history = list(rate.history) if rate is not None else []
    minutes = POINTS * POINT_SAMPLES * INTERVAL / 60
    rates = proxy["rates"]
    figures = []
    for index, what, colour, show in (
        (0, "sessions/s", "#1f5fbf", _perSecond),
        (1, "bytes/s", "#2e7d32", humanBytes),
    ):
        values = [point[index] for point in history]
        top = max(values, default=0.0)
        figures.append(
            "<figure>"
            + sparkline(values, colour, f"{what} over the last {minutes:g} min, "
                                         f"{POINT_SAMPLES * INTERVAL:g} s averages")
            + f"<figcaption>{what}: now {show(rates['sessions' if index == 0 else 'bytes'])}, "
            f"highest {POINT_SAMPLES * INTERVAL:g} s average in {minutes:g} min "
            f"{show(top)}</figcaption></figure>"
        )
    return '<div class="sparks">' + "".join(figures) + "</div>\n"


def statusPage(
    view: StatusView, refresh: int = 5, document: Optional[Mapping[str, Any]] = None
) -> str:
    """
    The HTML status page: the versions and uptime, then for every proxy
    sparklines of its session and byte rates, a row of its counters, and a
    table of its backends.

    @param document: what to show, by default L{statusDocument}C{(view)};
        the rates' history is C{view}'s.
    """
    e = html.escape
    if document is None:
        document = statusDocument(view)
    now = view.clock.seconds()
    sections = []
    names = list(view.pools)
    for index, proxy in enumerate(document["proxies"]):
        rate = view.rates.rate((names[index],)) if index < len(names) else None
        routes = proxy.get("routes")
        rows = [_backendRow(b, bool(routes), now) for b in proxy["backends"]]
        routeText = ""
        if routes:
            routeText = "<p>routes: " + "; ".join(
                f'{e(r["name"])} ({e(", ".join(r["names"]) or "no route matched")}): '
                f'<b class="route-sessions" data-route="{e(r["name"])}">{r["sessions"]}</b> '
                "sessions"
                for r in routes
            ) + "</p>\n"
        sections.append(
            f'<h2>proxy {e(proxy["name"])} <small>listen: {e(", ".join(proxy["listen"]))}; '
            f'balance: {e(proxy["balance"])}</small></h2>\n'
            + _sparks(proxy, rate)
            + routeText
            + f'<table class="summary" data-summary="{e(proxy["name"])}"><thead>{_PROXY_HEAD}'
            f"</thead>\n<tbody>{_proxyRow(proxy)}</tbody></table>\n"
            + f'<table data-proxy="{e(proxy["name"])}"><thead><tr>'
            + ('<th rowspan="2">route</th>' if routes else "")
            + _BACKEND_HEAD + "</thead>\n<tbody>"
            + "\n".join(rows)
            + "</tbody></table>"
        )
    legend = " ".join(
        f'<span class="state st-{state}" title="{e(meaning)}">{e(words)}</span>'
        for state, (words, meaning) in _STATE_WORDS.items()
    )
    header = (
        f'<p class="meta">txsockproxy <b class="version">{e(document["version"])}</b> · '
        f'Twisted {e(document["twisted"])} · Python {e(document["python"])} · '
        f'up <b class="uptime">{humanDuration(document["uptime"])}</b> · '
        f'closed at accept (no descriptors) {document["closed_at_accept"]}</p>\n'
        f'<p class="legend">states: {legend} · refreshes every {refresh} s · '
        'also <a href="status.json">status.json</a>, <a href="metrics">metrics</a>, '
        '<a href="server-statistics">server-statistics</a></p>'
    )
    return _PAGE.format(refresh=refresh, css=_CSS, header=header,
                        proxies="\n".join(sections))


class _Page(Resource):
    isLeaf = True

    def __init__(self, view: StatusView) -> None:
        super().__init__()
        self._view = view

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return statusPage(self._view).encode("utf-8")


class _JSON(Resource):
    isLeaf = True

    def __init__(self, view: StatusView) -> None:
        super().__init__()
        self._view = view

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(statusDocument(self._view), indent=1).encode("utf-8")


class _Metrics(Resource):
    """
    Prometheus text exposition, rendered in the reactor thread (the
    collector only reads counters; prometheus_client's own Twisted resource
    would run it in a thread pool).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


class _Statistics(Resource):
    isLeaf = True

    def __init__(self, view: StatusView) -> None:
        super().__init__()
        self._view = view

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return serverStatistics(self._view).encode("utf-8")


ACTIONS = {"drain": DRAINING, "disable": MAINTENANCE, "enable": UP}


class RefusalLog:
    """
    The warnings of refused requests and connections, at most C{lines} of
    them in an C{interval} of seconds (from the first warning of the
    interval). Those beyond are counted, and one line at the end of the
    interval says how many of each kind were left out, so that a flood of
    refusals cannot fill the disk.

    @ivar suppressed: for each kind, how many warnings were left out in this
        interval so far.
    """

    log = Logger(namespace="txsockproxy.status")

    def __init__(
        self, clock: IReactorTime, lines: int = LOG_LINES, interval: float = LOG_INTERVAL
    ) -> None:
        self._clock = clock
        self.lines = lines
        self.interval = interval
        self._intervalEnd = float("-inf")
        self._logged = 0
        self.suppressed: dict[str, int] = {}
        self._summary: Optional[IDelayedCall] = None

    def warn(self, log: Logger, kind: str, format: str, **fields: Any) -> None:
        """
        Log C{format} with C{fields} as a warning through C{log}, unless
        C{lines} were logged already in this interval: then count it under
        C{kind} (a plural noun: "admin requests").
        """
        now = self._clock.seconds()
        if now >= self._intervalEnd:
            self.flush()
            self._intervalEnd = now + self.interval
            self._logged = 0
        if self._logged < self.lines:
            self._logged += 1
            log.warn(format, **fields)
            return
        self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
        if self._summary is None:
            self._summary = self._clock.callLater(self._intervalEnd - now, self.flush)

    def flush(self) -> None:
        """
        Log how many warnings were left out, if any, now.
        """
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
        self._summary = None
        if self.suppressed:
            self.log.warn(
                "status: {count} more refusals suppressed in {interval} s: {kinds}",
                count=sum(self.suppressed.values()), interval=self.interval,
                kinds=", ".join(f"{n} {kind}" for kind, n in self.suppressed.items()),
            )
            self.suppressed = {}


def _client(address: Optional[IAddress]) -> str:
    return str(getattr(address, "host", None) or address)


class _Admin(Resource):
    """
    C{POST /backends/<proxy>/<label>/drain|disable|enable}, with
    C{Authorization: Bearer <token>}. Every action is logged, and every
    refusal, at the rate L{RefusalLog} allows.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, view: StatusView, refusals: RefusalLog) -> None:
        super().__init__()
        self._view = view
        self._refusals = refusals

    def _reply(self, request: Request, code: int, document: dict[str, Any]) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return (json.dumps(document) + "\n").encode("utf-8")

    def _refuse(
        self, request: Request, code: int, why: str, document: dict[str, Any], **fields: Any
    ) -> bytes:
        self._refusals.warn(
            self.log, "admin requests",
            "status: admin request from {client} refused: " + why + " ({code})",
            client=_client(request.getClientAddress()), code=code, **fields,
        )
        return self._reply(request, code, document)

    def render(self, request: Request) -> bytes:
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            method = request.method.decode("latin-1")[:20]
            return self._refuse(request, 405, "{method} is not POST", {"error": "use POST"},
                                method=method)
        return self.render_POST(request)

    def render_POST(self, request: Request) -> bytes:
        who = _client(request.getClientAddress())
        token = self._view.adminToken
        if not token:
            return self._refuse(request, 403, "no admin-token-file configured", {
                "error": "admin actions are disabled: set [status] admin-token-file"})
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            request.setHeader(b"www-authenticate", b'Bearer realm="sockproxy"')
            return self._refuse(request, 401, "no bearer token",
                                {"error": "needs Authorization: Bearer <token>"})
        if not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
            return self._refuse(request, 403, "wrong token", {"error": "wrong token"})
        parts = [p.decode("utf-8", "replace") for p in request.postpath or []]
        if len(parts) != 3:
            return self._refuse(request, 404, "no such action {path!r}", {
                "error": "use POST /backends/<proxy>/<label>/drain|disable|enable"},
                path="/".join(parts)[:200])
        proxyName, label, action = parts
        if action not in ACTIONS:
            return self._refuse(request, 400, "unknown action {action!r}", {
                "error": f"unknown action {action!r}: drain, disable or enable"},
                action=action[:50])
        pool: Optional[BackendPool] = self._view.pools.get(proxyName)
        if pool is None:
            return self._refuse(request, 404, "no proxy {proxy!r}",
                                {"error": f"no proxy {proxyName!r}"}, proxy=proxyName[:200])
        backend = pool.backend(label)
        if backend is None:
            return self._refuse(
                request, 404, "proxy {proxy!r} has no backend {label!r}",
                {"error": f"proxy {proxyName!r} has no backend {label!r}"},
                proxy=proxyName[:200], label=label[:200])
        timeout: Optional[float] = None
        raw = (request.args or {}).get(b"timeout")
        if raw:
            text = raw[0].decode("latin-1")[:30]
            try:
                timeout = float(text)
                if not (timeout >= 0 and timeout < 1e9):
                    raise ValueError(text)
            except ValueError:
                return self._refuse(request, 400, "bad timeout {value!r}", {
                    "error": "timeout must be a number of seconds, 0 or more"}, value=text)
            if action != "drain":
                return self._refuse(request, 400, "timeout with {action!r}", {
                    "error": "timeout applies to drain only"}, action=action)
        pool.setAdminState(backend, ACTIONS[action], timeout)
        self.log.info(
            "status: {client} set backend {label} of proxy {proxy} to {state}{deadline}",
            client=who, label=label, proxy=proxyName, state=backend.adminState,
            deadline="" if timeout is None else f" (sessions closed after {timeout:g}s)",
        )
        return self._reply(request, 200, backendStatus(backend, self._view.clock.seconds()))


class StatusRoot(Resource):
    """
    The root resource of the status site.

    @ivar view: what it shows.
    @ivar refusals: the refusal log shared by the admin actions and the site.
    """

    def __init__(self, view: StatusView) -> None:
        super().__init__()
        self.view = view
        self.refusals = RefusalLog(view.clock)


_siteLog = Logger(namespace="txsockproxy.status.StatusSite")


def _tooLarge(limit: int) -> bytes:
    body = (json.dumps({"error": f"request bodies are limited to {limit} bytes"}) + "\n").encode()
    return (b"HTTP/1.1 413 Content Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))


class _StatusRequest(Request):
    """
    A request whose body is kept in memory, and refused as soon as it grows
    beyond the site's C{maxBodySize}: Twisted's own spools a large or chunked
    body to a temporary file before the resource (and its authentication)
    sees it.
    """

    _body: BytesIO

    def gotLength(self, length: Optional[int]) -> None:
        # The channel refused a declared length over the limit already.
        self.content = self._body = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if not isinstance(channel, _StatusChannel) or channel.closing:
            return
        if self._body.tell() + len(data) > channel.site.maxBodySize:
            channel.refuseBody(None)
            return
        self._body.write(data)


class _StatusChannel(HTTPChannel):
    """
    An HTTP connection to the status site: counted in the site's
    C{openConnections}; refused with 413 when its request's body is over
    the site's C{maxBodySize}; closed when it has not sent a whole request
    within the site's C{requestTimeout} seconds of opening or of its
    previous request's end (which also closes idle keep-alive connections);
    reset when it has written over the site's C{maxUnsent} bytes while its
    transport's buffer is full.

    @ivar closing: whether it is being closed, and reads nothing more.
    """

    site: StatusSite
    closing = False
    _deadline: Optional[IDelayedCall] = None
    _abort: Optional[IDelayedCall] = None
    # Whether bytes of a request not yet complete were received.
    _partial = False
    # Whether the transport said its buffer is full (and not yet that it was
    # drained), and the bytes written since.
    _full = False
    _unsent = 0

    def _transport(self) -> ITCPTransport:
        # Any stream transport: TCP, unix, TLS.
        return cast(ITCPTransport, self.transport)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.openConnections += 1
        self._startDeadline()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.site.openConnections -= 1
        self._cancelDeadline()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self._partial = True
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > self.site.maxBodySize:
            self.refuseBody(self.length)
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if self.closing:
            return
        self._partial = False
        self._cancelDeadline()
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        # Before HTTPChannel goes on to a pipelined request, if there is one.
        self._startDeadline()
        super().requestDone(request)

    def pauseProducing(self) -> None:
        self._full = True
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self._full = False
        self._unsent = 0
        super().resumeProducing()

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes,
                     headers: Any) -> None:
        super().writeHeaders(version, code, reason, headers)
        # The status line and headers as HTTPChannel writes them.
        size = len(version) + len(code) + len(reason) + 4
        for name, values in headers.getAllRawHeaders():
            size += sum(len(name) + len(value) + 4 for value in values)
        self._wrote(size)

    def write(self, data: bytes) -> None:
        super().write(data)
        self._wrote(len(data))

    def writeSequence(self, iovec: list[bytes]) -> None:
        super().writeSequence(iovec)
        self._wrote(sum(map(len, iovec)))

    def _wrote(self, size: int) -> None:
        # HTTPChannel stops reading when the transport is full only between
        # requests, and answers the pipelined requests it has read at once:
        # answered synchronously, they leave no time between them, and the
        # answers to a client that sends requests and reads none pile up in
        # memory. Such a client is reset instead.
        if not self._full or self.closing:
            return
        self._unsent += size
        site = self.site
        if self._unsent <= site.maxUnsent:
            return
        site.unreadClosed += 1
        self._refused(
            "clients not reading",
            "status: connection from {client} reset: over {limit} bytes of answers unread "
            "({count} reset so far)",
            limit=site.maxUnsent, count=site.unreadClosed,
        )
        self.closing = True
        self._cancelDeadline()
        # Disconnecting, it answers none of the requests read but not yet
        # answered; reset, it drops what it holds for the client.
        if not getattr(self.transport, "disconnecting", False):
            self.loseConnection()
        self._transport().abortConnection()

    def _refused(self, kind: str, format: str, **kwargs: Any) -> None:
        # One of the site's refusals of this client, logged at its bounded
        # rate (see RefusalLog).
        self.site.refusals.warn(
            _siteLog, kind, format, client=_client(self._transport().getPeer()), **kwargs
        )

    def refuseBody(self, length: Optional[int]) -> None:
        """
        Answer 413 and close, reading nothing more.

        @param length: the body's declared length, or L{None} for a chunked
            body found over the limit as it came.
        """
        site = self.site
        site.refusedBodies += 1
        size = f"{length}-byte" if length is not None else "chunked"
        self._refused(
            "request bodies",
            "status: request from {client} refused (413): {size} body, over the limit of "
            "{limit} bytes ({count} refused so far)",
            size=size, limit=site.maxBodySize, count=site.refusedBodies,
        )
        self._transport().write(_tooLarge(site.maxBodySize))
        self._close()

    def _close(self) -> None:
        self.closing = True
        self._cancelDeadline()
        # Closing already after a response without keep-alive.
        if not getattr(self.transport, "disconnecting", False):
            self.loseConnection()
        # A client that does not read its answer is reset after a while.
        self._abort = self.site.reactor.callLater(ABORT_TIMEOUT,
                                                 self._transport().abortConnection)

    def _startDeadline(self) -> None:
        self._cancelDeadline()
        if not self.closing:
            self._deadline = self.site.reactor.callLater(self.site.requestTimeout, self._timedOut)

    def _cancelDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _timedOut(self) -> None:
        self._deadline = None
        if self._partial:
            site = self.site
            site.timedOut += 1
            self._refused(
                "slow requests",
                "status: connection from {client} closed: no whole request within {timeout} s "
                "({count} closed so far)",
                timeout=site.requestTimeout, count=site.timedOut,
            )
        # An idle keep-alive connection is closed without a word.
        self._close()


class _Head(Resource):
    """
    The answer to C{HEAD} of a resource: the status and headers of its
    C{GET} answer, with that answer's C{Content-Length}, and no body.
    Twisted's own C{HEAD} renders C{GET} too, and logs a line each time for
    the body it drops.
    """

    isLeaf = True

    def __init__(self, resource: Resource) -> None:
        super().__init__()
        self._resource = resource

    def render(self, request: Request) -> Any:
        body = self._resource.render(request)
        if not isinstance(body, bytes):
            # NOT_DONE_YET: the body written later is dropped by the request.
            return body
        request.setHeader(b"content-length", b"%d" % (len(body),))
        return b""


class _Refused(Protocol):
    """
    A connection over the status site's limit: closed at once.
    """

    def connectionMade(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]


class StatusSite(Site):
    """
    The status endpoint's site: scrapes are not worth a log line each (admin
    actions are logged by themselves), and tracebacks are not shown. C{HEAD}
    of any path answers the headers C{GET} would, without a body nor a log
    line. While it listens, its view's rates are sampled.

    It holds the limits that keep it from taking the relay's file
    descriptors, memory and disk.

    @ivar maxConnections: connections open at once; more are closed at once.
    @ivar requestTimeout: seconds a connection has for each whole request.
    @ivar maxBodySize: the largest request body, in bytes.
    @ivar maxUnsent: bytes of answers a connection may write while its
        transport's buffer is full; beyond it is reset.
    @ivar refusals: where refusals are logged.
    @ivar openConnections: connections open now.
    @ivar refusedConnections: connections closed at once for being over
        C{maxConnections}, ever.
    @ivar refusedBodies: requests refused for their body, ever.
    @ivar timedOut: connections closed in the middle of a request for being
        slower than C{requestTimeout}, ever.
    @ivar unreadClosed: connections reset for being over C{maxUnsent},
        ever.
    """

    noisy = False
    displayTracebacks = False
    protocol = _StatusChannel  # type: ignore[assignment]
    requestFactory = _StatusRequest

    def __init__(
        self,
        resource: Resource,
        reactor: Optional[IReactorTime] = None,
        maxConnections: int = MAX_CONNECTIONS,
        requestTimeout: float = REQUEST_TIMEOUT,
        maxBodySize: int = MAX_BODY_SIZE,
        refusals: Optional[RefusalLog] = None,
        maxUnsent: int = MAX_UNSENT,
    ) -> None:
        """
        @param reactor: the clock of the timeouts; by default its view's
            when C{resource} is a L{StatusRoot}.
        @param refusals: by default the L{StatusRoot}'s.
        """
        if reactor is None and isinstance(resource, StatusRoot):
            reactor = resource.view.clock
        # The idle timeout of HTTPChannel is reset by every byte received
        # (a client sending a byte now and then is never closed), and logs
        # every timeout: the request timeout replaces it.
        super().__init__(resource, reactor=reactor, timeout=None)
        self.maxConnections = maxConnections
        self.requestTimeout = requestTimeout
        self.maxBodySize = maxBodySize
        self.maxUnsent = maxUnsent
        if refusals is None:
            refusals = (resource.refusals if isinstance(resource, StatusRoot)
                        else RefusalLog(self.reactor))
        self.refusals = refusals
        # Sampled while the site listens.
        self._rates = resource.view.rates if isinstance(resource, StatusRoot) else None
        self.openConnections = 0
        self.refusedConnections = 0
        self.refusedBodies = 0
        self.timedOut = 0
        self.unreadClosed = 0

    def getResourceFor(self, request: Request) -> Resource:
        found: Resource = super().getResourceFor(request)
        if request.method == b"HEAD":
            return _Head(found)
        return found

    def buildProtocol(self, addr: IAddress) -> Protocol:  # type: ignore[override]
        if self.openConnections >= self.maxConnections:
            self.refusedConnections += 1
            self.refusals.warn(
                _siteLog, "connections over the limit",
                "status: connection from {client} refused: the limit of {limit} connections is "
                "reached ({count} refused so far)",
                client=_client(addr), limit=self.maxConnections, count=self.refusedConnections,
            )
            # Not None: a TLS or other wrapping factory would wrap None.
            return _Refused()
        protocol: Protocol = super().buildProtocol(addr)
        return protocol

    def startFactory(self) -> None:
        super().startFactory()
        if self._rates is not None:
            self._rates.start()

    def stopFactory(self) -> None:
        super().stopFactory()
        if self._rates is not None:
            self._rates.stop()
        self.refusals.flush()

    def log(self, request: Any) -> None:
        pass


def metricsRegistry(view: StatusView) -> CollectorRegistry:
    """
    The Prometheus registry of C{/metrics}: C{view}'s counters, and
    C{process_*} (CPU, memory, descriptors, start time) where C{/proc} has
    them. C{generate_latest(registry)} renders it.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(view))
    ProcessCollector(registry=registry)
    return registry


def adminAction(
    view: StatusView, proxyName: str, label: str, action: str, timeout: Optional[float] = None
) -> tuple[int, dict[str, Any]]:
    """
    Apply the admin action C{action} (C{drain}, C{disable}, C{enable}) to
    backend C{label} of proxy C{proxyName}, as C{POST
    /backends/PROXY/LABEL/ACTION} does once its token is checked.

    @return: the HTTP status code and JSON document of the answer: 200 and
        the backend's status, or an error.
    """
    if action not in ACTIONS:
        return 400, {"error": f"unknown action {action!r}: drain, disable or enable"}
    if timeout is not None and action != "drain":
        return 400, {"error": "timeout applies to drain only"}
    pool: Optional[BackendPool] = view.pools.get(proxyName)
    if pool is None:
        return 404, {"error": f"no proxy {proxyName!r}"}
    backend = pool.backend(label)
    if backend is None:
        return 404, {"error": f"proxy {proxyName!r} has no backend {label!r}"}
    pool.setAdminState(backend, ACTIONS[action], timeout)
    return 200, backendStatus(backend, view.clock.seconds())


def statusResource(view: StatusView) -> StatusRoot:
    """
    The root resource of the status endpoint, showing C{view}.
    """
    root = StatusRoot(view)
    page = _Page(view)
    root.putChild(b"", page)
    root.putChild(b"index.html", page)
    root.putChild(b"status.json", _JSON(view))
    root.putChild(b"metrics", _Metrics(metricsRegistry(view)))
    root.putChild(b"server-statistics", _Statistics(view))
    root.putChild(b"backends", _Admin(view, root.refusals))
    return root
