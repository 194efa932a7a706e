"""
Twisted endpoint strings in a configuration: checking that one parses without
using it, telling when two listen strings bind the same address, and turning
lighttpd-style C{host}/C{port}/C{socket} keys into a client endpoint string
(and back, for rendering).
"""

from __future__ import annotations

import ast
import re
import socket
from typing import Any, Callable

from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    clientFromString,
    quoteStringArgument,
    serverFromString,
)
from twisted.internet.interfaces import IReactorPluggableNameResolver
from zope.interface import implementer

from txsockproxy.checks import quote
from txsockproxy.config import DEFAULT_PORT
from txsockproxy.socketactivation import activatedHere, systemdSocket

# What a resolver looks like: (host) -> first address, or raise OSError.
Resolver = Callable[[str], str]


def resolveFirst(host: str) -> str:
    """
    Resolve C{host} to its first address, blocking, as lighttpd does at start-up.

    @raise OSError: the name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (UnicodeError, ValueError) as e:
        # getaddrinfo rejects some names before asking DNS (a label longer
        # than 63 characters, an embedded NUL): report them the same way.
        raise OSError(f"not a valid host name ({e})") from None
    return str(infos[0][4][0])


@implementer(IReactorPluggableNameResolver)
class _PlaceholderReactor:
    """
    Stands in for a reactor while endpoint strings are only parsed: endpoint
    constructors store the reactor and use it when they connect or listen.

    It provides L{IReactorPluggableNameResolver} because C{HostnameEndpoint}
    (behind C{tls:}) looks for it when constructed, and warns without it.
    """

    nameResolver = None

    def installNameResolver(self, resolver: Any) -> Any:
        raise NotImplementedError("a placeholder reactor resolves nothing")



def _parseEndpoint(description: str, server: bool) -> Any:
    parse = serverFromString if server else clientFromString
    return parse(_PlaceholderReactor(), description)


def _endpointReason(description: str, e: Exception) -> str:
    """
    Say why Twisted refused an endpoint string, in the terms the user wrote it
    in rather than those of the parser function that failed.
    """
    text = str(e)
    if isinstance(e, RuntimeError) and isinstance(e.__cause__, StopIteration):
        # Twisted's tokenizer, at a backslash with nothing after it.
        return "ends with a backslash (an escape of nothing): write \\\\ for a backslash"
    if isinstance(e, TypeError):
        m = re.search(r"unexpected keyword argument '([^']+)'", text)
        if m:
            return f"unknown parameter {m.group(1)!r}"
        m = re.search(r"missing \d+ required (?:positional |keyword-only )?arguments?: (.+)$", text)
        if m:
            return f"missing {m.group(1)}"
    if isinstance(e, ValueError):
        m = re.match(r"invalid literal for int\(\) with base 10: (.+)$", text)
        if m:
            return f"expected a whole number, not {m.group(1)}"
    if isinstance(e, LookupError) and description.split(":", 1)[0].strip().lower() == "systemd":
        # The systemd parser looks the socket up when parsing.
        return "systemd passed no such socket (is this process started by systemd socket activation?)"
    if type(e).__name__ == "UnlistableError":
        # A tls: string's trustRoots= names a file, not a directory.
        return (
            "trustRoots= must name a directory of CA certificates; for a CA file, "
            "write a tcp: endpoint with tls = true and tls-ca = FILE"
        )
    return text or e.__class__.__name__


def checkEndpoint(description: str, server: bool) -> str | None:
    """
    Parse a Twisted endpoint string without using it.

    @return: L{None} if C{description} parses, else the reason it does not.
    """
    if not description.strip():
        return "empty endpoint string"
    try:
        _parseEndpoint(description, server)
    except Exception as e:
        if server:
            # A systemd: string: its form is checked here (with a message
            # in its own terms); outside socket activation (a worker, a
            # taking-over process, which are handed the socket) that is
            # all: elsewhere the listener says at start-up that there is
            # no such socket.
            try:
                found = systemdSocket(description)
            except ValueError as bad:
                return f"bad server endpoint {quote(description)}: {bad}"
            if found is not None and isinstance(e, LookupError) and not activatedHere():
                return None
        reason = _endpointReason(description, e)
        return f"bad {'server' if server else 'client'} endpoint {quote(description)}: {reason}"
    return None


def isProxyProtocolListen(listen: str) -> bool:
    """
    Whether the listen endpoint string C{listen} is a PROXY protocol
    listener: C{haproxy:} before the endpoint that listens.
    """
    return listen.split(":", 1)[0].strip().lower() == "haproxy"


def listenKey(description: str) -> str | None:
    """
    What identifies the address a server endpoint string binds, so that two
    spellings of one address (C{tcp:80}, C{tcp:port=80}) compare equal.

    @return: L{None} for an ephemeral TCP port (port 0), which may be given
        any number of times.
    """
    try:
        endpoint = _parseEndpoint(description, server=True)
    except Exception:
        return description
    # The endpoint classes keep their address in private attributes; when
    # they are not there, fall back to comparing the strings.
    if isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)):
        port = getattr(endpoint, "_port", None)
        interface = getattr(endpoint, "_interface", None)
        if isinstance(port, int) and isinstance(interface, str):
            if port == 0:
                return None
            family = "tcp6" if isinstance(endpoint, TCP6ServerEndpoint) else "tcp"
            return f"{family}:{interface or '0.0.0.0'}:{port}"
    if isinstance(endpoint, UNIXServerEndpoint):
        address = getattr(endpoint, "_address", None)
        if isinstance(address, str):
            return f"unix:{address}"
    return description


def backendFromHost(
    host: str | None, port: int | None, sock: str | None, resolve: Resolver
) -> tuple[str, str]:
    """
    Turn lighttpd-style C{host}/C{port}/C{socket} into a client endpoint string.

    A host starting with C{/} is a unix socket path; a DNS name is resolved now,
    to its first address; the port defaults to 80. An IPv6 address gives a
    C{tcp:} endpoint too: Twisted's TCP client connects to IPv6 literals, and
    there is no C{tcp6:} client endpoint.

    @return: the endpoint string and a description of what was written.
    @raise ValueError: the combination is invalid or the name does not resolve.
    """
    if sock is not None:
        if host is not None or port is not None:
            raise ValueError("'socket' cannot be combined with 'host' or 'port'")
        if not sock:
            raise ValueError("must not be empty")
        return f"unix:path={quoteStringArgument(sock)}", f"socket = {sock!r}"
    if host is None:
        if port is not None:
            raise ValueError("'port' needs a 'host'")
        raise ValueError("needs 'endpoint', 'host' or 'socket'")
    if not host.strip():
        raise ValueError("must not be empty")
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
    origin = f"host = {host!r}, port = {port}"
    return f"tcp:host={quoteStringArgument(address)}:port={port}", origin


_ORIGIN_HOST_PORT = re.compile(r"^host = (.+), port = (\d+)$", re.DOTALL)
_ORIGIN_ONE = re.compile(r"^(host|socket) = (.+)$", re.DOTALL)


def originFields(origin: str) -> dict[str, str | int]:
    """
    The lighttpd-style C{host}/C{port}/C{socket} keys a backend's C{origin}
    (as L{backendFromHost} writes it) records.

    @return: those keys, or an empty dict if C{origin} is empty or not in
        that form.
    """

    def literal(text: str) -> str | None:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return None
        return value if isinstance(value, str) else None

    m = _ORIGIN_HOST_PORT.match(origin)
    if m:
        host = literal(m.group(1))
        if host is not None:
            return {"host": host, "port": int(m.group(2))}
    m = _ORIGIN_ONE.match(origin)
    if m:
        value = literal(m.group(2))
        if value is not None:
            return {m.group(1): value}
    return {}
