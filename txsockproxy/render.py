"""
Rendering a L{Config} for people and for files, in one place: what
C{twistd sockproxy --check} prints (L{describeConfig}), and what
C{--print-toml} prints (L{renderToml}): native TOML that loads back to the
same config, e.g. to move from a lighttpd.conf to the native format.
"""

from __future__ import annotations

import math
from typing import Iterable

from txsockproxy.config import (
    AUTO,
    DEFAULT_BALANCE,
    DEFAULT_CHECK_FALL,
    DEFAULT_CHECK_INTERVAL,
    DEFAULT_CHECK_RISE,
    DEFAULT_CHECK_TIMEOUT,
    DEFAULT_CLIENT_IPV6_PREFIX,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DISABLE_TIME,
    DEFAULT_HALF_CLOSED_TIMEOUT,
    DEFAULT_PROXY_HEADER_TIMEOUT,
    DEFAULT_QUEUE_TIMEOUT,
    DEFAULT_RESOLVE_MAX,
    DEFAULT_RESOLVE_MIN,
    DEFAULT_ROUTE_INSPECT_DELAY,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_STATUS_MAX_BODY_SIZE,
    DEFAULT_STATUS_MAX_CONNECTIONS,
    DEFAULT_STATUS_REQUEST_TIMEOUT,
    DEFAULT_TLS_MIN_VERSION,
    BackendConfig,
    BackendTLS,
    CheckConfig,
    Config,
    DiscoveryConfig,
    KeepaliveConfig,
    ListenTLSConfig,
    Protection,
    ProxyConfig,
    oneLine,
)
from txsockproxy.endpoints import isProxyProtocolListen, originFields

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def tomlString(text: str) -> str:
    """
    C{text} as a TOML basic string.
    """
    out = []
    for c in text:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def tomlNumber(value: float) -> str:
    """
    A number of seconds as TOML: an integer when it is a whole number that
    TOML integers hold exactly, else a float that reads back the same.
    """
    if not math.isfinite(value):
        raise ValueError(f"{value!r} cannot be written as TOML")
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _comment(text: str) -> str:
    # A comment ends at the end of the line; keep it on one.
    return "# " + "".join(c if c.isprintable() else " " for c in text)


def _backendLines(backend: BackendConfig, header: str = "[[proxy.backend]]") -> Iterable[str]:
    yield header
    yield f"label = {tomlString(backend.label)}"
    fields = originFields(backend.origin)
    if backend.discovery is not None:
        yield from _discoveryLines(backend.discovery)
    elif fields:
        # Written the way it was given (lighttpd-style host/port/socket),
        # so that it resolves again on load, and records the same origin.
        yield _comment(f"resolved now: {backend.endpoint}")
        for key in ("host", "port", "socket"):
            value = fields.get(key)
            if isinstance(value, str):
                yield f"{key} = {tomlString(value)}"
            elif isinstance(value, int):
                yield f"{key} = {value}"
    else:
        yield f"endpoint = {tomlString(backend.endpoint)}"
    if backend.weight != 1:
        yield f"weight = {backend.weight}"
    if backend.connectTimeout != DEFAULT_CONNECT_TIMEOUT:
        yield f"connect-timeout = {tomlNumber(backend.connectTimeout)}"
    if backend.disableTime != DEFAULT_DISABLE_TIME:
        yield f"disable-time = {tomlNumber(backend.disableTime)}"
    if backend.congestion != AUTO:
        yield f"congestion = {tomlString(backend.congestion)}"
    if backend.sendProxy:
        yield f"send-proxy = {tomlString(backend.sendProxy)}"
    yield from _backendTLSLines(backend.tls)
    yield from _checkLines(backend.check)
    if backend.maxConnections:
        yield f"max-connections = {backend.maxConnections}"
    if backend.keepalive.idle:
        yield f"keepalive = {_keepalive(backend.keepalive)}"


def _discoveryLines(discovery: DiscoveryConfig) -> Iterable[str]:
    # Written per backend: a proxy's resolve keys are only defaults.
    if discovery.srv:
        yield f"srv = {tomlString(discovery.name)}"
    else:
        yield f"host = {tomlString(discovery.name)}"
        yield f"port = {discovery.port}"
        yield 'resolve = "dns"'
    if discovery.resolveMin != DEFAULT_RESOLVE_MIN:
        yield f"resolve-min = {tomlNumber(discovery.resolveMin)}"
    if discovery.resolveMax != DEFAULT_RESOLVE_MAX:
        yield f"resolve-max = {tomlNumber(discovery.resolveMax)}"
    if discovery.resolver:
        yield f"resolver = {tomlString(discovery.resolver)}"


