"""
The third stage of reading a lighttpd.conf: L{Mapper} reads what sockproxy
needs from the evaluated tree: every socket (C{server.bind}/C{server.port} and
each C{$SERVER["socket"] == ...} block) whose effective C{sockproxy.server} is
set becomes a listener, and each C{sockproxy.server} definition a proxy with
its backends, in the config objects of L{txsockproxy.config}.

Whatever does not concern sockproxy is reported once, as a notice, not
rejected. doc/lighttpd-config.md describes the mapping for users.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Sequence

from twisted.internet.endpoints import quoteStringArgument

from txsockproxy.checks import unknownBalancer
from txsockproxy.config import (
    DEFAULT_BALANCE,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DISABLE_TIME,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_TLS_MIN_VERSION,
    MAX_WORKERS,
    BackendConfig,
    Config,
    ConfigError,
    ListenTLSConfig,
    Problem,
    Protection,
    ProxyConfig,
    RouteConfig,
)
from txsockproxy.endpoints import Resolver, backendFromHost, checkEndpoint, originFields
from txsockproxy.lighttpd.clientrules import Network, accessRules, parseNetwork
from txsockproxy.lighttpd.evaluator import (
    Arr,
    Assignment,
    Block,
    Condition,
    Entry,
    Evaluator,
    Int,
    Str,
    Value,
    describeValue,
)
from txsockproxy.lighttpd.lexer import Pos, problemAt, quoted
from txsockproxy.routes import checkPattern
from txsockproxy.tlsconfig import readCertificatePair, readClientCA

# Host options of lighttpd's gw code that mean nothing for a socket proxy
# (HTTP gateway settings), or only with bin-path (process spawning).
_MEANINGLESS_HOST_OPTIONS = frozenset({
    "check-local", "mode", "docroot", "broken-scriptfilename", "strip-request-uri",
    "fix-root-scriptname", "x-sendfile", "allow-x-send-file", "x-sendfile-docroot", "upgrade",
    "bin-environment", "bin-copy-environment", "kill-signal", "min-procs", "max-procs",
    "max-load-per-proc", "idle-timeout", "listen-backlog",
})
_HOST_OPTIONS = frozenset({
    "host", "port", "socket", "disable-time", "connect-timeout", "read-timeout",
    "write-timeout", "tcp-fin-propagate", "weight", "bin-path",
})
# What to use instead, for ignored directives that have an equivalent.
_IGNORED_HINTS = {
    "server.username": " (twistd --uid)",
    "server.groupname": " (twistd --gid)",
    "server.pid-file": " (twistd --pidfile)",
    "server.errorlog": " (twistd --logfile)",
    "server.chroot": " (twistd --chroot)",
    "server.max-read-idle": " (read-timeout)",
    "server.max-write-idle": " (write-timeout)",
    "status.statistics-url": " (the native [status] listen)",
    "status.status-url": " (the native [status] listen)",
}
# Client-certificate settings that would narrow what is accepted, and that
# sockproxy cannot honour: refused rather than ignored.
_REFUSED_VERIFY = {
    "ssl.verifyclient.ca-crl-file": "revocation lists are not supported (revoked "
                                    "certificates would be accepted)",
    "ssl.ca-crl-file": "revocation lists are not supported (revoked certificates would be "
                       "accepted)",
    "ssl.verifyclient.ca-dn-file": "limiting the issuers by name is not supported: put only "
                                   "the authorities to accept in ssl.ca-file",
    "ssl.ca-dn-file": "limiting the issuers by name is not supported: put only the "
                      "authorities to accept in ssl.ca-file",
}
# How many certificates above the client's its chain may have: Twisted's
# CertificateOptions sets OpenSSL's verify depth to 9, which (unlike
# lighttpd's ssl.verifyclient.depth) does not count the trust anchor.
_VERIFY_DEPTH = 10
_SERVER_EXAMPLE = '( "" => ( "label" => ( "host" => "10.0.0.2", "port" => 5432 ) ) )'
_TRUE = frozenset({"enable", "true", "on", "1"})
_FALSE = frozenset({"disable", "false", "off", "0"})


@dataclass
class _Socket:
    """
    A socket lighttpd listens on: C{token} as written, and the block whose
    directives apply to it (the global scope for server.bind/server.port
    without a block of its own).
    """

    token: str
    block: Block
    pos: Pos | None
    isGlobal: bool = False


@dataclass
class _Listen:
    """
    A socket's listen endpoint. C{wildcard} is C{"v4"} or C{"v6"} for every
    address of one family, else C{""}; C{variant} holds what else shapes the
    endpoint (TLS options, PROXY protocol), for comparing two of them.
    """

    endpoint: str
    wildcard: str
    port: int
    socket: _Socket
    variant: str
    tls: ListenTLSConfig | None = None


# The directives a $HTTP["host"] route may set.
_ROUTE_KEYS = ("sockproxy.server", "sockproxy.balance")


@dataclass
class _Server:
    """
    One C{sockproxy.server} definition, read.
    """

    backends: tuple[BackendConfig, ...]
    idleTimeout: float


# What makes sockets one proxy: the same sockproxy.server (by identity), the
# same balancer, the same routes, the same TLS termination and the same
# access rules.
_Group = tuple[int, str, tuple[RouteConfig, ...], ListenTLSConfig | None, tuple[str, ...]]
_REMOTEIP = '$HTTP["remoteip"]'


class Mapper:
    """
    Reads what sockproxy needs from an evaluated config tree.
    """

    def __init__(
        self,
        ev: Evaluator,
        source: str,
        resolve: Resolver,
        balancers: frozenset[str],
        dualStack: bool,
    ) -> None:
        self.ev = ev
        self.root = ev.root
        self.source = source
        self.resolve = resolve
        self.balancers = balancers
        self.dualStack = dualStack
        self.problems: list[Problem] = []
        self.notices: list[str] = []
        self.used: set[int] = set()
        self.servers: dict[int, _Server | None] = {}
        self.tlsBySocket: dict[int, ListenTLSConfig | None | Literal[False]] = {}

    # -- helpers

    def error(self, pos: Pos | None, key: str, message: str) -> None:
        problem = (Problem(self.source, None, key, message) if pos is None
                   else problemAt(pos, key, message))
        if problem not in self.problems:
            self.problems.append(problem)

    def notice(self, pos: Pos | None, key: str, message: str) -> None:
        if pos is None:
            text = str(Problem(self.source, None, key, message))
        else:
            text = str(Problem(pos.source, pos.line, key, message))
        if text not in self.notices:
            self.notices.append(text)

    def setting(self, block: Block, key: str) -> Assignment | None:
        """
        The directive C{key} as it applies to a socket's C{block}: set there,
        or else globally (lighttpd patches a connection's config with every
        matching condition, over the global values).
        """
        found = block.values.get(key)
        if found is None and block is not self.root:
            found = self.root.values.get(key)
        if found is not None:
            self.used.add(id(found))
        return found

    def integer(self, value: Value, pos: Pos, key: str, what: str, minimum: int,
                maximum: int | None = None) -> int | None:
        if isinstance(value, Int):
            number = value.number
        elif isinstance(value, Str) and value.text.strip().isdigit() and value.text.isascii():
            # lighttpd reads a string of digits where it wants a number.
            number = int(value.text.strip())
        else:
            self.error(pos, key, f"{what}must be an integer, not {describeValue(value)}")
            return None
        if number < minimum or (maximum is not None and number > maximum):
            bound = f"{minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
            self.error(pos, key, f"{what}must be {bound}, not {number}")
            return None
        return number

    def boolean(self, value: Value, pos: Pos, key: str, what: str = "") -> bool | None:
        if isinstance(value, Int):
            return value.number != 0
        if isinstance(value, Str):
            word = value.text.strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
        self.error(pos, key, f'{what}must be "enable" or "disable", not {describeValue(value)}')
        return None

    def string(self, value: Value, pos: Pos, key: str, what: str = "") -> str | None:
        if isinstance(value, Str):
            return value.text
        self.error(pos, key, f"{what}must be a string, not {describeValue(value)}")
        return None

    def flag(self, block: Block, key: str) -> bool:
        found = self.setting(block, key)
        if found is None:
            return False
        return bool(self.boolean(found.value, found.pos, key))

    # -- the whole config

    def run(self) -> Config:
        self.checkConditions()
        sockets, served = self.sockets()
        modules = self.root.values.get("server.modules")
        if modules is not None:
            self.used.add(id(modules))
        listens: list[tuple[_Group, _Listen]] = []
        order: list[_Group] = []
        proxies: dict[_Group, tuple[str, _Server, str, tuple[RouteConfig, ...]]] = {}
        tlsOf: dict[tuple[int, str, tuple[RouteConfig, ...]], tuple[str, bool]] = {}
        debugLevels: list[tuple[int, Pos]] = []
        for sock in sockets:
            chosen = self.clientServer(sock)
            if chosen is None:
                served.append(sock.token)
                continue
            server, access = chosen
            definition = self.server(server)
            balance = self.balance(sock.block)
            debug = self.setting(sock.block, "sockproxy.debug")
            if debug is not None:
                level = self.integer(debug.value, debug.pos, "sockproxy.debug", "", 0)
                if level is not None:
                    debugLevels.append((level, debug.pos))
            listen = self.listen(sock)
            if definition is None or balance is None or listen is None:
                continue
            routes = self.routes(sock, server, balance)
            if routes is None:
                continue
            group = (id(server), balance, routes, listen.tls, access)
            same = tlsOf.setdefault(group[:3], (sock.token, listen.tls is not None))
            if same[1] != (listen.tls is not None):
                self.notice(sock.pos, "sockproxy.server", f"{quoted(sock.token)} and "
                            f"{quoted(same[0])} share it, but only one terminates TLS: "
                            "they are two proxies, each balancing on its own")
            if group not in proxies:
                order.append(group)
                proxies[group] = (sock.token, definition, balance, routes)
            listens.append((group, listen))
        listenByGroup = self.dualStackListeners(listens)
        if served:
            self.notice(None, "", "lighttpd's HTTP socket(s) without sockproxy.server are not "
                        "served (sockproxy only proxies): " + ", ".join(served))
        self.checkModules(modules)
        debugLevel = self.debugLevel(debugLevels)
        shutdownTimeout = self.shutdownTimeout()
        workers = self.checkServerLevel()
        self.noticeIgnored()
        if not order and not self.problems:
            self.error(None, "sockproxy.server",
                       "not set for any socket: nothing to proxy (sockproxy runs only the "
                       "mod_sockproxy part of a lighttpd config)")
        if self.problems:
            raise ConfigError(self.problems)
        result: list[ProxyConfig] = []
        for group in order:
            name, definition, balance, routes = proxies[group]
            result.append(ProxyConfig(
                name=name,
                listen=tuple(listenByGroup[group]),
                backends=definition.backends,
                balance=balance,
                idleTimeout=definition.idleTimeout,
                routes=routes,
                tls=group[3],
                protection=Protection(access=group[4]),
            ))
        return Config(
            proxies=tuple(result), debug=debugLevel, source=self.source,
            notices=tuple(self.notices), shutdownTimeout=shutdownTimeout, workers=workers,
        )

    def checkConditions(self) -> None:
        """
        sockproxy directives count only globally and directly in a top-level
        C{$SERVER["socket"] == ...} block: a backend is chosen when the
        connection is accepted, and no other condition can be honoured then.
        """
        for block in self.ev.blocks.values():
            if block is self.root or self.isSocketBlock(block):
                continue
            assert block.condition is not None
            hostRoute = self.isHostBlock(block)
            for key, assignment in block.values.items():
                if not key.startswith("sockproxy."):
                    continue
                self.used.add(id(assignment))
                condition = block.condition
                if hostRoute and key in _ROUTE_KEYS:
                    continue
                if self.isClientBlock(block):
                    if key != "sockproxy.server":
                        self.error(assignment.pos, key, f"inside {condition.text}: only "
                                   "sockproxy.server (a socket's own, or ()) can be set per "
                                   "client address: it becomes the proxy's access rules")
                    continue
                if hostRoute:
                    why = (f"inside {condition.text}: only sockproxy.server and "
                           "sockproxy.balance can be set per server name")
                elif condition.isSocket:
                    why = ("a $SERVER[\"socket\"] block inside another condition is not "
                           "supported: write it at the top level")
                elif self.isRemoteIP(condition):
                    why = (f"inside {condition.text}: a {_REMOTEIP} block becomes access "
                           "rules only at the top level or directly inside a "
                           "$SERVER[\"socket\"] block")
                elif condition.variable == "HTTP" and condition.field == "host":
                    why = (f"inside {condition.text}: only $HTTP[\"host\"] == \"name\" and "
                           "$HTTP[\"host\"] =$ \".domain\", at the top level or directly "
                           "inside a $SERVER[\"socket\"] block, become routes by TLS server "
                           "name")
                else:
                    why = (f"inside {condition.text}: sockproxy honours sockproxy directives "
                           "only globally and directly inside $SERVER[\"socket\"] == \"...\" "
                           "blocks")
                self.error(assignment.pos, key, why)
        if "sockproxy.server" in self.root.values:
            for block in self.ev.blocks.values():
                if block.condition is not None and block.condition.isSocket \
                        and not self.isSocketBlock(block):
                    self.error(block.condition.pos, "$SERVER[\"socket\"]",
                               f"{quoted(block.condition.value)} inside another condition: "
                               "lighttpd would proxy it with the global sockproxy.server; "
                               "sockproxy needs $SERVER[\"socket\"] blocks at the top level")

    def isHostBlock(self, block: Block) -> bool:
        """
        Whether C{block} is a C{$HTTP["host"]} condition that becomes a
        route by TLS server name: C{== "name"} or C{=$ ".domain"}, at the top
        level or directly inside a top-level C{$SERVER["socket"]} block.
        """
        condition = block.condition
        return (condition is not None and condition.variable == "HTTP"
                and condition.field == "host" and condition.op in ("==", "=$")
                and block.parent is not None
                and (block.parent is self.root or self.isSocketBlock(block.parent)))

    @staticmethod
    def isRemoteIP(condition: Condition) -> bool:
        return condition.variable == "HTTP" and condition.field in ("remoteip", "remote-ip")

    def isClientBlock(self, block: Block) -> bool:
        """
        Whether C{block} is a C{$HTTP["remoteip"]} condition whose
        C{sockproxy.server} becomes access rules: at the top level or
        directly inside a top-level C{$SERVER["socket"]} block.
        """
        condition = block.condition
        return (condition is not None and self.isRemoteIP(condition)
                and block.parent is not None
                and (block.parent is self.root or self.isSocketBlock(block.parent)))

    def clientCondition(self, block: Block) -> tuple[bool, Network] | None:
        """
        A client block's condition: (C{True} for C{==}, C{False} for
        C{!=}; the network), or L{None} after an error.
        """
        condition = block.condition
        assert condition is not None
        if condition.op == "else" or condition.chained:
            self.error(condition.pos, _REMOTEIP, f"{condition.text}: 'else' is not supported "
                       "around sockproxy.server: write each block's own condition "
                       f"({_REMOTEIP} == or != \"address[/bits]\")")
            return None
        if condition.op not in ("==", "!="):
            self.error(condition.pos, _REMOTEIP, f"{condition.text}: only == and != "
                       "\"address[/bits]\" become access rules (=~, !~, =^ and =$ are not "
                       "supported around sockproxy.server)")
            return None
        try:
            network = parseNetwork(condition.value)
        except ValueError:
            self.error(condition.pos, _REMOTEIP, f"{quoted(condition.value)} is not an "
                       "address or a network (10.0.0.0/8, 2001:db8::/32)")
            return None
        return condition.op == "==", network

    def clientServer(self, sock: _Socket) -> tuple[Assignment, tuple[str, ...]] | None:
        """
        The C{sockproxy.server} of a socket and its access rules: lighttpd
        applies the global value, then each matching condition in the order
        written (the socket's own block, and the C{$HTTP["remoteip"]} blocks
        at the top level or inside it), at accept; the last that sets
        C{sockproxy.server} decides, C{()} meaning "not proxied". The blocks
        may turn proxying on and off, not choose other backends.

        @return: the definition and the access rules; L{None} when the socket
            is proxied for no client (or after an error).
        """
        key = "sockproxy.server"
        steps = [
            (block, block.values[key]) for block in self.ev.blocks.values()
            if key in block.values and block is not self.root and (
                block is sock.block or (self.isClientBlock(block) and (
                    block.parent is self.root or block.parent is sock.block)))
        ]
        if all(block is sock.block for block, _ in steps):
            server = self.setting(sock.block, key)
            return None if server is None else (server, ())
        base = self.setting(self.root, key)
        proxied = base is not None and not _isOff(base.value)
        chosen = base if proxied else None
        blocks: list[tuple[bool, Network, bool]] = []
        ok = True
        for block, server in steps:
            self.used.add(id(server))
            on = not _isOff(server.value)
            if on and chosen is None:
                chosen = server
            elif on and chosen is not None and not self.sameServer(chosen, server):
                inside = f"inside {block.condition.text}: " if block.condition else ""
                self.error(server.pos, key, f"{inside}other backends than at {chosen.pos}: "
                           "backends chosen by the client's address are not supported; a "
                           f"{_REMOTEIP} block may only turn proxying on (with the same "
                           "backends) or off (sockproxy.server = ()): that becomes the "
                           "proxy's access rules")
                ok = False
            if block is sock.block:
                # Matches every connection: what came before no longer counts.
                proxied, blocks = on, []
                continue
            condition = self.clientCondition(block)
            if condition is None:
                ok = False
                continue
            blocks.append((condition[0], condition[1], on))
        if not ok or chosen is None:
            return None
        access = accessRules(proxied, blocks)
        if access:
            where = steps[-1][0].condition
            assert where is not None
            parts = self.splitSocket(sock.token, self.globalPort())
            if parts is not None and parts[0] == "unix":
                self.error(where.pos, _REMOTEIP, f"{quoted(sock.token)} is a unix socket: "
                           "its clients have no address to match")
                return None
            if self.flag(sock.block, "extforward.hap-PROXY"):
                self.error(where.pos, _REMOTEIP, f"{quoted(sock.token)}: not supported with "
                           "extforward.hap-PROXY (lighttpd matches the proxy's address, "
                           "not the one in the PROXY header)")
                return None
        return chosen, access

    def sameServer(self, one: Assignment, other: Assignment) -> bool:
        if one is other:
            return True
        first, second = self.server(one), self.server(other)
        # After an error in either, that error is the one to report.
        return first is None or second is None or first == second

    def routes(self, sock: _Socket, server: Assignment, balance: str,
               ) -> tuple[RouteConfig, ...] | None:
        """
        The routes of a socket: its C{$HTTP["host"]} blocks (those at the
        top level and those inside its own block), each setting its own
        C{sockproxy.server}, as lighttpd 1.4.83+ chooses backends by the
        TLS SNI name.

        @return: the routes, or L{None} after an error.
        """
        blocks = [b for b in self.ev.blocks.values() if self.isHostBlock(b)
                  and (b.parent is self.root or b.parent is sock.block)]
        routes: list[RouteConfig] = []
        seen: dict[str, Pos] = {}
        ok = True
        labels = set()
        definition = self.server(server)
        if definition is not None:
            labels = {b.label for b in definition.backends}
        for block in blocks:
            condition = block.condition
            assert condition is not None
            assignment = block.values.get("sockproxy.server")
            if assignment is None:
                continue
            written = condition.value if condition.op == "==" else "*" + condition.value
            if condition.op == "=$" and not condition.value.startswith("."):
                self.error(condition.pos, '$HTTP["host"]', f"=$ {quoted(condition.value)}: "
                           "a suffix becomes a route only when it starts with \".\" "
                           "(=$ \".example.com\" is *.example.com)")
                ok = False
                continue
            pattern, error = checkPattern(written)
            if error:
                self.error(condition.pos, '$HTTP["host"]', error)
                ok = False
                continue
            if pattern in seen:
                self.error(condition.pos, '$HTTP["host"]', f"{quoted(condition.value)}: "
                           f"server name {pattern!r} is already routed at {seen[pattern]}")
                ok = False
                continue
            seen[pattern] = condition.pos
            routed = self.server(assignment)
            routeBalance = (self.balance(block) if "sockproxy.balance" in block.values
                            else balance)
            if routed is None or routeBalance is None:
                ok = False
                continue
            backends = []
            for backend in routed.backends:
                label = backend.label
                if label in labels:
                    # Labels name backends on the status page: one per proxy.
                    label = f"{label}@{pattern}"
                    self.notice(assignment.pos, "sockproxy.server", f"host "
                                f"{quoted(backend.label)} is labelled {quoted(label)}: its "
                                "label is taken in this proxy")
                labels.add(label)
                backends.append(replace(backend, label=label))
            routes.append(RouteConfig(pattern, (pattern,), tuple(backends), routeBalance))
        if routes and self.tls(sock) is None:
            self.notice(sock.pos, '$HTTP["host"]', f"{quoted(sock.token)} is not TLS: lighttpd "
                        "chooses by $HTTP[\"host\"] only on TLS sockets; here the server name "
                        "is read from the client's TLS ClientHello (TLS passthrough), waiting "
                        "at most 5 s")
        return tuple(routes) if ok else None

    def isSocketBlock(self, block: Block) -> bool:
        return (block.parent is self.root and block.condition is not None
                and block.condition.isSocket)

    # -- sockets and listen endpoints

    def sockets(self) -> tuple[list[_Socket], list[str]]:
        """
        Every socket lighttpd would listen on, in config order, the
        server.bind/server.port one first.

        @return: the sockets, and the tokens of those that are HTTP-only
            for another reason (nested in a condition).
        """
        bind = self.setting(self.root, "server.bind")
        port = self.globalPort()
        host = ""
        portSetting = self.root.values.get("server.port")
        bindPos = (bind.pos if bind is not None
                   else portSetting.pos if portSetting is not None else None)
        if bind is not None:
            host = self.string(bind.value, bind.pos, "server.bind") or ""
        if host.startswith("/"):
            token = host
        elif ":" in host and not host.startswith("["):
            token = f"[{host}]:{port}"
        elif host.startswith("["):
            token = host if "]:" in host else f"{host}:{port}"
        else:
            token = f"{host}:{port}"
        sockets: list[_Socket] = [_Socket(token, self.root, bindPos, isGlobal=True)]
        seen: dict[tuple[str, str, int], _Socket] = {}
        globalKey = self.splitSocket(token, port)
        if globalKey is not None:
            seen[globalKey] = sockets[0]
        nested: list[str] = []
        for block in self.ev.blocks.values():
            condition = block.condition
            if condition is None or not condition.isSocket:
                continue
            if not self.isSocketBlock(block):
                nested.append(condition.value)
                continue
            key = self.splitSocket(condition.value, port)
            if key is None:
                self.error(condition.pos, '$SERVER["socket"]', f"{quoted(condition.value)}: "
                           "not a socket: give \"ip:port\", \":port\", \"[ipv6]:port\" or a "
                           "unix socket path")
                continue
            if key in seen:
                other = seen[key]
                if other.isGlobal and other.block is self.root:
                    # The block configures the server.bind/server.port socket.
                    other.block = block
                    continue
                self.error(condition.pos, '$SERVER["socket"]', f"{quoted(condition.value)} "
                           f"is the same socket as {quoted(other.token)}"
                           + (f" ({other.pos})" if other.pos else ""))
                continue
            sock = _Socket(condition.value, block, condition.pos)
            seen[key] = sock
            sockets.append(sock)
        return sockets, nested

    def globalPort(self) -> int:
        found = self.setting(self.root, "server.port")
        if found is None:
            # lighttpd: 443 when TLS is enabled globally, else 80.
            return 443 if self.flag(self.root, "ssl.engine") else 80
        number = self.integer(found.value, found.pos, "server.port", "", 1, 65535)
        return number if number is not None else 80

    @staticmethod
    def splitSocket(token: str, defaultPort: int) -> tuple[str, str, int] | None:
        """
        Split a socket token as lighttpd's network.c does.

        @return: (C{"unix"}, path, 0) or (C{"tcp"}, host, port) with the host
            without brackets (C{""} = every address); L{None} if invalid.
        """
        if token.startswith("/"):
            return ("unix", token, 0)
        if token.startswith("["):
            end = token.find("]")
            if end < 0:
                return None
            host, rest = token[1:end], token[end + 1 :]
            if not host:
                return None
            if rest == "":
                return ("tcp", host, defaultPort)
            if not rest.startswith(":"):
                return None
            portText = rest[1:]
        else:
            if token.count(":") > 1:
                return None  # IPv6 needs brackets
            host, sep, portText = token.partition(":")
            if not sep:
                return ("tcp", host, defaultPort) if host else None
        if not (portText.isascii() and portText.isdigit()):
            return None
        port = int(portText)
        if not 1 <= port <= 65535:
            return None
        return ("tcp", host, port)

    def listen(self, sock: _Socket) -> _Listen | None:
        """
        The Twisted server endpoint string for a sockproxy socket.
        """
        parts = self.splitSocket(sock.token, self.globalPort())
        key = '$SERVER["socket"]' if not sock.isGlobal else "server.bind"
        if parts is None:
            self.error(sock.pos, key, f"{quoted(sock.token)}: not a socket")
            return None
        kind, host, port = parts
        if kind == "unix" and self.flag(sock.block, "ssl.engine"):
            self.error(sock.pos, key, f"{quoted(sock.token)}: TLS (ssl.engine) on a unix "
                       "socket is not supported")
            return None
        tls = self.tls(sock)
        if tls is False:
            return None
        proxyProtocol = self.flag(sock.block, "extforward.hap-PROXY")
        if kind == "unix":
            endpoint = "unix:" + _escape(host)
            wildcard = ""
        else:
            wildcard = ""
            if host == "":
                if self.flag(sock.block, "server.use-ipv6"):
                    interface = "::"
                    wildcard = "v6"
                else:
                    interface = ""
                    wildcard = "v4"
            elif ":" in host:
                interface = host
                wildcard = "v6" if host == "::" else ""
            else:
                try:
                    interface = self.resolve(host)
                except OSError as e:
                    self.error(sock.pos, key, f"{quoted(sock.token)}: cannot resolve "
                               f"{host!r}: {e.strerror or e}")
                    return None
                if interface == "0.0.0.0":
                    wildcard = "v4"
            family = "tcp6" if ":" in interface else "tcp"
            options = f":interface={_escape(interface)}" if interface else ""
            # TLS is the proxy's (tls-certificates), not the endpoint's.
            endpoint = f"{family}:{port}{options}"
        if proxyProtocol:
            endpoint = "haproxy:" + endpoint
            self.notice(sock.pos, key, f"{quoted(sock.token)}: extforward.hap-PROXY: a "
                        "PROXY protocol header is required from every client "
                        "(extforward.forwarder is not consulted)")
        error = checkEndpoint(endpoint, server=True)
        if error:
            self.error(sock.pos, key, error)
            return None
        return _Listen(endpoint, wildcard, port, sock, f"{proxyProtocol}{tls!r}", tls)

    def tls(self, sock: _Socket) -> ListenTLSConfig | None | Literal[False]:
        """
        The TLS termination of a socket with ssl.engine enabled (read once
        per socket); L{None} for a plain socket; C{False} after an error.
        """
        if id(sock) not in self.tlsBySocket:
            self.tlsBySocket[id(sock)] = self._tls(sock)
        return self.tlsBySocket[id(sock)]

    def _tls(self, sock: _Socket) -> ListenTLSConfig | None | Literal[False]:
        engine = self.setting(sock.block, "ssl.engine")
        if engine is None or not self.boolean(engine.value, engine.pos, "ssl.engine"):
            return None
        pem = self.setting(sock.block, "ssl.pemfile")
        if pem is None:
            self.error(engine.pos, "ssl.engine", f"enabled for {quoted(sock.token)} but "
                       "ssl.pemfile is not set")
            return False
        pemfile = self.string(pem.value, pem.pos, "ssl.pemfile")
        if pemfile is None:
            return False
        # A lighttpd pemfile holds the certificate and, without ssl.privkey,
        # the key.
        keyfile: str | None = pemfile
        privkey = self.setting(sock.block, "ssl.privkey")
        if privkey is not None:
            keyfile = self.string(privkey.value, privkey.pos, "ssl.privkey")
        if keyfile is None:
            return False
        before = len(self.problems)
        certificate, error, notices = readCertificatePair(pemfile, keyfile)
        if certificate is None:
            where = privkey if privkey is not None and repr(keyfile) in error else pem
            self.error(where.pos, where.key, error)
        for text in notices:
            self.notice(pem.pos, "ssl.pemfile", text)
        dh = self.setting(sock.block, "ssl.dh-file")
        if dh is not None:
            self.notice(dh.pos, "ssl.dh-file", "not used: sockproxy's TLS uses ECDHE key "
                        "exchange, not DHE")
        verify = self.clientVerification(sock)
        minVersion = self.minVersion(sock)
        if certificate is None or verify is None or len(self.problems) != before:
            return False
        clientCA, clientCAPEM, verifyClient = verify
        return ListenTLSConfig(
            certificates=(certificate,), clientCA=clientCA, clientCAPEM=clientCAPEM,
            verifyClient=verifyClient, minVersion=minVersion,
        )

    def clientVerification(self, sock: _Socket) -> tuple[str, bytes, str] | None:
        """
        The client certificate checking of a TLS socket, from
        C{ssl.verifyclient.*} and the CA file, as lighttpd's mod_openssl
        reads them.

        @return: the CA file, its contents and C{tls-verify-client}'s
            value; or L{None} after an error.
        """
        activate = self.setting(sock.block, "ssl.verifyclient.activate")
        if activate is None or not self.boolean(activate.value, activate.pos,
                                                "ssl.verifyclient.activate"):
            return "", b"", "off"
        for refused, why in _REFUSED_VERIFY.items():
            found = self.setting(sock.block, refused)
            if found is not None:
                self.error(found.pos, refused, why)
                return None
        # ssl.verifyclient.ca-file (lighttpd 1.4.60+) before ssl.ca-file.
        ca = (self.setting(sock.block, "ssl.verifyclient.ca-file")
              or self.setting(sock.block, "ssl.ca-file"))
        if ca is None:
            self.error(activate.pos, "ssl.verifyclient.activate", "needs ssl.ca-file (or "
                       "ssl.verifyclient.ca-file): the authorities clients' certificates "
                       "must chain to")
            return None
        caFile = self.string(ca.value, ca.pos, ca.key)
        if caFile is None:
            return None
        pem, error = readClientCA(caFile)
        if error:
            self.error(ca.pos, ca.key, error)
            return None
        verify = "required"
        enforce = self.setting(sock.block, "ssl.verifyclient.enforce")
        if enforce is not None:
            enforced = self.boolean(enforce.value, enforce.pos, "ssl.verifyclient.enforce")
            if enforced is None:
                return None
            if not enforced:
                verify = "optional"
                self.notice(enforce.pos, "ssl.verifyclient.enforce", "disabled: a client "
                            "without a certificate is accepted, but one whose certificate "
                            "does not verify is refused (lighttpd accepts it, and tells only "
                            "HTTP backends, which a socket proxy has not)")
        depth = self.setting(sock.block, "ssl.verifyclient.depth")
        if depth is not None:
            limit = self.integer(depth.value, depth.pos, "ssl.verifyclient.depth", "", 0)
            if limit is None:
                return None
            if limit < _VERIFY_DEPTH - 1:
                self.error(depth.pos, "ssl.verifyclient.depth", f"{limit}: a limit below "
                           f"{_VERIFY_DEPTH - 1} (lighttpd's default) is not supported: "
                           "sockproxy accepts a client's chain of up to "
                           f"{_VERIFY_DEPTH} certificates above its own")
                return None
            if limit != _VERIFY_DEPTH:
                self.notice(depth.pos, "ssl.verifyclient.depth", f"{limit}: sockproxy "
                            f"accepts a client's chain of up to {_VERIFY_DEPTH} certificates "
                            "above its own, as ssl.verifyclient.depth = "
                            f"{_VERIFY_DEPTH} does")
        return caFile, pem, verify

    def minVersion(self, sock: _Socket) -> str:
        """
        The lowest TLS version of a TLS socket: C{"1.3"} when
        C{ssl.openssl.ssl-conf-cmd} sets C{"MinProtocol" => "TLSv1.3"}, else
        C{"1.2"} (lighttpd 1.4.69's default too).
        """
        commands = self.setting(sock.block, "ssl.openssl.ssl-conf-cmd")
        if commands is None:
            return DEFAULT_TLS_MIN_VERSION
        key = "ssl.openssl.ssl-conf-cmd"
        if not isinstance(commands.value, Arr):
            self.notice(commands.pos, key, f"is not used: not an array of \"command\" => "
                        f"\"value\" ({describeValue(commands.value)})")
            return DEFAULT_TLS_MIN_VERSION
        version = DEFAULT_TLS_MIN_VERSION
        ignored: list[str] = []
        for entry in commands.value.entries:
            name = (entry.key or "").lower()
            text = entry.value.text.strip() if isinstance(entry.value, Str) else ""
            if name != "minprotocol":
                ignored.append(entry.key or describeValue(entry.value))
            elif text.lower() == "tlsv1.3":
                version = "1.3"
            elif text.lower() in ("tlsv1.2", "none", "tlsv1.1", "tlsv1", "sslv3"):
                if text.lower() != "tlsv1.2":
                    self.notice(entry.pos, key, f"MinProtocol {quoted(text)}: sockproxy "
                                "accepts TLS 1.2 and 1.3 only")
                version = DEFAULT_TLS_MIN_VERSION
            else:
                self.notice(entry.pos, key, f"MinProtocol {describeValue(entry.value)} is "
                            "not understood: TLS 1.2 and 1.3 are accepted")
        if ignored:
            self.notice(commands.pos, key, "only MinProtocol is used; ignored: "
                        + ", ".join(ignored) + " (sockproxy's TLS defaults apply)")
        return version

    def dualStackListeners(
        self, listens: Sequence[tuple[_Group, _Listen]]
    ) -> dict[_Group, list[str]]:
        """
        The listen endpoints of each proxy.

        lighttpd binds C{[::]:P} IPv6-only beside C{0.0.0.0:P}. Twisted's
        IPv6 listener on C{::} takes IPv4 connections too where the system
        is dual-stack (C{net.ipv6.bindv6only = 0}, Linux's default), so that
        there the IPv4 wildcard listener is left out when the IPv6 one serves
        the same proxy the same way, and is an error otherwise.
        """
        result: dict[_Group, list[str]] = {group: [] for group, _ in listens}
        v6: dict[int, tuple[_Group, _Listen]] = {}
        if self.dualStack:
            for group, listen in listens:
                if listen.wildcard == "v6":
                    v6.setdefault(listen.port, (group, listen))
        for group, listen in listens:
            twin = v6.get(listen.port) if listen.wildcard == "v4" else None
            if twin is None:
                result[group].append(listen.endpoint)
                continue
            twinGroup, twinListen = twin
            token, twinToken = quoted(listen.socket.token), quoted(twinListen.socket.token)
            if twinGroup != group or twinListen.variant != listen.variant:
                self.error(listen.socket.pos or twinListen.socket.pos, '$SERVER["socket"]',
                           f"{token} and {twinToken} cannot both listen: Twisted's IPv6 "
                           "listener on :: takes IPv4 connections too on this system "
                           "(net.ipv6.bindv6only = 0), and the two are configured "
                           "differently: configure them alike, or drop one")
                continue
            self.notice(listen.socket.pos, "", f"{token} is served by the IPv6 listener of "
                        f"{twinToken}, which takes IPv4 connections too on this system")
        return result

    # -- sockproxy.server, .balance, .debug

    def balance(self, block: Block) -> str | None:
        found = self.setting(block, "sockproxy.balance")
        if found is None:
            return DEFAULT_BALANCE
        name = self.string(found.value, found.pos, "sockproxy.balance")
        if name is None:
            return None
        name = name.strip()
        if not name:
            return DEFAULT_BALANCE
        if name not in self.balancers:
            self.error(found.pos, "sockproxy.balance", unknownBalancer(name, self.balancers)
                       + " (lighttpd would log an error and use fair)")
            return None
        return name

    def debugLevel(self, levels: Sequence[tuple[int, Pos]]) -> int:
        if not levels:
            return 0
        highest, pos = max(levels, key=lambda item: item[0])
        if len({level for level, _ in levels}) > 1:
            self.notice(pos, "sockproxy.debug", f"differs between sockets: the highest, "
                        f"{highest}, applies to all of them")
        if highest > 3:
            self.notice(pos, "sockproxy.debug", f"{highest} is more than 3: 3 is used")
            highest = 3
        return highest

    def server(self, assignment: Assignment) -> _Server | None:
        """
        Read one sockproxy.server definition (once, however many sockets
        share it).
        """
        if id(assignment) in self.servers:
            return self.servers[id(assignment)]
        self.servers[id(assignment)] = None
        before = len(self.problems)
        result = self._server(assignment)
        if len(self.problems) != before:
            result = None
        self.servers[id(assignment)] = result
        return result

    def _server(self, assignment: Assignment) -> _Server | None:
        key = "sockproxy.server"
        value = assignment.value
        if not isinstance(value, Arr):
            self.error(assignment.pos, key, f"must be an array like {_SERVER_EXAMPLE}, "
                       f"not {describeValue(value)}")
            return None
        if not value.entries:
            self.error(assignment.pos, key, f"is empty: write {_SERVER_EXAMPLE}")
            return None
        extensions: list[Entry] = []
        for entry in value.entries:
            if entry.key is None or not isinstance(entry.value, Arr):
                self.error(entry.pos, key, f"must be an array like {_SERVER_EXAMPLE}: each "
                           "element is \"\" => ( hosts ), not " + describeValue(entry.value))
                continue
            if entry.key not in ("", "/"):
                self.error(entry.pos, key, f"extension {quoted(entry.key)}: must be \"\" or "
                           "\"/\" (mod_sockproxy matches the path \"/\" only; lighttpd would "
                           "never use these hosts)")
                continue
            extensions.append(entry)
        if not extensions:
            return None
        if len(extensions) > 1:
            self.notice(extensions[1].pos, key, f"extension {quoted(extensions[1].key or '')} "
                        f"is never used: the first, {quoted(extensions[0].key or '')}, "
                        "matches every connection")
        hosts = extensions[0].value
        assert isinstance(hosts, Arr)
        if not hosts.entries:
            self.error(extensions[0].pos, key, "has no hosts")
            return None
        read: list[tuple[str, BackendConfig, float, Entry]] = []
        for entry in hosts.entries:
            host = self.host(entry)
            if host is not None:
                read.append(host)
        if len(read) != len(hosts.entries):
            return None
        backends = self.labelBackends(read, assignment)
        timeouts = [t for _, _, t, _ in read]
        positive = [t for t in timeouts if t > 0]
        idle = min(positive) if positive else 0.0
        if positive and len(set(timeouts)) > 1:
            self.notice(assignment.pos, key, "read-timeout/write-timeout differ between hosts: "
                        f"the smallest set, {idle:g}s, is the idle timeout of every session of "
                        "this proxy")
        return _Server(backends=backends, idleTimeout=idle)

    def labelBackends(
        self, read: Sequence[tuple[str, BackendConfig, float, Entry]], assignment: Assignment
    ) -> tuple[BackendConfig, ...]:
        """
        Give every backend a unique label: lighttpd labels unlabeled hosts
        all C{""} (and merges their statistics); here they are named after
        their address.
        """
        key = "sockproxy.server"
        taken = {label for label, _, _, _ in read if label}
        result: list[BackendConfig] = []
        used: set[str] = set()
        generated: list[str] = []
        endpoints: dict[str, Entry] = {}
        for label, backend, _, entry in read:
            if backend.endpoint in endpoints:
                first = endpoints[backend.endpoint]
                self.error(entry.pos, key, f"{_addressLabel(backend)} is already a host, at "
                           f"{first.pos}: sockproxy needs each backend once; give it a "
                           "\"weight\" instead")
                continue
            endpoints[backend.endpoint] = entry
            # Labels written are unique: they are keys of one array.
            unique = label
            if not label:
                name = unique = _addressLabel(backend)
                n = 2
                while unique in used or unique in taken:
                    unique = f"{name}#{n}"
                    n += 1
                generated.append(unique)
            used.add(unique)
            result.append(BackendConfig(
                endpoint=backend.endpoint, label=unique, weight=backend.weight,
                disableTime=backend.disableTime, connectTimeout=backend.connectTimeout,
                origin=backend.origin,
            ))
        if generated:
            self.notice(assignment.pos, key, "unlabeled hosts are labeled by their address: "
                        + ", ".join(generated) + " (lighttpd labels them all \"\")")
        return tuple(result)

    def host(self, entry: Entry) -> tuple[str, BackendConfig, float, Entry] | None:
        """
        Read one host of sockproxy.server.

        @return: its label (C{""} if none), the backend (labeled later), its
            idle timeout, and the entry; or L{None} after an error.
        """
        key = "sockproxy.server"
        # A blank label is no label (the native config refuses blank ones).
        label = entry.key if entry.key and entry.key.strip() else ""
        what = f"host {quoted(label)}: " if label else "host: "
        if not isinstance(entry.value, Arr):
            self.error(entry.pos, key, f"{what}must be an array of \"option\" => value, like "
                       f"( \"host\" => \"10.0.0.2\", \"port\" => 5432 ), not "
                       f"{describeValue(entry.value)}")
            return None
        before = len(self.problems)
        options: dict[str, Entry] = {}
        for option in entry.value.entries:
            if option.key is None:
                self.error(option.pos, key, f"{what}options are \"name\" => value pairs, "
                           f"not a bare value ({describeValue(option.value)})")
                continue
            options[option.key] = option
            name = option.key
            if name in _HOST_OPTIONS:
                continue
            dashed = name.replace("_", "-")
            if dashed != name and dashed in (_HOST_OPTIONS | _MEANINGLESS_HOST_OPTIONS):
                self.error(option.pos, key, f"{what}{quoted(name)}: write {quoted(dashed)} "
                           "(with '-', not '_')")
            elif name in _MEANINGLESS_HOST_OPTIONS:
                self.notice(option.pos, key, f"{what}{quoted(name)} is ignored: it concerns "
                            "HTTP gateways or spawned backends, not socket proxying")
            else:
                self.notice(option.pos, key, f"{what}unknown option {quoted(name)} is ignored "
                            "(as lighttpd ignores it)")
        if "bin-path" in options:
            self.error(options["bin-path"].pos, key, f"{what}bin-path: spawning backends is not "
                       "supported: start the backend yourself and give its host and port, or "
                       "socket")
            return None

        def text(name: str) -> str | None:
            option = options.get(name)
            if option is None:
                return None
            return self.string(option.value, option.pos, key, f"{what}{name}: ")

        def number(name: str, minimum: int, maximum: int | None = None) -> int | None:
            option = options.get(name)
            if option is None:
                return None
            return self.integer(option.value, option.pos, key, f"{what}{name}: ", minimum,
                                maximum)

        hostName = text("host")
        sock = text("socket")
        port = number("port", 1, 65535)
        disableTime = number("disable-time", 0)
        connectTimeout = number("connect-timeout", 0)
        readTimeout = number("read-timeout", 0)
        writeTimeout = number("write-timeout", 0)
        weight = number("weight", 1)
        fin = options.get("tcp-fin-propagate")
        if fin is not None:
            # Accepted for compatibility: half-close is always forwarded.
            self.boolean(fin.value, fin.pos, key, f"{what}tcp-fin-propagate: ")
        if connectTimeout == 0:
            option = options["connect-timeout"]
            self.error(option.pos, key, f"{what}connect-timeout: 0 (no limit) is not supported: "
                       "give the seconds a connect may take")
        if len(self.problems) != before:
            return None
        if hostName is not None and hostName.startswith("/") and port is not None:
            self.notice(options["port"].pos, key, f"{what}port is ignored: host "
                        f"{quoted(hostName)} is a unix socket")
            port = None
        try:
            endpoint, origin = backendFromHost(hostName, port, sock, self.resolve)
        except ValueError as e:
            where = options.get("socket") or options.get("host") or options.get("port") or entry
            if hostName is None and sock is None and port is None:
                self.error(where.pos, key, f"{what}needs \"host\" (and \"port\") or \"socket\"")
            else:
                self.error(where.pos, key, f"{what}{e}")
            return None
        error = checkEndpoint(endpoint, server=False)
        if error:
            self.error(entry.pos, key, f"{what}{error}")
            return None
        timeouts = [t for t in (readTimeout, writeTimeout) if t]
        backend = BackendConfig(
            endpoint=endpoint, label=label, weight=weight or 1,
            disableTime=float(DEFAULT_DISABLE_TIME if disableTime is None else disableTime),
            connectTimeout=float(connectTimeout or DEFAULT_CONNECT_TIMEOUT),
            origin=origin,
        )
        return label, backend, float(min(timeouts)) if timeouts else 0.0, entry

    # -- the rest

    def checkModules(self, modules: Assignment | None) -> None:
        names: list[str] = []
        if modules is not None and isinstance(modules.value, Arr):
            names = [e.value.text for e in modules.value.entries if isinstance(e.value, Str)]
        if "mod_sockproxy" not in names:
            where = modules.pos if modules is not None else None
            self.notice(where, "server.modules", "\"mod_sockproxy\" is not loaded: lighttpd "
                        "would not proxy with this config, sockproxy does")

    def shutdownTimeout(self) -> float:
        found = self.setting(self.root, "server.graceful-shutdown-timeout")
        value: Value | None = found.value if found is not None else None
        pos = found.pos if found is not None else None
        flags = self.setting(self.root, "server.feature-flags")
        if flags is not None and isinstance(flags.value, Arr):
            for entry in flags.value.entries:
                if entry.key == "server.graceful-shutdown-timeout":
                    value, pos = entry.value, entry.pos
        if value is None or pos is None:
            return DEFAULT_SHUTDOWN_TIMEOUT
        seconds = self.integer(value, pos, "server.graceful-shutdown-timeout", "", 0)
        if seconds is None:
            return DEFAULT_SHUTDOWN_TIMEOUT
        if seconds == 0:
            self.notice(pos, "server.graceful-shutdown-timeout", "0 (wait for ever) is not "
                        f"supported: sessions get {DEFAULT_SHUTDOWN_TIMEOUT:g}s")
            return DEFAULT_SHUTDOWN_TIMEOUT
        return float(seconds)

    def checkServerLevel(self) -> int:
        """
        Check the server-wide settings sockproxy cannot follow.

        @return: the worker processes C{server.max-worker} asks for (1
            without it).
        """
        result = 1
        workers = self.setting(self.root, "server.max-worker")
        if workers is not None:
            count = self.integer(workers.value, workers.pos, "server.max-worker", "", 0)
            if count is not None and count > 1:
                result = min(count, MAX_WORKERS)
                self.notice(workers.pos, "server.max-worker", f"{count} workers: sockproxy "
                            f"runs {result} worker processes (workers = {result}); each "
                            "keeps its own balancing state, as lighttpd's do")
        activation = self.setting(self.root, "server.systemd-socket-activation")
        if activation is not None and self.boolean(activation.value, activation.pos,
                                                   "server.systemd-socket-activation"):
            self.error(activation.pos, "server.systemd-socket-activation", "not supported for "
                       "lighttpd configs: use the native config with systemd: listen endpoints")
        return result

    def noticeIgnored(self) -> None:
        ignored: list[str] = []
        for assignment in self.ev.assignments:
            name = assignment.key
            if id(assignment) in self.used or name.startswith(("var.", "env.")):
                continue
            if name not in ignored:
                ignored.append(name)
        # A directive counts as used if any of its assignments was.
        usedNames = {a.key for a in self.ev.assignments if id(a) in self.used}
        ignored = [name for name in ignored if name not in usedNames]
        if ignored:
            described = [name + _IGNORED_HINTS.get(name, "") for name in ignored]
            self.notice(None, "", "ignored, not used by sockproxy: " + ", ".join(described))


def _isOff(value: Value) -> bool:
    """
    Whether a C{sockproxy.server} value is C{()}: lighttpd then does not
    proxy (the connection is HTTP).
    """
    return isinstance(value, Arr) and not value.entries


def _addressLabel(backend: BackendConfig) -> str:
    """
    A label for an unlabeled host, from what was written: C{host:port},
    C{[v6]:port} or the unix socket path.
    """
    fields = originFields(backend.origin)
    host = fields.get("host")
    sock = fields.get("socket")
    if isinstance(sock, str):
        return sock
    if isinstance(host, str):
        port = fields.get("port")
        if port is None:
            return host
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return backend.endpoint


def _escape(text: str) -> str:
    """
    Quote a value for an endpoint string: C{quoteStringArgument} escapes
    backslashes and colons; C{=} is escaped too, so that a positional
    argument holding one is not read as a keyword.
    """
    return quoteStringArgument(text).replace("=", "\\=")


def systemIsDualStack() -> bool:
    try:
        with open("/proc/sys/net/ipv6/bindv6only", encoding="ascii") as f:
            return f.read().strip() == "0"
    except OSError:
        return False
