"""
The status web resource: an HTML page, JSON, Prometheus metrics, lighttpd-style
statistics, and the admin actions (drain, disable, enable a backend).
Endpoint strings are shown without the paths of keys and certificates.

Everything here only reads the counters kept by the pools and backends, except
the admin actions, which set a backend's administrative state.
"""

from __future__ import annotations

import hmac
import html
import json
from typing import TYPE_CHECKING, Any, Iterator, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from txsockproxy.backends import DOWN, DRAINING, STATES, UP, Backend, BackendPool

if TYPE_CHECKING:
    from txsockproxy.service import ProxyService

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


def backendStatus(backend: Backend, now: float) -> dict[str, Any]:
    """
    One backend as C{/status.json} shows it.
    """
    return {
        "label": redactEndpoint(backend.label),
        "endpoint": redactEndpoint(backend.key),
        "state": backend.stateAt(now),
        "weight": backend.weight,
        "active": backend.active,
        "connected": backend.connected,
        "failed": backend.failed,
        "bytes_in": backend.bytesIn,
        "bytes_out": backend.bytesOut,
        "last_error": backend.lastError,
    }


def statusDocument(service: ProxyService) -> dict[str, Any]:
    """
    The whole C{/status.json} document. Endpoint strings, and the names and
    labels that default to them, are shown by L{redactEndpoint}.
    """
    now = service.reactor.seconds()
    return {
        "proxies": [
            {
                "name": redactEndpoint(pool.name, server=True),
                "listen": [redactEndpoint(d, server=True) for d in pool.config.listen],
                "balance": pool.config.balance,
                "accepted": pool.accepted,
                "active": pool.active,
                "refused": pool.refused,
                "backends": [backendStatus(b, now) for b in pool.backends],
            }
            for pool in service.pools.values()
        ]
    }


class _Collector:
    """
    A Prometheus collector reading the service's counters at each scrape.
    """

    def __init__(self, service: ProxyService) -> None:
        self._service = service

    def collect(self) -> Iterator[Any]:
        service = self._service
        now = service.reactor.seconds()
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
            "1 for the backend's current state: up, disabled, draining or down.",
            labels=backendLabels + ["state"],
        )
        for pool in service.pools.values():
            proxy = redactEndpoint(pool.name, server=True)
            accepted.add_metric([proxy], pool.accepted)
            refused.add_metric([proxy], pool.refused)
            active.add_metric([proxy], pool.active)
            for b in pool.backends:
                labels = [proxy, redactEndpoint(b.label)]
                bActive.add_metric(labels, b.active)
                connected.add_metric(labels, b.connected)
                failed.add_metric(labels, b.failed)
                bytesIn.add_metric(labels, b.bytesIn)
                bytesOut.add_metric(labels, b.bytesOut)
                current = b.stateAt(now)
                up.add_metric(labels, 1 if current == UP else 0)
                for name in STATES:
                    state.add_metric(labels + [name], 1 if name == current else 0)
        yield from (accepted, refused, active, bActive, connected, failed, bytesIn, bytesOut,
                    up, state)


