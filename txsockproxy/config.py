"""
Immutable configuration objects, and loading and validating the native TOML format.

Everything a running proxy needs is checked here, once, at load time: a problem is
reported as a L{Problem} naming the file, the line where it is known, and the key, so
that a bad file gives one clear line per mistake and never a traceback.
"""

from __future__ import annotations

import re
import socket
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from twisted.internet.endpoints import (
    clientFromString,
    quoteStringArgument,
    serverFromString,
)

DEFAULT_CONNECT_TIMEOUT = 8.0
DEFAULT_DISABLE_TIME = 1.0
DEFAULT_HALF_CLOSED_TIMEOUT = 300.0
DEFAULT_BALANCE = "fair"
DEFAULT_PORT = 80


@dataclass(frozen=True)
class Problem:
    """
    One mistake in a configuration source.

    @ivar source: the file name (or C{"<command line>"}).
    @ivar line: the 1-based line number, or L{None} when it is not known.
    @ivar key: the dotted key the problem concerns, e.g. C{proxy[0].backend[1].port}.
    @ivar message: what is wrong, in words.
    """

    source: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        if self.key:
            return f"{where}: {self.key}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """
    A configuration could not be loaded; C{problems} lists every mistake found.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = tuple(problems)


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
    """

    endpoint: str
    label: str
    weight: int = 1
    disableTime: float = DEFAULT_DISABLE_TIME
    connectTimeout: float = DEFAULT_CONNECT_TIMEOUT
    origin: str = ""


@dataclass(frozen=True)
class ProxyConfig:
    """
    One proxy: listen endpoints sharing one pool of backends and one balancer.

    @ivar idleTimeout: seconds without a byte either way before a session is
        closed; 0 disables it.
    @ivar halfClosedTimeout: once one direction has ended, seconds without a
        byte in the other direction before the session is closed; 0 disables.
    """

    name: str
    listen: tuple[str, ...]
    backends: tuple[BackendConfig, ...]
    balance: str = DEFAULT_BALANCE
    idleTimeout: float = 0.0
    halfClosedTimeout: float = DEFAULT_HALF_CLOSED_TIMEOUT


@dataclass(frozen=True)
class Config:
    """
    A whole, validated configuration.

    @ivar source: where it was read from, for messages.
    """

    proxies: tuple[ProxyConfig, ...]
    debug: int = 0
    source: str = "<command line>"
    notices: tuple[str, ...] = field(default=(), compare=False)

    def describe(self) -> str:
        """
        Render the effective configuration for humans (used by C{--check}).
        """
        lines = [f"# effective configuration from {self.source}", f"debug = {self.debug}"]
        for proxy in self.proxies:
            lines.append("")
            lines.append(f"proxy {proxy.name!r}")
            for desc in proxy.listen:
                lines.append(f"  listen           {desc}")
            lines.append(f"  balance          {proxy.balance}")
            lines.append(f"  idle-timeout     {_seconds(proxy.idleTimeout)}")
            lines.append(f"  half-closed-timeout {_seconds(proxy.halfClosedTimeout)}")
            for b in proxy.backends:
                origin = f"  (from {b.origin})" if b.origin else ""
                lines.append(
                    f"  backend {b.label!r}: {b.endpoint}{origin}"
                    f"  weight={b.weight}"
                    f" connect-timeout={_seconds(b.connectTimeout)}"
                    f" disable-time={_seconds(b.disableTime)}"
                )
        return "\n".join(lines)


def _seconds(value: float) -> str:
    if value == 0:
        return "off"
    return f"{value:g}s"


# What a resolver looks like: (host) -> first address, or raise OSError.
Resolver = Callable[[str], str]


def resolveFirst(host: str) -> str:
    """
    Resolve C{host} to its first address, blocking, as lighttpd does at start-up.

    @raise OSError: the name does not resolve.
    """
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return str(infos[0][4][0])


class _PlaceholderReactor:
    """
    Stands in for a reactor while endpoint strings are only parsed: endpoint
    constructors store the reactor and use it when they connect or listen.
    """


def checkEndpoint(description: str, server: bool) -> str | None:
    """
    Parse a Twisted endpoint string without using it.

    @return: L{None} if C{description} parses, else the reason it does not.
    """
    if not description.strip():
        return "empty endpoint string"
    parse = serverFromString if server else clientFromString
    try:
        parse(_PlaceholderReactor(), description)
    except Exception as e:
        reason = str(e) or e.__class__.__name__
        return f"bad {'server' if server else 'client'} endpoint {description!r}: {reason}"
    return None


def backendFromHost(
    host: str | None, port: int | None, sock: str | None, resolve: Resolver
) -> tuple[str, str]:
    """
    Turn lighttpd-style C{host}/C{port}/C{socket} into a client endpoint string.

    A host starting with C{/} is a unix socket path; a DNS name is resolved now,
    to its first address; the port defaults to 80.

    @return: the endpoint string and a description of what was written.
    @raise ValueError: the combination is invalid or the name does not resolve.
    """
    if sock is not None:
        if host is not None or port is not None:
            raise ValueError("'socket' cannot be combined with 'host' or 'port'")
        return f"unix:path={quoteStringArgument(sock)}", f"socket = {sock!r}"
    if host is None:
        raise ValueError("needs 'endpoint', 'host' or 'socket'")
    if host.startswith("/"):
        if port is not None:
            raise ValueError("'port' makes no sense with a unix socket host")
        return f"unix:path={quoteStringArgument(host)}", f"host = {host!r}"
    if port is None:
        port = DEFAULT_PORT
    try:
        address = resolve(host)
    except OSError as e:
        raise ValueError(f"cannot resolve host {host!r}: {e.strerror or e}") from None
    kind = "tcp6" if ":" in address else "tcp"
    origin = f"host = {host!r}, port = {port}"
    return f"{kind}:host={quoteStringArgument(address)}:port={port}", origin


class _LineIndex:
    """
    Finds the line on which a TOML key or table was written.

    C{tomllib} keeps no positions, so the source is scanned for table headers
    (counting C{[[proxy]]} and C{[[proxy.backend]]} occurrences) and C{key =}
    lines. This is a best effort: an unusual layout only loses the line number.
    """

    _header = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]")
    _table = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\" ]+?)\s*\]")
    _key = re.compile(r"^\s*(\"[^\"]*\"|[A-Za-z0-9_\-]+)\s*=")

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[Any, ...], int] = {}
        path: tuple[Any, ...] = ()
        counts: dict[tuple[Any, ...], int] = {}
        inMultiline = False
        for number, line in enumerate(text.splitlines(), 1):
            if inMultiline:
                if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                    inMultiline = False
                continue
            if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                inMultiline = True
            m = self._header.match(line)
            if m:
                names = tuple(n.strip().strip('"') for n in m.group(1).split("."))
                parent = self._resolve(names[:-1], path)
                arrayKey = parent + (names[-1],)
                index = counts.get(arrayKey, 0)
                counts[arrayKey] = index + 1
                path = arrayKey + (index,)
                self._lines.setdefault(path, number)
                continue
            m = self._table.match(line)
            if m:
                names = tuple(n.strip().strip('"') for n in m.group(1).split("."))
                path = self._resolve(names, path)
                self._lines.setdefault(path, number)
                continue
            m = self._key.match(line)
            if m:
                self._lines.setdefault(path + (m.group(1).strip('"'),), number)

    @staticmethod
    def _resolve(names: tuple[str, ...], current: tuple[Any, ...]) -> tuple[Any, ...]:
        # A dotted header like [[proxy.backend]] nests under the most recent
        # element of each array named on the way (here: the current proxy).
        result: tuple[Any, ...] = ()
        for name in names:
            result = result + (name,)
            n = len(result)
            if len(current) > n and current[:n] == result and isinstance(current[n], int):
                result = result + (current[n],)
        return result

    def line(self, path: tuple[Any, ...]) -> int | None:
        """
        The line of C{path} (a tuple of keys and array indexes), or of the
        nearest enclosing table that has one.
        """
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None


def _keyName(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class _Reader:
    """
    Collects problems while converting the parsed TOML into config objects.
    """

    def __init__(self, source: str, index: _LineIndex | None) -> None:
        self.source = source
        self.index = index
        self.problems: list[Problem] = []

    def problem(self, path: tuple[Any, ...], message: str) -> None:
        line = self.index.line(path) if self.index else None
        self.problems.append(Problem(self.source, line, _keyName(path), message))

    def unknownKeys(
        self, table: Mapping[str, Any], path: tuple[Any, ...], allowed: Iterable[str]
    ) -> None:
        allowed = set(allowed)
        for key in table:
            if key not in allowed:
                hint = ""
                if "_" in key and key.replace("_", "-") in allowed:
                    hint = f" (did you mean {key.replace('_', '-')!r}?)"
                self.problem(path + (key,), f"unknown key{hint}")

    def number(
        self,
        table: Mapping[str, Any],
        path: tuple[Any, ...],
        key: str,
        default: float,
        integer: bool = False,
        minimum: float = 0,
    ) -> float:
        if key not in table:
            return default
        value: Any = table[key]
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            what = "an integer" if integer else "a number of seconds"
            self.problem(path + (key,), f"must be {what}, not {_tomlType(value)}")
            return default
        if value < minimum:
            self.problem(path + (key,), f"must be at least {minimum:g}, not {value}")
            return default
        return value

    def string(
        self, table: Mapping[str, Any], path: tuple[Any, ...], key: str
    ) -> str | None:
        if key not in table:
            return None
        value = table[key]
        if not isinstance(value, str):
            self.problem(path + (key,), f"must be a string, not {_tomlType(value)}")
            return None
        return value


def _tomlType(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


_TOP_KEYS = ("debug", "proxy")
_PROXY_KEYS = (
    "name",
    "listen",
    "balance",
    "connect-timeout",
    "disable-time",
    "idle-timeout",
    "half-closed-timeout",
    "backend",
)
_BACKEND_KEYS = (
    "endpoint",
    "host",
    "port",
    "socket",
    "label",
    "weight",
    "disable-time",
    "connect-timeout",
)


def _knownBalancers() -> frozenset[str]:
    from txsockproxy.balancers import balancerNames

    return frozenset(balancerNames())


def parseConfig(
    text: str,
    source: str = "<string>",
    resolve: Resolver = resolveFirst,
    balancers: frozenset[str] | None = None,
) -> Config:
    """
    Parse and validate the native TOML configuration format.

    @param text: the file's contents.
    @param source: the file name, for messages.
    @param resolve: resolves lighttpd-style C{host} names at load time.
    @param balancers: the balancer names that may be used; by default, those
        of the installed balancer plugins.
    @raise ConfigError: listing every problem found.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        m = re.search(r"\(at line (\d+), column \d+\)$", message)
        line = int(m.group(1)) if m else None
        if m:
            message = message[: m.start()].strip()
        raise ConfigError(
            [Problem(source, line, "", f"TOML syntax error: {message}")]
        ) from None
    reader = _Reader(source, _LineIndex(text))
    return _buildConfig(data, reader, resolve, balancers)