def _discoveryDescription(discovery: DiscoveryConfig | None) -> str:
    if discovery is None:
        return ""
    source = f"srv={discovery.name}" if discovery.srv else "resolve=dns"
    return (f" {source} resolve-min={_seconds(discovery.resolveMin)}"
            f" resolve-max={_seconds(discovery.resolveMax)}"
            f" resolver={discovery.resolver or 'system'}")


def _keepalive(keepalive: KeepaliveConfig) -> str:
    parts = [f"idle = {tomlNumber(keepalive.idle)}"]
    if keepalive.interval:
        parts.append(f"interval = {tomlNumber(keepalive.interval)}")
    if keepalive.count:
        parts.append(f"count = {keepalive.count}")
    return "{ " + ", ".join(parts) + " }"


def _protectionLines(protection: Protection) -> Iterable[str]:
    if protection.maxConnections:
        yield f"max-connections = {protection.maxConnections}"
    if protection.maxQueue:
        yield f"max-queue = {protection.maxQueue}"
    if protection.queueTimeout != DEFAULT_QUEUE_TIMEOUT:
        yield f"queue-timeout = {tomlNumber(protection.queueTimeout)}"
    if protection.clientMaxConnections:
        yield f"client-max-connections = {protection.clientMaxConnections}"
    if protection.clientRate:
        yield f"client-rate = {tomlNumber(protection.clientRate)}"
        yield f"client-burst = {protection.clientBurst}"
    if protection.clientIPv6Prefix != DEFAULT_CLIENT_IPV6_PREFIX:
        yield f"client-ipv6-prefix = {protection.clientIPv6Prefix}"
    if protection.access:
        yield "access = [" + ", ".join(tomlString(rule) for rule in protection.access) + "]"
    if protection.drainTimeout:
        yield f"drain-timeout = {tomlNumber(protection.drainTimeout)}"
    if protection.clientKeepalive.idle:
        yield f"client-keepalive = {_keepalive(protection.clientKeepalive)}"


def _checkLines(check: CheckConfig | None) -> Iterable[str]:
    # Written per backend: a proxy's check keys are only defaults.
    if check is None:
        return
    yield f"check = {tomlString(check.kind)}"
    if check.interval != DEFAULT_CHECK_INTERVAL:
        yield f"check-interval = {tomlNumber(check.interval)}"
    if check.timeout != DEFAULT_CHECK_TIMEOUT:
        yield f"check-timeout = {tomlNumber(check.timeout)}"
    if check.rise != DEFAULT_CHECK_RISE:
        yield f"rise = {check.rise}"
    if check.fall != DEFAULT_CHECK_FALL:
        yield f"fall = {check.fall}"
    if check.send:
        yield f"check-send = {tomlString(check.send.decode('utf-8'))}"
    if check.expect:
        yield f"check-expect = {tomlString(check.expect.decode('utf-8'))}"


def _backendTLSLines(tls: BackendTLS | None) -> Iterable[str]:
    if tls is None:
        return
    yield "tls = true"
    # The name is written out even when it is the host's, so that it stays
    # the same name once a lighttpd-style host is rendered as resolved.
    yield f"tls-name = {tomlString(tls.name)}"
    for key, value in (("tls-ca", tls.ca), ("tls-cert", tls.cert), ("tls-key", tls.key)):
        if value:
            yield f"{key} = {tomlString(value)}"
    if tls.minVersion != DEFAULT_TLS_MIN_VERSION:
        yield f"tls-min-version = {tomlString(tls.minVersion)}"