def serverStatistics(service: ProxyService) -> str:
    """
    lighttpd's mod_status C{statistics-url} text, with its counter names, so
    that existing scrapers keep working.

    Backends with the same label in several proxies are summed, as lighttpd
    merges hosts that share a label.
    """
    counters: dict[str, int] = {}

    def add(name: str, value: int) -> None:
        counters[name] = counters.get(name, 0) + value

    add("sockproxy.requests", 0)
    add("gw.active-requests", 0)
    for pool in service.pools.values():
        for b in pool.backends:
            label = redactEndpoint(b.label)
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


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}">
<title>sockproxy status</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #eee; }} td.text {{ text-align: left; }}
tr.up td.state {{ background: #cfc; }} tr.disabled td.state {{ background: #fcc; }}
tr.draining td.state {{ background: #ffc; }} tr.down td.state {{ background: #ddd; }}
</style></head><body>
<h1>sockproxy status</h1>
<p>Refreshes every {refresh} s. Also: <a href="status.json">status.json</a>,
<a href="metrics">metrics</a>, <a href="server-statistics">server-statistics</a>.</p>
{proxies}
</body></html>
"""


def statusPage(service: ProxyService, refresh: int = 5) -> str:
    """
    The HTML status page: a table of backends for every proxy.
    """
    e = html.escape
    sections = []
    for proxy in statusDocument(service)["proxies"]:
        rows = []
        for b in proxy["backends"]:
            rows.append(
                f'<tr class="{e(b["state"])}"><td class="text">{e(b["label"])}</td>'
                f'<td class="text">{e(b["endpoint"])}</td><td class="state text">{e(b["state"])}</td>'
                f'<td>{b["weight"]}</td><td>{b["active"]}</td><td>{b["connected"]}</td>'
                f'<td>{b["failed"]}</td><td>{b["bytes_in"]}</td><td>{b["bytes_out"]}</td>'
                f'<td class="text">{e(b["last_error"])}</td></tr>'
            )
        sections.append(
            f'<h2>proxy {e(proxy["name"])}</h2>\n'
            f'<p>listen: {e(", ".join(proxy["listen"]))}; balance: {e(proxy["balance"])}; '
            f'accepted <b class="accepted">{proxy["accepted"]}</b>, '
            f'active <b class="active">{proxy["active"]}</b>, '
            f'refused <b class="refused">{proxy["refused"]}</b></p>\n'
            f'<table data-proxy="{e(proxy["name"])}"><thead><tr><th>backend</th><th>endpoint</th>'
            "<th>state</th><th>weight</th><th>active</th><th>connected</th><th>failed</th>"
            "<th>bytes in</th><th>bytes out</th><th>last error</th></tr></thead>\n<tbody>"
            + "\n".join(rows)
            + "</tbody></table>"
        )
    return _PAGE.format(refresh=refresh, proxies="\n".join(sections))


class _Page(Resource):
    isLeaf = True

    def __init__(self, service: ProxyService) -> None:
        super().__init__()
        self._service = service

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return statusPage(self._service).encode("utf-8")


class _JSON(Resource):
    isLeaf = True

    def __init__(self, service: ProxyService) -> None:
        super().__init__()
        self._service = service

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(statusDocument(self._service), indent=1).encode("utf-8")


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

    def __init__(self, service: ProxyService) -> None:
        super().__init__()
        self._service = service

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return serverStatistics(self._service).encode("utf-8")


ACTIONS = {"drain": DRAINING, "disable": DOWN, "enable": UP}


class _Admin(Resource):
    """
    C{POST /backends/<proxy>/<label>/drain|disable|enable}, with
    C{Authorization: Bearer <token>}.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, service: ProxyService) -> None:
        super().__init__()
        self._service = service

    def _reply(self, request: Request, code: int, document: dict[str, Any]) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return (json.dumps(document) + "\n").encode("utf-8")

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"allow", b"POST")
        return self._reply(request, 405, {"error": "use POST"})

    def render_POST(self, request: Request) -> bytes:
        client = request.getClientAddress()
        who = getattr(client, "host", None) or str(client)
        token = self._service.adminToken
        if not token:
            self.log.warn("status: admin request from {client} refused: no admin-token-file "
                          "configured", client=who)
            return self._reply(request, 403, {
                "error": "admin actions are disabled: set [status] admin-token-file"})
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            request.setHeader(b"www-authenticate", b'Bearer realm="sockproxy"')
            self.log.warn("status: admin request from {client} refused: no bearer token",
                          client=who)
            return self._reply(request, 401, {"error": "needs Authorization: Bearer <token>"})
        if not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
            self.log.warn("status: admin request from {client} refused: wrong token",
                          client=who)
            return self._reply(request, 403, {"error": "wrong token"})
        parts = [p.decode("utf-8", "replace") for p in request.postpath or []]
        if len(parts) != 3:
            return self._reply(request, 404, {
                "error": "use POST /backends/<proxy>/<label>/drain|disable|enable"})
        proxyName, label, action = parts
        if action not in ACTIONS:
            return self._reply(request, 400, {
                "error": f"unknown action {action!r}: drain, disable or enable"})
        pool: Optional[BackendPool] = self._service.pools.get(proxyName)
        if pool is None:
            return self._reply(request, 404, {"error": f"no proxy {proxyName!r}"})
        backend = pool.backend(label)
        if backend is None:
            return self._reply(request, 404, {"error": f"proxy {proxyName!r} has no backend {label!r}"})
        backend.adminState = ACTIONS[action]
        self.log.info(
            "status: {client} set backend {label} of proxy {proxy} to {state}",
            client=who, label=label, proxy=proxyName, state=backend.adminState,
        )
        return self._reply(request, 200, backendStatus(backend, self._service.reactor.seconds()))


class StatusSite(Site):
    """
    The status endpoint's site: scrapes are not worth a log line each (admin
    actions are logged by themselves), and tracebacks are not shown.
    """

    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        pass


def statusResource(service: ProxyService) -> Resource:
    """
    The root resource of the status endpoint for C{service}.
    """
    root = Resource()
    page = _Page(service)
    root.putChild(b"", page)
    root.putChild(b"index.html", page)
    root.putChild(b"status.json", _JSON(service))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(service))
    root.putChild(b"metrics", _Metrics(registry))
    root.putChild(b"server-statistics", _Statistics(service))
    root.putChild(b"backends", _Admin(service))
    return root
