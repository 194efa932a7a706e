"""
The immutable configuration objects every reader produces (the native TOML
reader, the lighttpd.conf importer, the command line), their defaults, and
the error a reader raises.

This module is a leaf: it imports nothing of txsockproxy, so that every other
module may import it. Reading and checking happen beside it
(L{txsockproxy.loading}, L{txsockproxy.tomlconfig}, L{txsockproxy.lighttpd},
L{txsockproxy.cmdline}); rendering in L{txsockproxy.render}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

# The congestion control setting that picks per socket (see
# L{txsockproxy.congestion}); the default of every congestion key.
AUTO = "auto"

DEFAULT_CONNECT_TIMEOUT = 8.0
DEFAULT_DISABLE_TIME = 1.0
DEFAULT_HALF_CLOSED_TIMEOUT = 300.0
DEFAULT_BALANCE = "fair"
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
DEFAULT_PORT = 80
DEFAULT_PROXY_HEADER_TIMEOUT = 5.0
# The PROXY protocol versions a backend may be sent (send-proxy).
SEND_PROXY_VERSIONS = ("v1", "v2")
# Seconds to wait for a ClientHello when a proxy has routes and its
# inspect-delay is 0 (routes need the server name).
DEFAULT_ROUTE_INSPECT_DELAY = 5.0
# The name of a proxy's own backends when it has routes.
DEFAULT_ROUTE = "default"


@dataclass(frozen=True)
class Problem:
    """
    One mistake in a configuration source.

    @ivar source: the file name (or C{"<command line>"}).
    @ivar line: the 1-based line number, or L{None} when it is not known.
    @ivar key: the dotted key the problem concerns, e.g. C{proxy[0].backend[1].port}.
    @ivar message: what is wrong, in words.
    @ivar column: the 1-based column, when known; shown after the message,
        so that every problem keeps the form C{FILE:LINE: key: message}.
    """

    source: str
    line: int | None
    key: str
    message: str
    column: int | None = None

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        message = self.message
        if self.column is not None:
            message = f"{message} (column {self.column})"
        if self.key:
            text = f"{where}: {self.key}: {message}"
        else:
            text = f"{where}: {message}"
        return oneLine(text)


def oneLine(text: str) -> str:
    """
    Escape what would break a message over several lines or hide part of it
    (a newline in a quoted TOML key, in an endpoint string, in an error from
    a parser), so that every problem stays on one line.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ConfigError(Exception):
    """
    A configuration could not be loaded; C{problems} lists every mistake found.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = tuple(problems)


# The TLS versions a tls-min-version (of a backend, or of a proxy's
# listeners) may name, and its default. TLS 1.0 and 1.1 are not offered:
# OpenSSL 3 refuses them at its default security level whatever one asks.
TLS_VERSIONS = ("1.2", "1.3")
DEFAULT_TLS_MIN_VERSION = "1.2"


@dataclass(frozen=True)
class BackendTLS:
    """
    TLS to a backend, whose handshake and certificate check are part of
    connecting to it (see L{txsockproxy.tlsclient}).

    @ivar name: the name the backend's certificate must be valid for, sent as
        SNI (unless it is an IP address).
    @ivar ca: the file of the CA certificates (PEM) to trust, or C{""} for
        the system's trust store.
    @ivar cert: the file of the client certificate (PEM; more certificates
        after it are its chain) for mutual TLS, or C{""}.
    @ivar key: the file of that certificate's private key (PEM).
    @ivar minVersion: the oldest TLS version accepted: C{"1.2"} or C{"1.3"}.
    @ivar caPEM: the contents of C{ca}, read when the config is loaded.
    @ivar certPEM: the contents of C{cert}, read when the config is loaded.
    @ivar keyPEM: the contents of C{key}, read when the config is loaded.
    """

    name: str
    ca: str = ""
    cert: str = ""
    key: str = ""
    minVersion: str = DEFAULT_TLS_MIN_VERSION
    caPEM: bytes = field(default=b"", repr=False)
    certPEM: bytes = field(default=b"", repr=False)
    keyPEM: bytes = field(default=b"", repr=False)


# Active health checks (see L{txsockproxy.healthcheck}): the kinds, and the
# defaults of the check-* keys.
CHECK_KINDS = ("off", "connect", "send-expect")
DEFAULT_CHECK_INTERVAL = 2.0
DEFAULT_CHECK_TIMEOUT = 1.0
DEFAULT_CHECK_RISE = 2
DEFAULT_CHECK_FALL = 3


@dataclass(frozen=True)
class CheckConfig:
    """
    The active health check of a backend.

    @ivar kind: C{"connect"} (connecting through the backend's endpoint,
        TLS handshake included, is the check) or C{"send-expect"}.
    @ivar interval: seconds between checks.
    @ivar timeout: seconds a check may take.
    @ivar rise: good checks in a row that bring a backend back.
    @ivar fall: failed checks in a row that take it down.
    @ivar send: bytes sent once connected (C{send-expect}), UTF-8 of the
        string written.
    @ivar expect: bytes the reply must contain (C{send-expect}).
    """

    kind: str
    interval: float = DEFAULT_CHECK_INTERVAL
    timeout: float = DEFAULT_CHECK_TIMEOUT
    rise: int = DEFAULT_CHECK_RISE
    fall: int = DEFAULT_CHECK_FALL
    send: bytes = b""
    expect: bytes = b""


@dataclass(frozen=True)
class KeepaliveConfig:
    """
    TCP keepalive of one side's sockets: probes after C{idle} seconds
    without a packet, every C{interval} seconds, C{count} unanswered ones
    end the connection; 0 for the system's value. C{idle} 0: off.
    """

    idle: float = 0.0
    interval: float = 0.0
    count: int = 0


# Backends from DNS (see L{txsockproxy.discovery}): how a host name is
# resolved ("start": once, when the config is loaded; "dns": again and
# again, at the answer's TTL), and the bounds of that TTL.
RESOLVE_SETTINGS = ("start", "dns")
DEFAULT_RESOLVE_MIN = 1.0
DEFAULT_RESOLVE_MAX = 300.0


@dataclass(frozen=True)
class DiscoveryConfig:
    """
    A backend that stands for every address DNS gives for a name, asked
    again at the answer's TTL.

    @ivar name: the host name whose A and AAAA records are the backends,
        or (C{srv}) the name of the SRV records whose targets are.
    @ivar port: the port of every address of a host name; 0 with C{srv}
        (each SRV record gives its own).
    @ivar srv: whether C{name} names SRV records.
    @ivar resolveMin: the shortest time between two lookups, in seconds,
        whatever the TTL says.
    @ivar resolveMax: the longest time between two lookups.
    @ivar resolver: the DNS server asked, as written (C{"10.0.0.53:53"},
        C{"[::1]:5353"}), or C{""}: the system's (C{/etc/resolv.conf},
        and C{/etc/hosts} for host names).
    """

    name: str
    port: int = 0
    srv: bool = False
    resolveMin: float = DEFAULT_RESOLVE_MIN
    resolveMax: float = DEFAULT_RESOLVE_MAX
    resolver: str = ""


@dataclass(frozen=True)
class BackendConfig:
    """
    One backend of a proxy.

    @ivar endpoint: the Twisted client endpoint string used to connect.
    @ivar label: a name unique within the proxy, shown in logs and statistics.
    @ivar weight: relative share of connections for weight-aware balancers.
    @ivar disableTime: seconds the backend stays out of rotation after a
        connect failure.
    @ivar connectTimeout: seconds a connect attempt may take.
    @ivar origin: what the user wrote, when the endpoint was derived from
        lighttpd-style C{host}/C{port}/C{socket} keys.
    @ivar congestion: the TCP congestion control of the sockets to this
        backend: C{"auto"}, C{"system"} or an algorithm's name (see
        L{txsockproxy.congestion}).
    @ivar sendProxy: the PROXY protocol header sent to it before the
        client's bytes: C{"v1"}, C{"v2"}, or C{""} (none).
    @ivar tls: TLS to the backend over C{endpoint}, or L{None}.
    @ivar maxConnections: sessions it may hold at once (a full backend is
        skipped by every balancer); 0: no limit.
    @ivar keepalive: TCP keepalive of the sockets to it.
    @ivar check: its active health check, or L{None} (C{check = "off"}).
    @ivar discovery: when its addresses come from DNS, how: it is then a
        template of the backends DNS gives (its C{endpoint} only names it:
        C{tcp:host=NAME:port=PORT}, or C{srv:NAME}); L{None} for a backend
        of its own.
    """

    endpoint: str
    label: str
    weight: int = 1
    disableTime: float = DEFAULT_DISABLE_TIME
    connectTimeout: float = DEFAULT_CONNECT_TIMEOUT
    origin: str = ""
    congestion: str = AUTO
    sendProxy: str = ""
    tls: BackendTLS | None = None
    maxConnections: int = 0
    keepalive: KeepaliveConfig = KeepaliveConfig()
    check: CheckConfig | None = None
    discovery: DiscoveryConfig | None = None


# TLS on a proxy's own listeners (the tls-* keys of [[proxy]]): how client
# certificates are asked for.
VERIFY_CLIENT = ("off", "optional", "required")


@dataclass(frozen=True)
class TLSCertificateConfig:
    """
    One certificate of a TLS listener, read and checked when loading.

    @ivar cert: the file of the certificate (and its chain), PEM.
    @ivar key: the file of its private key, PEM, not encrypted.
    @ivar names: the DNS names (C{subjectAltName}, else the common name)
        it serves when a client asks for them by SNI; lower case, wildcards
        as written (C{*.example.com}).
    @ivar certPEM: the certificate file's contents, when it was read.
    @ivar keyPEM: the key file's contents, when it was read.
    """

    cert: str
    key: str
    names: tuple[str, ...] = ()
    certPEM: bytes = field(default=b"", repr=False)
    keyPEM: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class ListenTLSConfig:
    """
    TLS termination on the listeners of a proxy that are not C{ssl:}.

    @ivar certificates: the first is the default (a client that sends no SNI
        name, or one no certificate has); the others are chosen by name.
    @ivar clientCA: a PEM file of the authorities clients' certificates must
        chain to, or C{""}.
    @ivar clientCAPEM: its contents, when it was read.
    @ivar verifyClient: C{"off"}, C{"optional"} (checked when given) or
        C{"required"}.
    @ivar minVersion: the lowest TLS version accepted, C{"1.2"} etc.
    """

    certificates: tuple[TLSCertificateConfig, ...]
    clientCA: str = ""
    clientCAPEM: bytes = field(default=b"", repr=False)
    verifyClient: str = "off"
    minVersion: str = DEFAULT_TLS_MIN_VERSION


@dataclass(frozen=True)
class RouteConfig:
    """
    A route of a proxy: clients whose TLS server name matches one of
    C{names} go to C{backends}, placed by their own balancer.

    @ivar name: the route's name, unique within the proxy; shown in the
        status page and the session log.
    @ivar names: server-name patterns, normalized (lower case, no trailing
        dot): exact names, or C{*.} followed by a name.
    """

    name: str
    names: tuple[str, ...]
    backends: tuple[BackendConfig, ...]
    balance: str = DEFAULT_BALANCE


DEFAULT_QUEUE_TIMEOUT = 10.0
DEFAULT_CLIENT_IPV6_PREFIX = 64


@dataclass(frozen=True)
class Protection:
    """
    What a proxy admits: limits, a queue, client access rules.

    @ivar maxConnections: sessions served at once (connecting or relaying);
        0: no limit. Beyond it clients wait in the queue.
    @ivar maxQueue: clients that may wait for a slot; 0: none (a client
        beyond C{maxConnections} is closed).
    @ivar queueTimeout: seconds a client may wait in the queue.
    @ivar clientMaxConnections: sessions one client address may hold; 0: no limit.
    @ivar clientRate: new connections per second one client address may
        open (a token bucket); 0: no limit.
    @ivar clientBurst: how many of those at once after a quiet time.
    @ivar clientIPv6Prefix: IPv6 clients are counted by network of this
        many bits.
    @ivar access: allow/deny rules, in order (see L{txsockproxy.acl}).
    @ivar drainTimeout: seconds sessions of a draining backend may go on;
        0: until they end.
    @ivar clientKeepalive: TCP keepalive of the clients' sockets.
    """

    maxConnections: int = 0
    maxQueue: int = 0
    queueTimeout: float = DEFAULT_QUEUE_TIMEOUT
    clientMaxConnections: int = 0
    clientRate: float = 0.0
    clientBurst: int = 0
    clientIPv6Prefix: int = DEFAULT_CLIENT_IPV6_PREFIX
    access: tuple[str, ...] = ()
    drainTimeout: float = 0.0
    clientKeepalive: KeepaliveConfig = KeepaliveConfig()


@dataclass(frozen=True)
class ProxyConfig:
    """
    One proxy: listen endpoints sharing one pool of backends and one balancer.

    @ivar idleTimeout: seconds without a byte either way before a session is
        closed; 0 disables it.
    @ivar halfClosedTimeout: once one direction has ended, seconds without a
        byte in the other direction before the session is closed; 0 disables.
    @ivar inspectDelay: for balancers that use the TLS SNI name (C{hash}), at
        most how many seconds to wait for the client's ClientHello (or, on a
        TLS listener, the handshake) before choosing a backend; 0 = do not wait.
    @ivar clientCongestion: the TCP congestion control of the clients'
        sockets: C{"auto"}, C{"system"} or an algorithm's name (see
        L{txsockproxy.congestion}).
    @ivar proxyHeaderTimeout: on a PROXY protocol listener (C{haproxy:}),
        seconds a client has to send its whole header.
    @ivar tls: TLS termination on its listeners that are not C{ssl:}, or
        L{None}.
    @ivar protection: its limits, queue and access rules.
    @ivar routes: routes by TLS server name to other groups of backends;
        C{backends} (which may then be empty) is the default group.
    """

    name: str
    listen: tuple[str, ...]
    backends: tuple[BackendConfig, ...]
    balance: str = DEFAULT_BALANCE
    idleTimeout: float = 0.0
    halfClosedTimeout: float = DEFAULT_HALF_CLOSED_TIMEOUT
    inspectDelay: float = 0.0
    clientCongestion: str = AUTO
    proxyHeaderTimeout: float = DEFAULT_PROXY_HEADER_TIMEOUT
    tls: ListenTLSConfig | None = None
    routes: tuple[RouteConfig, ...] = ()
    protection: Protection = Protection()


# The status site's limits: it shares the relay's descriptors.
DEFAULT_STATUS_MAX_CONNECTIONS = 64
DEFAULT_STATUS_REQUEST_TIMEOUT = 10.0
DEFAULT_STATUS_MAX_BODY_SIZE = 1024


@dataclass(frozen=True)
class StatusConfig:
    """
    The status and admin web endpoint.

    @ivar listen: server endpoint strings it listens on.
    @ivar adminTokenFile: the file holding the bearer token that admin
        actions need, or C{""}: then admin actions are refused.
    @ivar adminToken: that token, read when the config is loaded.
    @ivar maxConnections: connections open to it at once; more are closed.
    @ivar requestTimeout: seconds a connection has to send a whole request.
    @ivar maxBodySize: the largest request body accepted, in bytes.
    """

    listen: tuple[str, ...]
    adminTokenFile: str = ""
    adminToken: str = field(default="", repr=False)
    maxConnections: int = DEFAULT_STATUS_MAX_CONNECTIONS
    requestTimeout: float = DEFAULT_STATUS_REQUEST_TIMEOUT
    maxBodySize: int = DEFAULT_STATUS_MAX_BODY_SIZE


LOG_FORMATS = ("text", "json")

# The values of the accelerator key.
ACCELERATOR_SETTINGS = ("auto", "splice", "copy", "off")


# More worker processes than this is a mistake, not a configuration.
MAX_WORKERS = 256


@dataclass(frozen=True)
class Config:
    """
    A whole, validated configuration.

    @ivar source: where it was read from, for messages.
    @ivar status: the status endpoint, if any.
    @ivar sessionLog: where the one-line-per-session log goes: C{"off"} (the
        default: it costs CPU per connection, and peers log nothing by
        default either), C{"log"} (the twistd log), or the path of a file of
        its own.
    @ivar logFormat: C{"text"} or C{"json"} (JSON lines) for the session log.
    @ivar shutdownTimeout: on SIGTERM/SIGINT, seconds sessions in flight get
        to finish before they are closed.
    @ivar accelerator: how sessions relay: C{"auto"} (the accelerator where
        it applies), C{"splice"}, C{"copy"}, or C{"off"} (Twisted's public
        API only); see L{txsockproxy.accelerator}.
    @ivar maxConnections: sessions of all proxies at once; at it, the
        listeners stop accepting until one ends. 0: no limit.
    @ivar workers: worker processes serving the listeners: a count (1: the
        process serves them itself), or C{"auto"} (the CPUs the process may
        use).
    @ivar takeoverSocket: the unix socket path on which this process hands
        its listening sockets to a new one started with C{--take-over}
        (L{txsockproxy.takeover}), or C{""}: none.
    """

    proxies: tuple[ProxyConfig, ...]
    debug: int = 0
    source: str = "<command line>"
    notices: tuple[str, ...] = field(default=(), compare=False)
    status: StatusConfig | None = None
    sessionLog: str = "off"
    logFormat: str = "text"
    shutdownTimeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    accelerator: str = "auto"
    maxConnections: int = 0
    workers: int | str = 1
    takeoverSocket: str = ""