def _proxyLines(proxy: ProxyConfig) -> Iterable[str]:
    yield "[[proxy]]"
    yield f"name = {tomlString(proxy.name)}"
    yield "listen = [" + ", ".join(tomlString(desc) for desc in proxy.listen) + "]"
    if proxy.balance and proxy.balance != DEFAULT_BALANCE:
        yield f"balance = {tomlString(proxy.balance)}"
    if proxy.idleTimeout:
        yield f"idle-timeout = {tomlNumber(proxy.idleTimeout)}"
    if proxy.halfClosedTimeout != DEFAULT_HALF_CLOSED_TIMEOUT:
        yield f"half-closed-timeout = {tomlNumber(proxy.halfClosedTimeout)}"
    if proxy.inspectDelay:
        yield f"inspect-delay = {tomlNumber(proxy.inspectDelay)}"
    if proxy.clientCongestion != AUTO:
        yield f"client-congestion = {tomlString(proxy.clientCongestion)}"
    if proxy.proxyHeaderTimeout != DEFAULT_PROXY_HEADER_TIMEOUT:
        yield f"proxy-header-timeout = {tomlNumber(proxy.proxyHeaderTimeout)}"
    if proxy.tls is not None:
        yield from _tlsLines(proxy.tls)
    yield from _protectionLines(proxy.protection)
    for backend in proxy.backends:
        yield ""
        yield from _backendLines(backend)
    for route in proxy.routes:
        yield ""
        yield "[[proxy.route]]"
        yield f"name = {tomlString(route.name)}"
        yield "names = [" + ", ".join(tomlString(n) for n in route.names) + "]"
        if route.balance != DEFAULT_BALANCE:
            yield f"balance = {tomlString(route.balance)}"
        for backend in route.backends:
            yield ""
            yield from _backendLines(backend, "[[proxy.route.backend]]")


def _tlsLines(tls: ListenTLSConfig) -> Iterable[str]:
    yield "tls-certificates = [" + ", ".join(
        f"{{cert = {tomlString(c.cert)}, key = {tomlString(c.key)}}}" for c in tls.certificates
    ) + "]"
    if tls.clientCA:
        yield f"tls-client-ca = {tomlString(tls.clientCA)}"
        yield f"tls-verify-client = {tomlString(tls.verifyClient)}"
    if tls.minVersion != DEFAULT_TLS_MIN_VERSION:
        yield f"tls-min-version = {tomlString(tls.minVersion)}"


def renderToml(config: Config) -> str:
    """
    C{config} as native TOML. Keys at their default are left out. Loading
    the text gives a config equal to C{config} (but for its C{source});
    backends given lighttpd-style
    (C{host}/C{port}/C{socket}) are written that way, and resolve again
    when the text is loaded.
    """
    lines = [_comment(f"txsockproxy configuration, from {config.source}")]
    for notice in config.notices:
        lines.append(_comment(f"notice: {notice}"))
    topLevel = []
    if config.debug:
        topLevel.append(f"debug = {config.debug}")
    if config.sessionLog != "off":
        topLevel.append(f"session-log = {tomlString(config.sessionLog)}")
    if config.logFormat != "text":
        topLevel.append(f"log-format = {tomlString(config.logFormat)}")
    if config.shutdownTimeout != DEFAULT_SHUTDOWN_TIMEOUT:
        topLevel.append(f"shutdown-timeout = {tomlNumber(config.shutdownTimeout)}")
    if config.accelerator != "auto":
        topLevel.append(f"accelerator = {tomlString(config.accelerator)}")
    if config.maxConnections:
        topLevel.append(f"max-connections = {config.maxConnections}")
    if config.workers != 1:
        workers = config.workers
        topLevel.append(f"workers = {tomlString(workers) if isinstance(workers, str) else workers}")
    if config.takeoverSocket:
        topLevel.append(f"takeover-socket = {tomlString(config.takeoverSocket)}")
    if topLevel:
        lines.append("")
        lines.extend(topLevel)
    if config.status is not None:
        lines.append("")
        lines.append("[status]")
        lines.append("listen = [" + ", ".join(tomlString(d) for d in config.status.listen) + "]")
        if config.status.adminTokenFile:
            lines.append(f"admin-token-file = {tomlString(config.status.adminTokenFile)}")
        if config.status.maxConnections != DEFAULT_STATUS_MAX_CONNECTIONS:
            lines.append(f"max-connections = {config.status.maxConnections}")
        if config.status.requestTimeout != DEFAULT_STATUS_REQUEST_TIMEOUT:
            lines.append(f"request-timeout = {tomlNumber(config.status.requestTimeout)}")
        if config.status.maxBodySize != DEFAULT_STATUS_MAX_BODY_SIZE:
            lines.append(f"max-body-size = {config.status.maxBodySize}")
    for proxy in config.proxies:
        lines.append("")
        lines.extend(_proxyLines(proxy))
    return "\n".join(lines) + "\n"