def loadConfig(
    path: str, resolve: Resolver = resolveFirst, balancers: frozenset[str] | None = None
) -> Config:
    """
    Read and validate the configuration file at C{path}.

    @raise ConfigError: the file cannot be read or is invalid.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(
            [Problem(path, None, "", f"cannot read: {e.strerror or e}")]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError([Problem(path, line, "", "not valid UTF-8")]) from None
    return parseConfig(text, path, resolve, balancers)


def _buildConfig(
    data: Mapping[str, Any],
    reader: _Reader,
    resolve: Resolver,
    balancers: frozenset[str] | None,
) -> Config:
    if balancers is None:
        balancers = _knownBalancers()
    reader.unknownKeys(data, (), _TOP_KEYS)
    debug = int(reader.number(data, (), "debug", 0, integer=True))
    if debug > 3:
        reader.problem(("debug",), f"must be 0 to 3, not {debug}")
    rawProxies = data.get("proxy")
    proxies: list[ProxyConfig] = []
    if rawProxies is None:
        reader.problem((), "no [[proxy]] defined: nothing to do")
    elif not isinstance(rawProxies, list):
        reader.problem(("proxy",), "must be an array of tables ([[proxy]])")
    else:
        for i, raw in enumerate(rawProxies):
            proxy = _buildProxy(raw, ("proxy", i), reader, resolve, balancers)
            if proxy is not None:
                proxies.append(proxy)
        _checkUnique(
            reader, [("proxy", i, "name") for i in range(len(proxies))],
            [p.name for p in proxies], "proxy name"
        )
        _checkListenUnique(reader, proxies)
    if reader.problems:
        raise ConfigError(reader.problems)
    return Config(proxies=tuple(proxies), debug=debug, source=reader.source)


def _checkUnique(
    reader: _Reader, paths: Sequence[tuple[Any, ...]], values: Sequence[str], what: str
) -> None:
    seen: set[str] = set()
    for path, value in zip(paths, values, strict=True):
        if value in seen:
            reader.problem(path, f"duplicate {what} {value!r}")
        seen.add(value)


def _checkListenUnique(reader: _Reader, proxies: Sequence[ProxyConfig]) -> None:
    seen: dict[str, str] = {}
    for i, proxy in enumerate(proxies):
        for desc in proxy.listen:
            if desc in seen:
                reader.problem(
                    ("proxy", i, "listen"),
                    f"{desc!r} is already a listen endpoint of proxy {seen[desc]!r}",
                )
            seen.setdefault(desc, proxy.name)


def _buildProxy(
    raw: Any,
    path: tuple[Any, ...],
    reader: _Reader,
    resolve: Resolver,
    balancers: frozenset[str],
) -> ProxyConfig | None:
    if not isinstance(raw, dict):
        reader.problem(path, f"must be a table, not {_tomlType(raw)}")
        return None
    before = len(reader.problems)
    reader.unknownKeys(raw, path, _PROXY_KEYS)

    listen: list[str] = []
    rawListen = raw.get("listen")
    if rawListen is None:
        reader.problem(path + ("listen",), "missing: give a server endpoint string, e.g. \"tcp:8080\"")
    else:
        items = [rawListen] if isinstance(rawListen, str) else rawListen
        if not isinstance(items, list) or not items:
            reader.problem(path + ("listen",), "must be an endpoint string or a non-empty array of them")
            items = []
        for desc in items:
            if not isinstance(desc, str):
                reader.problem(path + ("listen",), f"must hold strings, not {_tomlType(desc)}")
                continue
            error = checkEndpoint(desc, server=True)
            if error:
                reader.problem(path + ("listen",), error)
            listen.append(desc)
        _checkUnique(reader, [path + ("listen",)] * len(listen), listen, "listen endpoint")

    name = reader.string(raw, path, "name")
    if name is not None and not name.strip():
        reader.problem(path + ("name",), "must not be empty")
    if not name:
        name = listen[0] if listen else f"proxy{path[-1]}"

    balance = reader.string(raw, path, "balance") or DEFAULT_BALANCE
    if balance not in balancers:
        reader.problem(
            path + ("balance",),
            f"unknown balancer {balance!r} (available: {', '.join(sorted(balancers))})",
        )

    connectTimeout = reader.number(raw, path, "connect-timeout", DEFAULT_CONNECT_TIMEOUT)
    if "connect-timeout" in raw and connectTimeout == 0:
        reader.problem(path + ("connect-timeout",), "must be more than 0")
    disableTime = reader.number(raw, path, "disable-time", DEFAULT_DISABLE_TIME)
    idleTimeout = reader.number(raw, path, "idle-timeout", 0.0)
    halfClosed = reader.number(raw, path, "half-closed-timeout", DEFAULT_HALF_CLOSED_TIMEOUT)

    backends: list[BackendConfig] = []
    rawBackends = raw.get("backend")
    if rawBackends is None:
        reader.problem(path + ("backend",), "missing: a proxy needs at least one [[proxy.backend]]")
    elif not isinstance(rawBackends, list) or not rawBackends:
        reader.problem(path + ("backend",), "must be a non-empty array of tables ([[proxy.backend]])")
    else:
        for j, rawBackend in enumerate(rawBackends):
            backend = _buildBackend(
                rawBackend, path + ("backend", j), reader, resolve, connectTimeout, disableTime
            )
            if backend is not None:
                backends.append(backend)
        _checkUnique(
            reader,
            [path + ("backend", j, "label") for j in range(len(backends))],
            [b.label for b in backends],
            "backend label",
        )
    if len(reader.problems) > before:
        return None
    return ProxyConfig(
        name=name,
        listen=tuple(listen),
        backends=tuple(backends),
        balance=balance,
        idleTimeout=idleTimeout,
        halfClosedTimeout=halfClosed,
    )


def _buildBackend(
    raw: Any,
    path: tuple[Any, ...],
    reader: _Reader,
    resolve: Resolver,
    connectTimeout: float,
    disableTime: float,
) -> BackendConfig | None:
    if not isinstance(raw, dict):
        reader.problem(path, f"must be a table, not {_tomlType(raw)}")
        return None
    before = len(reader.problems)
    reader.unknownKeys(raw, path, _BACKEND_KEYS)
    endpoint = reader.string(raw, path, "endpoint")
    host = reader.string(raw, path, "host")
    sock = reader.string(raw, path, "socket")
    port: int | None = None
    if "port" in raw:
        port = int(reader.number(raw, path, "port", 0, integer=True, minimum=1))
        if port > 65535:
            reader.problem(path + ("port",), f"must be 1 to 65535, not {port}")
    origin = ""
    if len(reader.problems) > before:
        return None
    if endpoint is not None:
        if host is not None or sock is not None or port is not None:
            reader.problem(path + ("endpoint",), "give either 'endpoint' or 'host'/'port'/'socket', not both")
            return None
        error = checkEndpoint(endpoint, server=False)
        if error:
            reader.problem(path + ("endpoint",), error)
            return None
    else:
        try:
            endpoint, origin = backendFromHost(host, port, sock, resolve)
        except ValueError as e:
            key = "socket" if sock is not None else "host" if host is not None else ""
            reader.problem(path + ((key,) if key else ()), str(e))
            return None
    label = reader.string(raw, path, "label")
    if label is not None and not label.strip():
        reader.problem(path + ("label",), "must not be empty")
    weight = int(reader.number(raw, path, "weight", 1, integer=True, minimum=1))
    ct = reader.number(raw, path, "connect-timeout", connectTimeout)
    if "connect-timeout" in raw and ct == 0:
        reader.problem(path + ("connect-timeout",), "must be more than 0")
    dt = reader.number(raw, path, "disable-time", disableTime)
    if len(reader.problems) > before:
        return None
    return BackendConfig(
        endpoint=endpoint,
        label=label or endpoint,
        weight=weight,
        disableTime=dt,
        connectTimeout=ct,
        origin=origin,
    )


def configFromArguments(
    listen: Sequence[str],
    backends: Sequence[str],
    balance: str | None,
    debug: int,
    balancers: frozenset[str] | None = None,
) -> Config:
    """
    Build a one-proxy configuration from command-line values.

    @raise ConfigError: listing every problem, each naming its option.
    """
    if balancers is None:
        balancers = _knownBalancers()
    source = "<command line>"
    problems: list[Problem] = []
    if not listen:
        problems.append(Problem(source, None, "--listen", "missing: give at least one server endpoint"))
    if not backends:
        problems.append(Problem(source, None, "--backend", "missing: give at least one client endpoint"))
    for desc in listen:
        error = checkEndpoint(desc, server=True)
        if error:
            problems.append(Problem(source, None, "--listen", error))
    for desc in backends:
        error = checkEndpoint(desc, server=False)
        if error:
            problems.append(Problem(source, None, "--backend", error))
    balance = balance or DEFAULT_BALANCE
    if balance not in balancers:
        problems.append(
            Problem(
                source, None, "--balance",
                f"unknown balancer {balance!r} (available: {', '.join(sorted(balancers))})",
            )
        )
    if not 0 <= debug <= 3:
        problems.append(Problem(source, None, "--debug", f"must be 0 to 3, not {debug}"))
    for desc in {d for d in listen if list(listen).count(d) > 1}:
        problems.append(Problem(source, None, "--listen", f"duplicate listen endpoint {desc!r}"))
    labels = [d for d in backends]
    for desc in {d for d in labels if labels.count(d) > 1}:
        problems.append(Problem(source, None, "--backend", f"duplicate backend {desc!r}"))
    if problems:
        raise ConfigError(problems)
    proxy = ProxyConfig(
        name=listen[0],
        listen=tuple(listen),
        backends=tuple(BackendConfig(endpoint=d, label=d) for d in backends),
        balance=balance,
    )
    return Config(proxies=(proxy,), debug=debug, source=source)
