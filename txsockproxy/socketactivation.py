"""
C{systemd:} listen strings (systemd socket activation) in processes that
systemd did not start with the sockets.

Twisted's C{systemd:} endpoint parser looks the socket up in the
environment (C{LISTEN_FDS}, C{LISTEN_PID}, C{LISTEN_FDNAMES}) when the
string is parsed, so the string parses only in the process that systemd
started. Two kinds of process serve such a listener with a socket handed to
them instead: a worker (the parent adopted what systemd passed), and a
process that took the sockets over from the one systemd started. Here the
string is read for what it says (the socket's address family, index or
name) without looking the socket up; and the endpoint of a listener whose
socket was handed over is built from that.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.protocols.haproxy import proxyEndpoint
from zope.interface import implementer

PREFIX = "systemd"
# What follows "haproxy:" is the endpoint that listens.
_WRAPPER = "haproxy"
# The longest FileDescriptorName= systemd accepts.
MAX_NAME = 255
_FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


@dataclass(frozen=True)
class SystemdSocket:
    """
    The socket a C{systemd:} listen string names.

    @ivar family: its address family (C{domain=}).
    @ivar index: its place among the sockets passed (C{index=}), or
        L{None}.
    @ivar name: its C{FileDescriptorName=} (C{name=}), or L{None}.
    @ivar wrapped: whether the string is C{haproxy:systemd:...}.
    """

    family: int
    index: Optional[int]
    name: Optional[str]
    wrapped: bool = False

    def describe(self) -> str:
        """
        How the socket is named, for a message.
        """
        return f"index {self.index}" if self.index is not None else f"name {self.name!r}"


def _arguments(text: str) -> tuple[list[str], dict[str, str]]:
    """
    The positional and keyword arguments of an endpoint string's
    arguments C{text}, split as Twisted splits them (on C{:}, the first
    C{=} of each separating a keyword; a backslash escapes the next
    character).
    """
    pieces: list[list[str]] = [[]]
    escaped = False
    for char in text:
        if escaped:
            pieces[-1].append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            pieces.append([])
        else:
            pieces[-1].append(char)
    if escaped:
        raise ValueError("a backslash at the end escapes nothing")
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for piece in pieces:
        key, equals, value = _split(piece)
        if equals:
            if key in kwargs:
                # Twisted keeps the last one: a mistake either way.
                raise ValueError(f"{key}= given twice")
            kwargs[key] = value
        else:
            args.append(key)
    return args, kwargs


def _split(piece: list[str]) -> tuple[str, bool, str]:
    # Unescape, splitting at the first unescaped "=".
    before: list[str] = []
    after: list[str] = []
    equals = False
    for token in piece:
        if token == "=" and not equals:
            equals = True
            continue
        (after if equals else before).append(token[-1])
    return "".join(before), equals, "".join(after)


def systemdSocket(description: str) -> Optional[SystemdSocket]:
    """
    What the listen string C{description} names, if it is a C{systemd:}
    string (also behind C{haproxy:}).

    @return: L{None} for any other string.
    @raise ValueError: a C{systemd:} string that Twisted's parser refuses
        whatever sockets systemd passed; the message is the reason.
    """
    kind, _, rest = description.partition(":")
    wrapped = kind.strip().lower() == _WRAPPER
    if wrapped:
        kind, _, rest = rest.partition(":")
    if kind.strip().lower() != PREFIX or not rest:
        return None
    args, kwargs = _arguments(rest)
    if args == [""] or not (args or kwargs):
        raise ValueError("expected domain=, then index= or name=")
    if len(args) > 1 or (args and "domain" in kwargs):
        raise ValueError(f"unexpected {args[-1][:40]!r} (a colon inside a value is "
                         "written \\:)")
    unknown = sorted(set(kwargs) - {"domain", "index", "name"})
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r}")
    domain = args[0] if args else kwargs.get("domain")
    if domain is None:
        raise ValueError("missing domain= (INET, INET6 or UNIX)")
    if domain not in _FAMILIES:
        raise ValueError(f"domain={domain}: expected INET, INET6 or UNIX")
    index, name = kwargs.get("index"), kwargs.get("name")
    if (index is None) == (name is None):
        raise ValueError("give exactly one of index= and name=")
    number: Optional[int] = None
    if index is not None:
        if not (index.isascii() and index.isdigit()) or len(index) > 5:
            raise ValueError(f"index={index[:20]}: expected a whole number below 100000")
        number = int(index)
    if name is not None and not 0 < len(name) <= MAX_NAME:
        # systemd's FileDescriptorName=: 1 to 255 characters.
        raise ValueError(f"name= must have 1 to {MAX_NAME} characters")
    if name is not None and not all(" " <= c <= "~" and c != ":" for c in name):
        # ... printable ASCII, without ":" (systemd.socket(5)).
        raise ValueError("name= must be printable ASCII without ':' (as "
                         "FileDescriptorName= is)")
    return SystemdSocket(_FAMILIES[domain], number, name, wrapped)


def activatedHere() -> bool:
    """
    Whether systemd started this process with sockets (socket activation):
    whether Twisted's C{systemd:} parser has a first socket. (Its
    environment variables are gone by now: Twisted's endpoint module reads
    them, and removes them, when it is imported.)
    """
    try:
        serverFromString(object(), "systemd:domain=INET:index=0")
    except LookupError:
        return False
    return True


@implementer(IStreamServerEndpoint)
class _NotPassed:
    """
    The endpoint of a C{systemd:} listener whose socket systemd did not
    pass: listening fails, saying so (one line, as a bind error does).
    """

    def __init__(self, found: SystemdSocket) -> None:
        self.found = found

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        return defer.fail(OSError(
            f"systemd passed this process no socket with {self.found.describe()} (is it "
            "started by systemd socket activation?)"
        ))


@implementer(IStreamServerEndpoint)
class _Handed:
    """
    The endpoint of a C{systemd:} listener whose socket was handed to this
    process: C{reactor} adopts it (its C{adoptStreamPort} ignores the
    descriptor it is given, see L{txsockproxy.adopting.AdoptingReactor}).
    Twisted's C{AdoptedStreamServerEndpoint} would close a descriptor of
    its own after adopting: here the reactor owns it.
    """

    def __init__(self, reactor: Any, family: int) -> None:
        self.reactor = reactor
        self.family = family

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        return defer.execute(self.reactor.adoptStreamPort, -1, self.family, factory)


def serverEndpoint(reactor: Any, description: str, handed: bool = False) -> Any:
    """
    The server endpoint of the listen string C{description} on
    C{reactor} (C{serverFromString}); but when this listener's socket was
    C{handed} to this process, and C{reactor} adopts it (see
    L{txsockproxy.adopting.AdoptingReactor}), a C{systemd:} string gives an
    endpoint that adopts that socket, whatever this process's environment
    says. A C{systemd:} string whose socket this process has neither been
    handed nor been passed by systemd gives an endpoint that fails to
    listen, saying so.
    """
    found = systemdSocket(description)
    if found is not None and handed:
        endpoint: Any = _Handed(reactor, found.family)
        return proxyEndpoint(endpoint) if found.wrapped else endpoint
    try:
        return serverFromString(reactor, description)
    except LookupError:
        if found is None:
            raise
        return _NotPassed(found)


__all__ = ["SystemdSocket", "activatedHere", "serverEndpoint", "systemdSocket"]