def describeConfig(config: Config) -> str:
    """
    The effective configuration C{config}, for people: what C{--check} prints.
    """
    lines = [f"# effective configuration from {config.source}", f"debug = {config.debug}"]
    lines.append(f"session-log = {config.sessionLog} ({config.logFormat})")
    lines.append(f"shutdown-timeout = {_seconds(config.shutdownTimeout)}")
    if config.accelerator != "auto":
        lines.append(f"accelerator = {config.accelerator}")
    if config.maxConnections:
        lines.append(f"max-connections = {config.maxConnections}")
    if config.workers != 1:
        lines.append(f"workers = {config.workers}")
    if config.takeoverSocket:
        lines.append(f"takeover-socket = {config.takeoverSocket}")
    if config.status is not None:
        lines.append("")
        lines.append("status")
        for desc in config.status.listen:
            lines.append(f"  {'listen':<20}{desc}")
        admin = config.status.adminTokenFile or "(none: admin actions refused)"
        lines.append(f"  {'admin-token-file':<20}{admin}")
        lines.append(f"  {'max-connections':<20}{config.status.maxConnections}")
        lines.append(f"  {'request-timeout':<20}{_seconds(config.status.requestTimeout)}")
        lines.append(f"  {'max-body-size':<20}{config.status.maxBodySize}")
    for proxy in config.proxies:
        lines.append("")
        lines.append(f"proxy {proxy.name!r}")
        for desc in proxy.listen:
            lines.append(f"  {'listen':<20}{desc}")
        lines.append(f"  {'balance':<20}{proxy.balance}")
        lines.append(f"  {'idle-timeout':<20}{_seconds(proxy.idleTimeout)}")
        lines.append(f"  {'half-closed-timeout':<20}{_seconds(proxy.halfClosedTimeout)}")
        if proxy.inspectDelay or proxy.routes:
            delay = proxy.inspectDelay or (DEFAULT_ROUTE_INSPECT_DELAY if proxy.routes else 0)
            lines.append(f"  {'inspect-delay':<20}{_seconds(delay)}")
        lines.append(f"  {'client-congestion':<20}{proxy.clientCongestion}")
        if any(isProxyProtocolListen(desc) for desc in proxy.listen):
            lines.append(f"  {'proxy-header-timeout':<20}{_seconds(proxy.proxyHeaderTimeout)}")
        tls = proxy.tls
        if tls is not None:
            for c in tls.certificates:
                names = ", ".join(c.names) or "no DNS name"
                lines.append(f"  {'tls-certificate':<20}{c.cert} ({names}), key {c.key}")
            clients = f"{tls.verifyClient} ({tls.clientCA})" if tls.clientCA else "off"
            lines.append(f"  {'tls-verify-client':<20}{clients}")
            lines.append(f"  {'tls-min-version':<20}{tls.minVersion}")
        lines.extend(f"  {line}" for line in _protectionLines(proxy.protection))
        lines.extend(_backendDescriptions(proxy.backends, "  "))
        for route in proxy.routes:
            lines.append(f"  route {route.name!r}: {', '.join(route.names)}"
                         f"  balance={route.balance}")
            lines.extend(_backendDescriptions(route.backends, "    "))
    return "\n".join(oneLine(line) for line in lines)


def _backendDescriptions(backends: Iterable[BackendConfig], indent: str) -> Iterable[str]:
    for b in backends:
        origin = f"  (from {b.origin})" if b.origin else ""
        yield (
            f"{indent}backend {b.label!r}: {b.endpoint}{origin}"
            f"  weight={b.weight}"
            f" connect-timeout={_seconds(b.connectTimeout)}"
            f" disable-time={_seconds(b.disableTime)}"
            f" congestion={b.congestion}"
            + (f" send-proxy={b.sendProxy}" if b.sendProxy else "")
            + (f" tls={b.tls.name!r}" if b.tls is not None else "")
            + _checkDescription(b.check)
            + (f" max-connections={b.maxConnections}" if b.maxConnections else "")
            + (f" keepalive={_keepalive(b.keepalive)}" if b.keepalive.idle else "")
            + _discoveryDescription(b.discovery)
        )


def _checkDescription(check: CheckConfig | None) -> str:
    if check is None:
        return ""
    text = (f" check={check.kind} check-interval={_seconds(check.interval)}"
            f" check-timeout={_seconds(check.timeout)} rise={check.rise} fall={check.fall}")
    if check.kind == "send-expect":
        # repr: the bytes as they go, \r\n and all, on one line.
        text += f" check-send={check.send!r} check-expect={check.expect!r}"
    return text


def _seconds(value: float) -> str:
    if value == 0:
        return "off"
    return f"{value:g}s"
