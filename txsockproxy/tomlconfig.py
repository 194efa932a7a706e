"""
The native TOML configuration format: reading and validating it into the
config objects of L{txsockproxy.config}.

Everything a running proxy needs is checked here, once, at load time: a problem is
reported as a L{Problem} naming the file, the line where it is known, and the key, so
that a bad file gives one clear line per mistake and never a traceback.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from twisted.internet.endpoints import quoteStringArgument

from txsockproxy import congestion
from txsockproxy.checks import knownBalancers, nulProblem, quote, unknownBalancer
from txsockproxy.config import (
    ACCELERATOR_SETTINGS,
    AUTO,
    CHECK_KINDS,
    DEFAULT_BALANCE,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DISABLE_TIME,
    DEFAULT_HALF_CLOSED_TIMEOUT,
    DEFAULT_PORT,
    DEFAULT_PROXY_HEADER_TIMEOUT,
    DEFAULT_RESOLVE_MAX,
    DEFAULT_RESOLVE_MIN,
    DEFAULT_ROUTE,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_STATUS_MAX_BODY_SIZE,
    DEFAULT_STATUS_MAX_CONNECTIONS,
    DEFAULT_STATUS_REQUEST_TIMEOUT,
    DEFAULT_TLS_MIN_VERSION,
    LOG_FORMATS,
    MAX_WORKERS,
    RESOLVE_SETTINGS,
    SEND_PROXY_VERSIONS,
    TLS_VERSIONS,
    BackendConfig,
    BackendTLS,
    CheckConfig,
    Config,
    ConfigError,
    DiscoveryConfig,
    KeepaliveConfig,
    Problem,
    ProxyConfig,
    RouteConfig,
    StatusConfig,
)
from txsockproxy.discovery import parseServer
from txsockproxy.endpoints import (
    Resolver,
    backendFromHost,
    checkEndpoint,
    listenKey,
    originFields,
    resolveFirst,
)
from txsockproxy.protectionconfig import (
    BACKEND_PROTECTION_KEYS,
    PROTECTION_KEYS,
    readBackendProtection,
    readKeepalive,
    readProtection,
)
from txsockproxy.readfile import readBounded
from txsockproxy.routes import checkPattern
from txsockproxy.tlsclient import endpointHost, isTLSEndpoint, readCertificates, readKey
from txsockproxy.tlsconfig import readListenTLS


class _LineIndex:
    """
    Finds the line on which a TOML key or table was written.

    C{tomllib} keeps no positions, so the source is scanned for table headers
    (counting C{[[proxy]]} and C{[[proxy.backend]]} occurrences) and C{key =}
    lines. This is a best effort: an unusual layout only loses the line number.
    """

    _header = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]")
    _table = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]")
    _key = re.compile(r"^\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_\-]+)\s*=")

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[Any, ...], int] = {}
        path: tuple[Any, ...] = ()
        counts: dict[tuple[Any, ...], int] = {}
        inMultiline = False
        # Split on "\n" only, as TOML (and tomllib's line numbers) do:
        # str.splitlines() would also split on form feeds, U+2028 etc.
        for number, line in enumerate(text.split("\n"), 1):
            if inMultiline:
                if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                    inMultiline = False
                continue
            if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                inMultiline = True
            m = self._header.match(line)
            if m:
                names = self._names(m.group(1))
                parent = self._resolve(names[:-1], path)
                arrayKey = parent + (names[-1],)
                index = counts.get(arrayKey, 0)
                counts[arrayKey] = index + 1
                path = arrayKey + (index,)
                self._lines.setdefault(path, number)
                continue
            m = self._table.match(line)
            if m:
                path = self._resolve(self._names(m.group(1)), path)
                self._lines.setdefault(path, number)
                continue
            m = self._key.match(line)
            if m:
                self._lines.setdefault(path + (self._keyOf(m.group(1)),), number)

    @staticmethod
    def _keyOf(written: str) -> str:
        if written.startswith('"'):
            # A basic string key may hold escapes: let TOML decode it.
            try:
                return next(iter(tomllib.loads(written + " = 0")))
            except tomllib.TOMLDecodeError:
                return written.strip('"')
        return written.strip("'")

    @staticmethod
    def _names(header: str) -> tuple[str, ...]:
        return tuple(n.strip().strip("\"'") for n in header.split("."))

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


_BARE_KEY = re.compile(r"[A-Za-z0-9_\-]+")


def _keyName(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = str(part)
            if not _BARE_KEY.fullmatch(name):
                # As it would be written in TOML: a quoted key.
                name = json.dumps(name, ensure_ascii=False)
            out += ("." if out else "") + name
    return out


def _keyHint(key: str, allowed: Sequence[str], elsewhere: Mapping[str, str]) -> str:
    """
    A hint for an unknown key: the key the user probably meant, or the table
    the key belongs in.
    """
    dashed = key.replace("_", "-")
    if dashed != key and dashed in allowed:
        return f" (did you mean {dashed!r}?)"
    if key in elsewhere:
        return f" ({elsewhere[key]})"
    close = difflib.get_close_matches(dashed, allowed, n=1, cutoff=0.75)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return ""


class _Reader:
    """
    Collects problems while converting the parsed TOML into config objects.
    """

    def __init__(self, source: str, index: _LineIndex | None) -> None:
        self.source = source
        self.index = index
        self.problems: list[Problem] = []
        self.notices: list[str] = []

    def problem(self, path: tuple[Any, ...], message: str) -> None:
        line = self.index.line(path) if self.index else None
        self.problems.append(Problem(self.source, line, _keyName(path), message))

    def where(self, path: tuple[Any, ...]) -> str:
        """
        Name C{path} for a message about another place: its key, and its line
        when known.
        """
        line = self.index.line(path) if self.index else None
        return _keyName(path) + ("" if line is None else f" (line {line})")

    def unknownKeys(
        self,
        table: Mapping[str, Any],
        path: tuple[Any, ...],
        allowed: Sequence[str],
        elsewhere: Mapping[str, str],
    ) -> None:
        for key in table:
            if key not in allowed:
                self.problem(path + (key,), "unknown key" + _keyHint(key, allowed, elsewhere))

    def _wrongType(self, path: tuple[Any, ...], what: str, value: object) -> None:
        self.problem(path, f"must be {what}, not {_tomlType(value)}")

    def seconds(
        self,
        table: Mapping[str, Any],
        path: tuple[Any, ...],
        key: str,
        default: float,
        positive: bool = False,
        minimum: float = 0.0,
    ) -> float:
        """
        Read a duration in seconds: a non-negative (or, if C{positive}, a
        strictly positive) finite number, integer or float, and at least
        C{minimum} if given (a floor below which the proxy would spin).
        """
        if key not in table:
            return default
        value: Any = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self._wrongType(path + (key,), "a number of seconds", value)
            return default
        try:
            seconds = float(value)
        except OverflowError:
            self.problem(path + (key,), "is too large")
            return default
        if not math.isfinite(seconds):
            self.problem(path + (key,), f"must be a finite number of seconds, not {value}")
            return default
        if positive and seconds <= 0:
            self.problem(path + (key,), f"must be more than 0, not {value}")
            return default
        if seconds < 0:
            self.problem(path + (key,), f"must not be negative, not {value}")
            return default
        if seconds < minimum:
            self.problem(path + (key,), f"must be at least {minimum:g}s, not {value}")
            return default
        return seconds

    def integer(
        self,
        table: Mapping[str, Any],
        path: tuple[Any, ...],
        key: str,
        minimum: int,
        maximum: int | None = None,
    ) -> int | None:
        """
        Read an integer in C{minimum}..C{maximum}.

        @return: the value, or L{None} if it is missing or wrong.
        """
        if key not in table:
            return None
        value: Any = table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self._wrongType(path + (key,), "an integer", value)
            return None
        if maximum is not None and not minimum <= value <= maximum:
            self.problem(path + (key,), f"must be {minimum} to {maximum}, not {value}")
            return None
        if value < minimum:
            self.problem(path + (key,), f"must be at least {minimum}, not {value}")
            return None
        return value

    def congestion(self, table: Mapping[str, Any], path: tuple[Any, ...], key: str) -> str:
        """
        Read a congestion control setting: C{"auto"} (the default),
        C{"system"}, or an algorithm of this kernel.
        """
        value = self.string(table, path, key)
        if value is None:
            return AUTO
        error = congestion.check(value)
        if error:
            self.problem(path + (key,), error)
            return AUTO
        return value

    def string(
        self, table: Mapping[str, Any], path: tuple[Any, ...], key: str, nonEmpty: bool = True
    ) -> str | None:
        """
        Read a string.

        @return: the value, or L{None} if it is missing or wrong.
        """
        if key not in table:
            return None
        value = table[key]
        if not isinstance(value, str):
            self._wrongType(path + (key,), "a string", value)
            return None
        if nonEmpty and not value.strip():
            self.problem(path + (key,), "must not be empty")
            return None
        if "\0" in value:
            self.problem(path + (key,), nulProblem(value))
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
        return f"a string ({value!r})" if len(value) <= 40 else "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.datetime):
        return "a date-time"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, datetime.time):
        return "a time"
    return type(value).__name__


_TOP_KEYS = (
    "debug", "proxy", "status", "session-log", "log-format", "shutdown-timeout", "accelerator", "workers",
    "max-connections", "takeover-socket",
)
_STATUS_KEYS = (
    "listen", "admin-token-file", "max-connections", "request-timeout", "max-body-size",
)
# The health check keys: in [[proxy]] they are the defaults of its backends.
_CHECK_KEYS = (
    "check", "check-interval", "check-timeout", "rise", "fall", "check-send", "check-expect",
)
# Backends from DNS: in [[proxy]], resolve, its bounds and the resolver
# are the defaults of its backends given by host name.
_RESOLVE_KEYS = ("resolve", "resolve-min", "resolve-max", "resolver")
# The shortest resolve-min and resolve-max: a TTL of 0 (or one of a
# hostile server) must not make a lookup after the other.
MIN_RESOLVE_INTERVAL = 0.1

# The most an admin token file may hold.
TOKEN_FILE_LIMIT = 65536

# The shortest connect and check timeouts, and check interval, taken: less
# would fail every connect, or check a backend as fast as the CPU allows.
MIN_TIMEOUT = 0.01
MIN_CHECK_INTERVAL = 0.1

# The longest path a unix socket address holds (Linux's sun_path is 108
# bytes, the terminating NUL included).
MAX_UNIX_PATH = 107
_PROXY_KEYS = (
    "name",
    "listen",
    "balance",
    "connect-timeout",
    "disable-time",
    "idle-timeout",
    "half-closed-timeout",
    "inspect-delay",
    "client-congestion",
    "send-proxy",
    "proxy-header-timeout",
    *PROTECTION_KEYS,
    "tls-certificates",
    "tls-client-ca",
    "tls-verify-client",
    "tls-min-version",
    "backend",
    "route",
    *_CHECK_KEYS,
    *_RESOLVE_KEYS,
)
_TLS_KEYS = ("tls", "tls-ca", "tls-name", "tls-cert", "tls-key", "tls-min-version")
_ROUTE_KEYS = ("name", "names", "balance", "backend")
_BACKEND_KEYS = (
    "endpoint",
    "host",
    "port",
    "socket",
    "label",
    "weight",
    "disable-time",
    "connect-timeout",
    "congestion",
    "send-proxy",
    *BACKEND_PROTECTION_KEYS,
    *_TLS_KEYS,
    *_CHECK_KEYS,
    "srv",
    *_RESOLVE_KEYS,
)

# Where a key that is unknown at one level belongs instead: the usual
# mistakes are a proxy key written after [[proxy.backend]], and a proxy or
# backend key written before the first [[proxy]] or [[proxy.backend]].
_IN_PROXY = "a key of [[proxy]]: write it before the proxy's first [[proxy.backend]]"
_IN_BACKEND = "a key of [[proxy.backend]]"
_PROXY_ELSEWHERE = {key: _IN_BACKEND for key in _BACKEND_KEYS if key not in _PROXY_KEYS}
_PROXY_ELSEWHERE["congestion"] = (
    "a key of [[proxy.backend]] (its sockets); for the clients' sockets, write client-congestion"
)
_TOP_ELSEWHERE = dict(_PROXY_ELSEWHERE)
_TOP_ELSEWHERE.update({key: "a key of [[proxy]]" for key in _PROXY_KEYS if key != "backend"})
_BACKEND_ELSEWHERE = {key: _IN_PROXY for key in _PROXY_KEYS if key not in _BACKEND_KEYS}
_BACKEND_ELSEWHERE["backend"] = "[[proxy.backend]] tables do not nest"
_PROXY_ELSEWHERE["proxy"] = "[[proxy]] tables do not nest"
_PROXY_ELSEWHERE["names"] = "a key of [[proxy.route]]"
_ROUTE_ELSEWHERE = {
    key: "a key of [[proxy]]: write it before the proxy's first [[proxy.route]]"
    for key in _PROXY_KEYS if key not in _ROUTE_KEYS and key != "route"
}
_ROUTE_ELSEWHERE.update(
    {key: "a key of [[proxy.route.backend]]" for key in _BACKEND_KEYS if key not in _ROUTE_KEYS}
)
_ROUTE_ELSEWHERE["route"] = "[[proxy.route]] tables do not nest"


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
        line: int | None = None
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if m:
            line = int(m.group(1))
            message = f"{message[: m.start()]} (column {m.group(2)})"
        else:
            m = re.search(r"\s*\(at end of document\)$", message)
            if m:
                line = text.rstrip().count("\n") + 1
                message = f"{message[: m.start()]} (at end of file)"
        raise ConfigError([Problem(source, line, "", f"TOML syntax error: {message}")]) from None
    except RecursionError:
        # tomllib recurses once per nested array or inline table.
        raise ConfigError(
            [Problem(source, None, "", "TOML syntax error: arrays or tables nested too deeply")]
        ) from None
    reader = _Reader(source, _LineIndex(text))
    return _buildConfig(data, reader, resolve, balancers)


def _buildConfig(
    data: Mapping[str, Any],
    reader: _Reader,
    resolve: Resolver,
    balancers: frozenset[str] | None,
) -> Config:
    if balancers is None:
        balancers = knownBalancers()
    reader.unknownKeys(data, (), _TOP_KEYS, _TOP_ELSEWHERE)
    debug = reader.integer(data, (), "debug", 0, 3)
    status = _buildStatus(data, reader)
    sessionLog = reader.string(data, (), "session-log") or "off"
    if sessionLog not in ("log", "off") and not sessionLog.startswith("/"):
        reader.problem(
            ("session-log",),
            f"must be \"log\", \"off\" or an absolute file path, not {sessionLog!r}",
        )
    logFormat = reader.string(data, (), "log-format") or "text"
    if logFormat not in LOG_FORMATS:
        reader.problem(("log-format",), f"must be \"text\" or \"json\", not {logFormat!r}")
    shutdownTimeout = reader.seconds(data, (), "shutdown-timeout", DEFAULT_SHUTDOWN_TIMEOUT)
    maxConnections = reader.integer(data, (), "max-connections", 0) or 0
    accelerator = reader.string(data, (), "accelerator") or "auto"
    if accelerator not in ACCELERATOR_SETTINGS:
        reader.problem(
            ("accelerator",),
            f"must be one of {', '.join(map(repr, ACCELERATOR_SETTINGS))}, not {accelerator!r}",
        )
        accelerator = "auto"
    workers = _workers(data, reader)
    takeoverSocket = reader.string(data, (), "takeover-socket") or ""
    if takeoverSocket and not takeoverSocket.startswith("/"):
        reader.problem(("takeover-socket",),
                       f"must be an absolute path, not {takeoverSocket!r}")
    elif len(os.fsencode(takeoverSocket)) > MAX_UNIX_PATH:
        reader.problem(("takeover-socket",),
                       f"is {len(os.fsencode(takeoverSocket))} bytes long: a unix socket "
                       f"path has at most {MAX_UNIX_PATH}")
    rawProxies = data.get("proxy")
    proxies: list[tuple[int, ProxyConfig]] = []
    if rawProxies is None:
        reader.problem((), "no [[proxy]] defined: nothing to do")
    elif not isinstance(rawProxies, list):
        reader.problem(("proxy",), "must be an array of tables ([[proxy]])")
    elif not rawProxies:
        reader.problem(("proxy",), "is empty: nothing to do")
    else:
        for i, raw in enumerate(rawProxies):
            proxy = _buildProxy(raw, ("proxy", i), reader, resolve, balancers)
            if proxy is not None:
                proxies.append((i, proxy))
        _checkUnique(
            reader,
            [(("proxy", i, "name"), ("proxy", i), p.name) for i, p in proxies],
            "proxy name",
        )
        proxies = _defaultNames(proxies)
        _checkListenUnique(reader, proxies)
    if reader.problems:
        # In file order, as a compiler would list them; problems of the
        # whole file (no line) first.
        raise ConfigError(
            sorted(reader.problems, key=lambda p: (p.line is not None, p.line or 0))
        )
    if status is not None and proxies:
        taken = {listenKey(d): (("proxy", i, "listen"), p.name) for i, p in proxies for d in p.listen}
        for desc in status.listen:
            key = listenKey(desc)
            if key is not None and key in taken:
                reader.problem(
                    ("status", "listen"),
                    f"{quote(desc)} is already a listen endpoint of proxy {taken[key][1]!r}",
                )
    if reader.problems:
        raise ConfigError(
            sorted(reader.problems, key=lambda p: (p.line is not None, p.line or 0))
        )
    return Config(
        proxies=tuple(p for _, p in proxies), debug=debug or 0, source=reader.source,
        status=status, sessionLog=sessionLog, logFormat=logFormat,
        shutdownTimeout=shutdownTimeout, accelerator=accelerator,
        notices=tuple(reader.notices), maxConnections=maxConnections, workers=workers,
        takeoverSocket=takeoverSocket,
    )


def _workers(data: Mapping[str, Any], reader: _Reader) -> int | str:
    """
    The top-level C{workers}: a count from 1 to L{MAX_WORKERS}, or
    C{"auto"}.
    """
    value = data.get("workers", 1)
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        reader.problem(("workers",), f"must be an integer 1 to {MAX_WORKERS} or \"auto\", "
                       f"not {value!r}")
        return 1
    return value


def _buildStatus(data: Mapping[str, Any], reader: _Reader) -> StatusConfig | None:
    raw = data.get("status")
    if raw is None:
        return None
    path: tuple[Any, ...] = ("status",)
    if not isinstance(raw, dict):
        reader.problem(path, f"must be a table ([status]), not {_tomlType(raw)}")
        return None
    reader.unknownKeys(raw, path, _STATUS_KEYS, {})
    listen = _readListen(raw, path, reader)
    tokenFile = reader.string(raw, path, "admin-token-file") or ""
    token = ""
    if tokenFile:
        token, error = readToken(tokenFile)
        if error:
            reader.problem(path + ("admin-token-file",), error)
    maxConnections = reader.integer(raw, path, "max-connections", 1)
    maxBodySize = reader.integer(raw, path, "max-body-size", 0)
    return StatusConfig(
        listen=tuple(listen), adminTokenFile=tokenFile, adminToken=token,
        maxConnections=(
            DEFAULT_STATUS_MAX_CONNECTIONS if maxConnections is None else maxConnections
        ),
        requestTimeout=reader.seconds(
            raw, path, "request-timeout", DEFAULT_STATUS_REQUEST_TIMEOUT, positive=True
        ),
        maxBodySize=DEFAULT_STATUS_MAX_BODY_SIZE if maxBodySize is None else maxBodySize,
    )


def readToken(path: str) -> tuple[str, str]:
    """
    Read an admin token file: its first line, stripped.

    @return: the token and C{""}, or C{""} and what is wrong.
    """
    try:
        token = readBounded(path, TOKEN_FILE_LIMIT).decode("utf-8").partition("\n")[0].strip()
    except (OSError, UnicodeDecodeError, ValueError) as e:
        # ValueError: a path the system refuses before trying (a NUL in it).
        return "", f"cannot read {path!r}: {getattr(e, 'strerror', None) or e}"
    if len(token) < 16:
        return "", f"the token in {path!r} is too short: use at least 16 characters"
    return token, ""


def _checkUnique(
    reader: _Reader,
    entries: Sequence[tuple[tuple[Any, ...], tuple[Any, ...], str]],
    what: str,
) -> None:
    """
    Report every value after the first that repeats an earlier one.

    @param entries: for each value, the path to report it at, the path of
        what it names (for the message about the first), and the value;
        empty values (not known because of another problem) are skipped.
    """
    seen: dict[str, tuple[Any, ...]] = {}
    for path, owner, value in entries:
        if not value:
            continue
        if value in seen:
            reader.problem(
                path, f"duplicate {what} {value!r}: already used by {reader.where(seen[value])}"
            )
        else:
            seen[value] = owner


def _defaultNames(
    proxies: Sequence[tuple[int, ProxyConfig]],
) -> list[tuple[int, ProxyConfig]]:
    """
    Name each proxy that has no name after its first listen endpoint, made
    unique (C{tcp:0} may be the first listen endpoint of several proxies) and
    never taking a name that was written.
    """
    taken = {p.name for _, p in proxies if p.name}
    named: list[tuple[int, ProxyConfig]] = []
    for i, proxy in proxies:
        if not proxy.name and proxy.listen:
            base = name = proxy.listen[0]
            n = 2
            while name in taken:
                name = f"{base}#{n}"
                n += 1
            taken.add(name)
            proxy = replace(proxy, name=name)
        named.append((i, proxy))
    return named


def _checkListenUnique(reader: _Reader, proxies: Sequence[tuple[int, ProxyConfig]]) -> None:
    seen: dict[str, str] = {}
    for i, proxy in proxies:
        for desc in proxy.listen:
            key = listenKey(desc)
            if key is None:
                continue
            if key in seen:
                reader.problem(
                    ("proxy", i, "listen"),
                    f"{quote(desc)} is already a listen endpoint of {seen[key]}",
                )
            else:
                seen[key] = f"proxy {proxy.name!r}" if proxy.name else _keyName(("proxy", i))


def _readListen(raw: Mapping[str, Any], path: tuple[Any, ...], reader: _Reader) -> list[str]:
    """
    Read C{listen}: one server endpoint string, or an array of them.

    @return: the strings that parse.
    """
    listen: list[str] = []
    keyPath = path + ("listen",)
    rawListen = raw.get("listen")
    if rawListen is None:
        reader.problem(keyPath, 'missing: give a server endpoint string, e.g. "tcp:8080"')
        return listen
    items = [rawListen] if isinstance(rawListen, str) else rawListen
    if not isinstance(items, list) or not items:
        reader.problem(keyPath, "must be an endpoint string or a non-empty array of them")
        return listen
    seen: dict[str, str] = {}
    for desc in items:
        if not isinstance(desc, str):
            reader.problem(keyPath, f"must hold strings, not {_tomlType(desc)}")
            continue
        if "\0" in desc:
            reader.problem(keyPath, nulProblem(desc))
            continue
        error = checkEndpoint(desc, server=True)
        if error:
            reader.problem(keyPath, error)
            continue
        key = listenKey(desc)
        if key is not None and key in seen:
            same = "" if seen[key] == desc else f" (the same address as {quote(seen[key])})"
            reader.problem(keyPath, f"duplicate listen endpoint {quote(desc)}{same}")
            continue
        if key is not None:
            seen[key] = desc
        listen.append(desc)
    return listen


def _buildProxy(
    raw: Any,
    path: tuple[Any, ...],
    reader: _Reader,
    resolve: Resolver,
    balancers: frozenset[str],
) -> ProxyConfig | None:
    """
    Read one C{[[proxy]]} table.

    @return: the proxy as far as it could be read, for the checks across
        proxies; or L{None} if it is not a table at all.
    """
    if not isinstance(raw, dict):
        reader.problem(path, f"must be a table, not {_tomlType(raw)}")
        return None
    reader.unknownKeys(raw, path, _PROXY_KEYS, _PROXY_ELSEWHERE)
    listen = _readListen(raw, path, reader)

    # Left empty when not written: see _defaultNames.
    name = reader.string(raw, path, "name") or ""

    balance = reader.string(raw, path, "balance", nonEmpty=False)
    if balance is None:
        balance = DEFAULT_BALANCE
    elif balance not in balancers:
        reader.problem(path + ("balance",), unknownBalancer(balance, balancers))

    connectTimeout = reader.seconds(
        raw, path, "connect-timeout", DEFAULT_CONNECT_TIMEOUT, positive=True,
        minimum=MIN_TIMEOUT,
    )
    disableTime = reader.seconds(raw, path, "disable-time", DEFAULT_DISABLE_TIME)
    idleTimeout = reader.seconds(raw, path, "idle-timeout", 0.0)
    halfClosed = reader.seconds(raw, path, "half-closed-timeout", DEFAULT_HALF_CLOSED_TIMEOUT)
    inspectDelay = reader.seconds(raw, path, "inspect-delay", 0.0)
    clientCongestion = reader.congestion(raw, path, "client-congestion")
    sendProxy = _sendProxy(reader, raw, path, "")
    headerTimeout = reader.seconds(
        raw, path, "proxy-header-timeout", DEFAULT_PROXY_HEADER_TIMEOUT, positive=True
    )
    tls = readListenTLS(raw, path, listen, reader)
    protection = readProtection(raw, path, reader)
    backendKeepalive = readKeepalive(raw, path, "backend-keepalive", reader)

    check = _readCheck(raw, path, reader, _NO_CHECK)
    resolving = _readResolve(raw, path, reader, _RESOLVE_DEFAULTS)
    if "srv" in raw:
        # Reported as a key of the backends: their addresses are not looked
        # at, which would only add errors of the key's absence.
        resolving = replace(resolving, broken=True)
    routes, labels = _buildRoutes(raw, path, reader, resolve, balancers, connectTimeout,
                                  disableTime, check, sendProxy=sendProxy,
                                  keepalive=backendKeepalive, resolving=resolving)
    backends: list[tuple[int, BackendConfig, str]] = []
    rawBackends = raw.get("backend")
    if rawBackends is None:
        if not routes and "route" not in raw:
            reader.problem(
                path + ("backend",), "missing: a proxy needs at least one [[proxy.backend]]"
            )
    elif not isinstance(rawBackends, list) or not rawBackends:
        reader.problem(
            path + ("backend",), "must be a non-empty array of tables ([[proxy.backend]])"
        )
    else:
        for j, rawBackend in enumerate(rawBackends):
            built = _buildBackend(
                rawBackend, path + ("backend", j), reader, resolve, connectTimeout, disableTime,
                sendProxy=sendProxy, keepalive=backendKeepalive, check=check,
                resolving=resolving,
            )
            if built is not None:
                backends.append((j, *built))
        labels[:0] = _checkBackendsUnique(reader, path, backends)
    # Labels name backends in the status page and its admin actions: unique
    # across the whole proxy, routes included.
    _checkUnique(reader, labels, "backend label")
    _checkDiscoveredLabels(
        reader, labels,
        [b for _, b, _ in backends] + [b for route in routes for b in route.backends],
    )
    return ProxyConfig(
        name=name,
        listen=tuple(listen),
        backends=tuple(b for _, b, _ in backends),
        balance=balance,
        idleTimeout=idleTimeout,
        halfClosedTimeout=halfClosed,
        inspectDelay=inspectDelay,
        clientCongestion=clientCongestion,
        proxyHeaderTimeout=headerTimeout,
        tls=tls,
        routes=tuple(routes),
        protection=protection,
    )


def _buildRoutes(
    raw: Mapping[str, Any],
    path: tuple[Any, ...],
    reader: _Reader,
    resolve: Resolver,
    balancers: frozenset[str],
    connectTimeout: float,
    disableTime: float,
    check: CheckConfig,
    sendProxy: str = "",
    keepalive: KeepaliveConfig = KeepaliveConfig(),
    resolving: _Resolving | None = None,
) -> tuple[list[RouteConfig], list[tuple[tuple[Any, ...], tuple[Any, ...], str]]]:
    """
    Read a proxy's C{[[proxy.route]]} tables.

    @return: the routes as far as they could be read, and their backends'
        labels (for L{_checkUnique} across the proxy).
    """
    routes: list[RouteConfig] = []
    labels: list[tuple[tuple[Any, ...], tuple[Any, ...], str]] = []
    rawRoutes = raw.get("route")
    if rawRoutes is None:
        return routes, labels
    if not isinstance(rawRoutes, list) or not rawRoutes:
        reader.problem(path + ("route",), "must be a non-empty array of tables ([[proxy.route]])")
        return routes, labels
    patterns: dict[str, tuple[Any, ...]] = {}
    names: list[tuple[tuple[Any, ...], tuple[Any, ...], str]] = []
    for k, rawRoute in enumerate(rawRoutes):
        here = path + ("route", k)
        if not isinstance(rawRoute, dict):
            reader.problem(here, f"must be a table, not {_tomlType(rawRoute)}")
            continue
        reader.unknownKeys(rawRoute, here, _ROUTE_KEYS, _ROUTE_ELSEWHERE)
        written: list[str] = []
        rawNames = rawRoute.get("names")
        if rawNames is None:
            reader.problem(here + ("names",), 'missing: give server names, e.g. ["example.com", '
                           '"*.example.com"]')
        elif not isinstance(rawNames, list) or not rawNames:
            reader.problem(here + ("names",), "must be a non-empty array of server names")
        else:
            for pattern in rawNames:
                if not isinstance(pattern, str):
                    reader.problem(here + ("names",), f"must hold strings, not {_tomlType(pattern)}")
                    continue
                normal, error = checkPattern(pattern)
                if error:
                    reader.problem(here + ("names",), error)
                elif normal in patterns:
                    reader.problem(
                        here + ("names",),
                        f"duplicate server name {normal!r}: already routed by "
                        f"{reader.where(patterns[normal])}",
                    )
                else:
                    patterns[normal] = here + ("names",)
                    written.append(normal)
        name = reader.string(rawRoute, here, "name")
        if name is None:
            name = written[0] if written else ""
        elif name == DEFAULT_ROUTE:
            reader.problem(here + ("name",), f"{name!r} names the proxy's own backends: "
                           "choose another name")
        names.append((here + ("name",), here, name))
        balance = reader.string(rawRoute, here, "balance", nonEmpty=False)
        if balance is None:
            balance = DEFAULT_BALANCE
        elif balance not in balancers:
            reader.problem(here + ("balance",), unknownBalancer(balance, balancers))
        backends: list[tuple[int, BackendConfig, str]] = []
        rawBackends = rawRoute.get("backend")
        if rawBackends is None:
            reader.problem(
                here + ("backend",), "missing: a route needs at least one [[proxy.route.backend]]"
            )
        elif not isinstance(rawBackends, list) or not rawBackends:
            reader.problem(
                here + ("backend",),
                "must be a non-empty array of tables ([[proxy.route.backend]])",
            )
        else:
            for j, rawBackend in enumerate(rawBackends):
                built = _buildBackend(
                    rawBackend, here + ("backend", j), reader, resolve, connectTimeout, disableTime,
                    sendProxy=sendProxy, keepalive=keepalive, check=check, resolving=resolving,
                )
                if built is not None:
                    backends.append((j, *built))
            labels.extend(_checkBackendsUnique(reader, here, backends))
        routes.append(RouteConfig(
            name=name, names=tuple(written), backends=tuple(b for _, b, _ in backends),
            balance=balance,
        ))
    _checkUnique(reader, names, "route name")
    return routes, labels


def _checkDiscoveredLabels(
    reader: _Reader,
    labels: Sequence[tuple[tuple[Any, ...], tuple[Any, ...], str]],
    backends: Sequence[BackendConfig],
) -> None:
    """
    Report labels that start with C{LABEL/}, where C{LABEL} is that of a
    backend whose addresses come from DNS in the same proxy: its backends
    are labelled C{LABEL/ADDRESS:PORT}, and the status page, the metrics
    and the admin actions would show two backends of one label.
    """
    discovered = {b.label for b in backends if b.discovery is not None and b.label}
    if not discovered:
        return
    owners = {label: owner for _, owner, label in labels if label in discovered}
    for path, _, label in labels:
        prefix, slash, _ = label.partition("/")
        while slash:
            if prefix in discovered and prefix in owners:
                reader.problem(
                    path,
                    f"label {label!r} is reserved: the backend labelled {prefix!r} "
                    f"({reader.where(owners[prefix])}) is looked up in DNS, and its "
                    f"backends are labelled {prefix}/ADDRESS:PORT",
                )
                break
            more, slash, _ = label[len(prefix) + 1:].partition("/")
            prefix = f"{prefix}/{more}"


def _checkBackendsUnique(
    reader: _Reader, path: tuple[Any, ...], backends: Sequence[tuple[int, BackendConfig, str]]
) -> list[tuple[tuple[Any, ...], tuple[Any, ...], str]]:
    """
    Report backends that repeat an endpoint of the same group.

    @return: the backends' labels, for L{_checkUnique} across the proxy.
    """
    # The endpoint string is what identifies a backend to the pool and the
    # balancers; the label is what identifies it to people.
    firstByEndpoint: dict[str, tuple[Any, ...]] = {}
    labels: list[tuple[tuple[Any, ...], tuple[Any, ...], str]] = []
    for j, backend, addressKey in backends:
        here = path + ("backend", j)
        if backend.endpoint and backend.endpoint in firstByEndpoint:
            reader.problem(
                here + (addressKey,),
                f"duplicate backend {quote(backend.endpoint)}: already used by "
                f"{reader.where(firstByEndpoint[backend.endpoint])}; "
                "give one backend a weight instead",
            )
            continue
        if backend.endpoint:
            firstByEndpoint[backend.endpoint] = here
        labels.append((here + ("label",), here, backend.label))
    return labels


def _buildBackend(
    raw: Any,
    path: tuple[Any, ...],
    reader: _Reader,
    resolve: Resolver,
    connectTimeout: float,
    disableTime: float,
    sendProxy: str = "",
    keepalive: KeepaliveConfig = KeepaliveConfig(),
    check: CheckConfig | None = None,
    resolving: _Resolving | None = None,
) -> tuple[BackendConfig, str] | None:
    """
    Read one C{[[proxy.backend]]} table.

    @return: the backend as far as it could be read (its endpoint and label
        empty when unknown), and the key its address was given by; or
        L{None} if it is not a table at all.
    """
    if not isinstance(raw, dict):
        reader.problem(path, f"must be a table, not {_tomlType(raw)}")
        return None
    reader.unknownKeys(raw, path, _BACKEND_KEYS, _BACKEND_ELSEWHERE)
    before = len(reader.problems)
    endpoint = reader.string(raw, path, "endpoint", nonEmpty=False)
    host = reader.string(raw, path, "host", nonEmpty=False)
    sock = reader.string(raw, path, "socket", nonEmpty=False)
    port = reader.integer(raw, path, "port", 1, 65535)
    srv = reader.string(raw, path, "srv")
    addressKey = next((k for k in ("endpoint", "socket", "host", "port", "srv") if k in raw), "")
    readable = len(reader.problems) == before
    resolving = _readResolve(raw, path, reader, resolving or _RESOLVE_DEFAULTS)
    readable = readable and not resolving.broken
    resolved = ""
    origin = ""
    discovery: DiscoveryConfig | None = None
    if readable:
        before = len(reader.problems)
        discovery, resolved = _backendDiscovery(raw, path, reader, resolving, host, port, srv)
        readable = len(reader.problems) == before
    if readable and discovery is None:
        if endpoint is not None:
            if host is not None or sock is not None or port is not None:
                reader.problem(
                    path + ("endpoint",),
                    "give either 'endpoint' or 'host'/'port'/'socket', not both",
                )
            else:
                error = checkEndpoint(endpoint, server=False)
                if error:
                    reader.problem(path + ("endpoint",), error)
                else:
                    resolved = endpoint
        else:
            try:
                derived, origin = backendFromHost(host, port, sock, resolve)
            except ValueError as e:
                reader.problem(path + ((addressKey,) if addressKey else ()), str(e))
            else:
                error = checkEndpoint(derived, server=False)
                if error:
                    reader.problem(path + (addressKey,), f"{origin} gives a {error}")
                else:
                    resolved = derived
    label = reader.string(raw, path, "label")
    if label is None and "label" not in raw and discovery is not None:
        # Its backends are labelled NAME/ADDRESS:PORT.
        label = discovery.name
    weight = reader.integer(raw, path, "weight", 1)
    maxConnections, backendKeepalive = readBackendProtection(raw, path, reader, keepalive)
    ct = reader.seconds(
        raw, path, "connect-timeout", connectTimeout, positive=True, minimum=MIN_TIMEOUT
    )
    dt = reader.seconds(raw, path, "disable-time", disableTime)
    backend = BackendConfig(
        endpoint=resolved,
        label=label if label is not None else resolved if "label" not in raw else "",
        weight=1 if weight is None else weight,
        disableTime=dt,
        connectTimeout=ct,
        origin=origin,
        congestion=reader.congestion(raw, path, "congestion"),
        sendProxy=_sendProxy(reader, raw, path, sendProxy),
        tls=_buildBackendTLS(raw, path, reader, resolved, origin),
        maxConnections=maxConnections,
        keepalive=backendKeepalive,
        check=_backendCheck(raw, path, reader, check or _NO_CHECK),
        discovery=discovery,
    )
    if backend.sendProxy and resolved and isTLSEndpoint(resolved):
        reader.problem(
            path + ("send-proxy" if "send-proxy" in raw else "endpoint",),
            "send-proxy with a tls: endpoint string would send the header inside TLS; "
            "write a tcp: endpoint with tls = true (the header then goes first, in clear)",
        )
    return backend, addressKey or "endpoint"


# What a proxy that writes no check key gives its backends.
_NO_CHECK = CheckConfig("off")


@dataclass(frozen=True)
class _Resolving:
    """
    The resolve keys of a backend table, or the defaults its proxy gives.

    @ivar resolve: C{"start"} or C{"dns"}.
    @ivar written: the keys written in the table itself.
    @ivar broken: one of them (or of the proxy's, for a backend) was
        wrong, and reported: the backend's address is not looked at (a
        lookup at load, or more errors, would only hide the real one).
    """

    resolve: str = "start"
    resolveMin: float = DEFAULT_RESOLVE_MIN
    resolveMax: float = DEFAULT_RESOLVE_MAX
    resolver: str = ""
    written: tuple[str, ...] = ()
    broken: bool = False


_RESOLVE_DEFAULTS = _Resolving()


def _readResolve(
    raw: Mapping[str, Any], path: tuple[Any, ...], reader: _Reader, default: _Resolving
) -> _Resolving:
    """
    Read C{resolve}, C{resolve-min}, C{resolve-max} and C{resolver} of a
    C{[[proxy]]} or backend table, those not written taken from
    C{default}.
    """
    before = len(reader.problems)
    setting = reader.string(raw, path, "resolve")
    if setting is not None and setting not in RESOLVE_SETTINGS:
        reader.problem(
            path + ("resolve",),
            f"must be one of {', '.join(repr(k) for k in RESOLVE_SETTINGS)}, not {setting!r}",
        )
        setting = None
    resolveMin = reader.seconds(raw, path, "resolve-min", default.resolveMin, positive=True)
    resolveMax = reader.seconds(raw, path, "resolve-max", default.resolveMax, positive=True)
    if resolveMin > resolveMax and ("resolve-min" in raw or "resolve-max" in raw):
        key = "resolve-max" if "resolve-max" in raw else "resolve-min"
        reader.problem(
            path + (key,),
            f"resolve-max ({resolveMax:g}s) must not be less than resolve-min "
            f"({resolveMin:g}s)",
        )
        resolveMin, resolveMax = default.resolveMin, default.resolveMax
    for key, value in (("resolve-min", resolveMin), ("resolve-max", resolveMax)):
        if key in raw and 0 < value < MIN_RESOLVE_INTERVAL:
            reader.problem(path + (key,), f"must be at least {MIN_RESOLVE_INTERVAL:g}s "
                           f"(a lookup every {value:g}s would flood the DNS server)")
    resolver = reader.string(raw, path, "resolver")
    if resolver is not None:
        try:
            parseServer(resolver)
        except ValueError as e:
            reader.problem(path + ("resolver",), str(e))
            resolver = None
    return _Resolving(
        resolve=default.resolve if setting is None else setting,
        resolveMin=resolveMin,
        resolveMax=resolveMax,
        resolver=default.resolver if resolver is None else resolver,
        written=tuple(key for key in _RESOLVE_KEYS if key in raw),
        broken=default.broken or len(reader.problems) != before,
    )


# A DNS name as the resolve and srv keys take it: labels of letters, digits,
# "-" and "_" (SRV names start with "_service._proto"), an optional final dot.
_DNS_NAME = re.compile(r"^(?=.{1,253}\.?$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                       r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$")


def _isAddress(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _backendDiscovery(
    raw: Mapping[str, Any],
    path: tuple[Any, ...],
    reader: _Reader,
    resolving: _Resolving,
    host: str | None,
    port: int | None,
    srv: str | None,
) -> tuple[DiscoveryConfig | None, str]:
    """
    Whether a backend's addresses come from DNS, and how.

    @return: its discovery settings and the endpoint string that names it,
        or L{None} and C{""} when it is a backend of its own (and then
        none of the resolve keys but C{resolve = "start"} is written in
        its table).
    """
    if srv is not None:
        others = [k for k in ("endpoint", "host", "port", "socket") if k in raw]
        if others:
            reader.problem(path + ("srv",), f"give either 'srv' or {others[0]!r}, not both: "
                           "SRV records give the hosts and ports")
            return None, ""
        if "resolve" in raw and resolving.resolve != "dns":
            reader.problem(path + ("resolve",), "SRV records are always looked up again at "
                           "their TTL: write resolve = \"dns\" or leave it out")
            return None, ""
        if not _DNS_NAME.match(srv):
            reader.problem(path + ("srv",), f"{srv!r} is not a DNS name")
            return None, ""
        return DiscoveryConfig(
            name=srv, srv=True, resolveMin=resolving.resolveMin,
            resolveMax=resolving.resolveMax, resolver=resolving.resolver,
        ), f"srv:{srv}"
    wanted = resolving.resolve == "dns"
    byName = (host is not None and not host.startswith("/") and not _isAddress(host)
              and "endpoint" not in raw and "socket" not in raw)
    if wanted and byName:
        assert host is not None
        if not _DNS_NAME.match(host):
            reader.problem(path + ("host",), f"{host!r} is not a DNS name")
            return None, ""
        port = DEFAULT_PORT if port is None else port
        return DiscoveryConfig(
            name=host, port=port, resolveMin=resolving.resolveMin,
            resolveMax=resolving.resolveMax, resolver=resolving.resolver,
        ), f"tcp:host={quoteStringArgument(host)}:port={port}"
    # A backend of its own: the resolve keys written in its table are wrong.
    if "resolve" in raw and wanted:
        reader.problem(path + ("resolve",), 'resolve = "dns" needs a host name (host = ...) '
                       "or srv: an endpoint, a socket or an IP address has nothing to "
                       "look up again")
        return None, ""
    for key in resolving.written:
        if key != "resolve":
            reader.problem(path + (key,), 'applies to backends with resolve = "dns" or srv '
                           "only")
    return None, ""


def _readCheck(
    raw: Mapping[str, Any], path: tuple[Any, ...], reader: _Reader, default: CheckConfig
) -> CheckConfig:
    """
    Read the health check keys of a C{[[proxy]]} or a backend table, the
    keys not written taken from C{default} (the proxy's, for a backend).
    A check kind of C{"off"} is kept, so that the other keys still pass on
    as defaults.
    """
    kind = reader.string(raw, path, "check")
    if kind is not None and kind not in CHECK_KINDS:
        reader.problem(
            path + ("check",),
            f"must be one of {', '.join(repr(k) for k in CHECK_KINDS)}, not {kind!r}",
        )
        kind = None
    rise = reader.integer(raw, path, "rise", 1, 1000)
    fall = reader.integer(raw, path, "fall", 1, 1000)
    check = CheckConfig(
        kind=default.kind if kind is None else kind,
        interval=reader.seconds(
            raw, path, "check-interval", default.interval, positive=True,
            minimum=MIN_CHECK_INTERVAL,
        ),
        timeout=reader.seconds(
            raw, path, "check-timeout", default.timeout, positive=True, minimum=MIN_TIMEOUT
        ),
        rise=default.rise if rise is None else rise,
        fall=default.fall if fall is None else fall,
        send=_checkBytes(raw, path, reader, "check-send", default.send),
        expect=_checkBytes(raw, path, reader, "check-expect", default.expect),
    )
    if check.kind != "send-expect":
        # In a proxy whose own check is off, they are defaults for the
        # backends that turn send-expect on.
        if check.kind != "off" or path[-2:-1] == ("backend",):
            for key in ("check-send", "check-expect"):
                if key in raw:
                    reader.problem(
                        path + (key,),
                        f'applies to check = "send-expect" only, not {check.kind!r}',
                    )
    elif not check.expect and "check" in raw and "check-expect" not in raw:
        reader.problem(
            path + ("check",),
            'check = "send-expect" needs check-expect: the bytes a good reply contains',
        )
    return check


def _checkBytes(
    raw: Mapping[str, Any], path: tuple[Any, ...], reader: _Reader, key: str, default: bytes
) -> bytes:
    """
    Read C{check-send} or C{check-expect}: a string, with TOML's escapes
    (C{\\r\\n}, C{\\u0000}), sent or looked for as its UTF-8 bytes.
    """
    if key not in raw:
        return default
    value = raw[key]
    if not isinstance(value, str):
        reader.problem(path + (key,), f"must be a string, not {_tomlType(value)}")
        return default
    if key == "check-expect" and not value:
        reader.problem(path + (key,), "must not be empty (every reply contains nothing)")
        return default
    return value.encode("utf-8")


def _backendCheck(
    raw: Mapping[str, Any], path: tuple[Any, ...], reader: _Reader, default: CheckConfig
) -> CheckConfig | None:
    """
    A backend's health check: its own keys over its proxy's, or L{None}
    when it is off.
    """
    check = _readCheck(raw, path, reader, default)
    return None if check.kind == "off" else check


def _sendProxy(reader: _Reader, raw: Mapping[str, Any], path: tuple[Any, ...], default: str) -> str:
    """
    Read a C{send-proxy} setting: C{"v1"}, C{"v2"} or C{"off"} (stored as
    C{""}); C{default} when it is not written.
    """
    value = reader.string(raw, path, "send-proxy")
    if value is None:
        return default
    if value not in SEND_PROXY_VERSIONS and value != "off":
        reader.problem(
            path + ("send-proxy",), f"must be \"v1\", \"v2\" or \"off\", not {value!r}"
        )
        return default
    return "" if value == "off" else value


def _buildBackendTLS(
    raw: Mapping[str, Any], path: tuple[Any, ...], reader: _Reader, endpoint: str, origin: str
) -> BackendTLS | None:
    """
    Read a backend's C{tls} keys, and the files they name.

    @param endpoint: the backend's endpoint string, if it could be read.
    @param origin: what the lighttpd-style keys said, if they gave it.
    """
    enabled = False
    if "tls" in raw:
        value = raw["tls"]
        if not isinstance(value, bool):
            reader.problem(path + ("tls",), f"must be true or false, not {_tomlType(value)}")
            return None
        enabled = value
    if not enabled:
        for setting in _TLS_KEYS[1:]:
            if setting in raw:
                hint = (
                    "; a tls: endpoint string takes its own settings: write tcp: with tls = true"
                    if endpoint and isTLSEndpoint(endpoint) else ""
                )
                reader.problem(path + (setting,), f"needs tls = true{hint}")
        return None
    if endpoint and isTLSEndpoint(endpoint):
        reader.problem(
            path + ("tls",), "the endpoint is a tls: one already: write tcp: with tls = true"
        )
        return None
    name = reader.string(raw, path, "tls-name")
    if name is None and "tls-name" not in raw:
        host = originFields(origin).get("host")
        if isinstance(host, str) and not host.startswith("/"):
            name = host
        elif endpoint:
            name = endpointHost(endpoint)
            if name is None:
                reader.problem(
                    path + ("tls",),
                    "needs tls-name: the endpoint has no host name to check the certificate for",
                )
    minVersion = reader.string(raw, path, "tls-min-version")
    if minVersion is not None and minVersion not in TLS_VERSIONS:
        reader.problem(
            path + ("tls-min-version",),
            f"must be one of {', '.join(repr(v) for v in TLS_VERSIONS)}, not {minVersion!r}",
        )
        minVersion = None
    files: dict[str, tuple[str, bytes]] = {}
    ca = reader.string(raw, path, "tls-ca")
    cert = reader.string(raw, path, "tls-cert")
    key = reader.string(raw, path, "tls-key")
    if ("tls-cert" in raw) != ("tls-key" in raw):
        given, missing = ("tls-cert", "tls-key") if "tls-cert" in raw else ("tls-key", "tls-cert")
        reader.problem(path + (given,), f"needs {missing} too (a client certificate and its key)")
    for keyName, filePath in (("tls-ca", ca), ("tls-cert", cert)):
        if filePath is not None:
            try:
                files[keyName] = (filePath, readCertificates(filePath))
            except ValueError as e:
                reader.problem(path + (keyName,), str(e))
    if key is not None and cert is not None and "tls-cert" in files:
        try:
            files["tls-key"] = (key, readKey(key, files["tls-cert"][1]))
        except ValueError as e:
            reader.problem(path + ("tls-key",), str(e))
    return BackendTLS(
        name=name or "",
        ca=files.get("tls-ca", ("", b""))[0],
        cert=files.get("tls-cert", ("", b""))[0],
        key=files.get("tls-key", ("", b""))[0],
        minVersion=minVersion or DEFAULT_TLS_MIN_VERSION,
        caPEM=files.get("tls-ca", ("", b""))[1],
        certPEM=files.get("tls-cert", ("", b""))[1],
        keyPEM=files.get("tls-key", ("", b""))[1],
    )
