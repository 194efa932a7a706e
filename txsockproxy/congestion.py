"""
The TCP congestion control algorithm of the proxy's sockets (Linux).

Linux's BBR paces its sends with a timer.  Between two processes of the
same host (loopback) there is no network to pace for, and the timer sends
from whichever CPU it fires on while the process sends from its own: on
loopback, packets of one connection then arrive out of order, the sender
retransmits what was not lost, and the relay waits on it (measured in
doc/performance.md, "Congestion control on loopback").

So by default (C{"auto"}), when the system's algorithm is BBR, a socket
whose peer is on this host (see L{onThisHost}) is switched to C{cubic}
(or C{reno}, which every user may set, if C{cubic} cannot be had); other
sockets, and every socket when the system's algorithm is not BBR, keep the
system's.  C{"system"} never changes anything; any other setting names an
algorithm of this kernel (C{/proc/sys/net/ipv4/tcp_available_congestion_control})
that every TCP socket of that side gets.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Optional, Sequence

from twisted.logger import Logger

from txsockproxy.inherited import ListenerOption

AUTO = "auto"
SYSTEM = "system"

# Used by "auto" for peers on this host, best first.
LOOPBACK_CHOICES = ("cubic", "reno")

_TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)
_PROC = "/proc/sys/net/ipv4/"

_log = Logger()
# (algorithm, errno, what is done instead) already reported: each warning
# once per process.
_reported: set[tuple[str, int, str]] = set()


def _read(name: str) -> Optional[str]:
    try:
        with open(_PROC + name) as f:
            return f.read().strip()
    except OSError:
        return None


def systemDefault() -> Optional[str]:
    """
    The system's algorithm (C{net.ipv4.tcp_congestion_control}), or L{None}
    where it cannot be read (not Linux).
    """
    return _read("tcp_congestion_control")


def available() -> Optional[tuple[str, ...]]:
    """
    The algorithms this kernel has loaded, or L{None} where that cannot be
    read (not Linux).
    """
    names = _read("tcp_available_congestion_control")
    return None if names is None else tuple(names.split())


# What _allowedToUs gives root: every algorithm.
ALL: Sequence[str] = ("*",)


def _allowedToUs() -> Sequence[str]:
    # The algorithms this process may set: all (ALL) for root, which has
    # CAP_NET_ADMIN; for other users, those the system allows everyone.
    if os.geteuid() == 0:
        return ALL
    names = _read("tcp_allowed_congestion_control")
    return () if names is None else tuple(names.split())


def paces(name: Optional[str]) -> bool:
    """
    Whether algorithm C{name} paces its sends (BBR and its versions).
    """
    return name is not None and name.startswith("bbr")


def check(setting: str, names: Optional[Sequence[str]] = None) -> Optional[str]:
    """
    What is wrong with C{setting} as the value of a congestion key, in
    words, or L{None} if it can be used.

    @param names: the kernel's algorithms; read from C{/proc} if not given.
    """
    if setting in (AUTO, SYSTEM):
        return None
    if names is None:
        names = available()
    if names is None:
        return (
            f"{setting!r}: choosing an algorithm needs Linux's"
            f" {_PROC}tcp_available_congestion_control; use {AUTO!r} or {SYSTEM!r}"
        )
    if setting not in names:
        choices = ", ".join([AUTO, SYSTEM, *names])
        return f"{setting!r} is not an algorithm of this kernel: one of {choices}"
    return None


def isLoopback(host: Any) -> bool:
    """
    Whether C{host}, an address as sockets give it, is a loopback address.
    """
    if not isinstance(host, str):
        return False
    return host.startswith("127.") or host.startswith("::ffff:127.") or host == "::1"


def _reachesThisHost(host: Any) -> bool:
    # A peer address that is this host whatever the socket: loopback, or
    # the unspecified address (a connect to which reaches this host).
    return isLoopback(host) or host in ("0.0.0.0", "::", "::ffff:0.0.0.0")


# _reachesThisHost of each backend host seen (the first 1024 seen): asked
# before every connect.
_reaches: dict[Any, bool] = {}


def _reachesThisHostKnown(host: Any) -> bool:
    known = _reaches.get(host)
    if known is None:
        known = _reachesThisHost(host)
        if len(_reaches) < 1024 and isinstance(host, str):
            _reaches[host] = known
    return known


def onThisHost(sock: Any, host: Any) -> bool:
    """
    Whether the peer at C{host} of the connected socket C{sock} is on this
    host: a loopback address, the unspecified address (a connect to which
    reaches this host), or the socket's own address (a connection to one of
    this host's other addresses, which Linux also carries over loopback, has
    the same address at both ends).
    """
    if _reachesThisHost(host):
        return True
    try:
        return bool(sock.getsockname()[0] == host)
    except (OSError, AttributeError, IndexError, TypeError):
        return False


def _underlying(transport: Any) -> Any:
    # The transport holding the socket, under TLS or other wrapping
    # transports; None if there is none.
    for _ in range(4):
        if getattr(transport, "socket", None) is not None:
            return transport
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def _peer(transport: Any) -> Any:
    # The peer's (host, port, ...) of a TCP transport, from what the
    # transport already holds where it can: a server's client address, a
    # client's resolved address; a unix transport holds a path (a server:
    # (path, None)) instead.
    peer = getattr(transport, "client", None)
    if peer is None:
        peer = getattr(transport, "realAddress", None)
    if peer is None:
        try:
            peer = transport.socket.getpeername()
        except OSError:
            return None
    return peer


def summary(default: Optional[str] = None, names: Optional[Sequence[str]] = None) -> Optional[str]:
    """
    What C{"auto"} does on this system, in words, for the start-up log; or
    L{None} when it changes nothing (the system's algorithm does not pace).
    """
    c = Congestion(AUTO, default, names)
    if c.name is None:
        return None
    system = default if default is not None else systemDefault()
    return (
        f"TCP congestion control: the system's is {system}; with the default"
        f" (auto), sockets whose peer is on this host use {c.name.decode()}"
    )


class Congestion(ListenerOption):
    """
    The algorithm one side's sockets get (a proxy's client sockets, or one
    backend's): see the module's docstring for the settings.

    @ivar setting: what the configuration says.
    @ivar name: the algorithm set now, as bytes, or L{None} when sockets are
        left as they are.  Callers test it before calling L{apply}.
    @ivar loopbackOnly: whether only sockets whose peer is on this host (see
        L{onThisHost}) get it.
    """

    __slots__ = (
        "setting", "name", "loopbackOnly", "adopted", "_choices",
    )

    def __init__(
        self,
        setting: str = AUTO,
        default: Optional[str] = None,
        names: Optional[Sequence[str]] = None,
        allowed: Optional[Sequence[str]] = None,
    ) -> None:
        """
        @param default: the system's algorithm; read from C{/proc} if not given.
        @param names: the kernel's algorithms; read from C{/proc} if not given.
        @param allowed: those C{"auto"} may choose: by default, all of
            C{names} if they were given, else all for root and those of
            C{net.ipv4.tcp_allowed_congestion_control} for other users.
        """
        self.setting = setting
        self.loopbackOnly = setting == AUTO
        choices: tuple[str, ...] = ()
        if setting == AUTO:
            if default is None:
                default = systemDefault()
            if paces(default):
                if allowed is None:
                    allowed = names if names is not None else _allowedToUs()
                if names is None:
                    names = available() or ()
                choices = tuple(
                    n for n in LOOPBACK_CHOICES if n in names and (allowed is ALL or n in allowed)
                )
        elif setting != SYSTEM:
            choices = (setting,)
        self._choices = choices
        self.name: Optional[bytes] = choices[0].encode() if choices else None
        # The listening port whose socket was given the algorithm (see
        # applyAccepted): ListenerOption's state.
        ListenerOption.__init__(self)
        # Whether the listening socket was handed over (systemd): it is
        # then never changed (see _owns).
        self.adopted = False

    def __repr__(self) -> str:
        chosen = "unchanged" if self.name is None else self.name.decode()
        return f"<Congestion {self.setting!r}: {chosen}>"

    def apply(self, transport: Any) -> None:
        """
        Give the TCP socket under C{transport} (through a TLS transport) the
        algorithm, if its peer qualifies.  Unix sockets, transports without a
        socket and closed ones are left alone.  If the kernel refuses the
        algorithm (not permitted to this user, no longer loaded), that is
        logged once, and the next choice (for C{"auto"}) or none is used from
        then on.
        """
        held = _underlying(transport)
        if held is None:
            return
        peer = _peer(held)
        if not isinstance(peer, tuple) or len(peer) < 2 or not isinstance(peer[1], int):
            return  # a unix socket: a path, or (path, None)
        if self.loopbackOnly and not onThisHost(held.socket, peer[0]):
            return
        self._give(held.socket)

    def _give(self, sock: Any) -> bool:
        """
        Set the algorithm on C{sock}, going on to the next choice when the
        kernel refuses one.

        @return: L{False} if C{sock} could not take any (closed meanwhile,
            not TCP); else L{True}, also when every choice was refused.
        """
        while self.name is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_CONGESTION, self.name)
                return True
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOENT, errno.EACCES):
                    return False
                self._refused(e)
        return True

    def beforeConnect(self, sock: Any, host: str) -> bool:
        """
        Give the algorithm to C{sock}, a TCP socket about to connect to
        C{host}, if the peer qualifies without being connected: a named
        algorithm, or C{"auto"} and a loopback or unspecified address.  The
        connection then starts with it (no switch once established).

        @return: whether nothing is left to do once connected (it was set,
            or the algorithm is none); L{False} if L{apply} must decide then.
        """
        if self.loopbackOnly and not (_reaches.get(host) or _reachesThisHostKnown(host)):
            return False
        return self._give(sock)

    def applyAccepted(self, transport: Any) -> None:
        """
        L{apply} for a connection accepted by a listening port, which the
        first such connection also gives the algorithm when every connection
        it accepts qualifies (a named algorithm; or C{"auto"} and a port
        bound to a loopback address): the kernel then gives it to later
        connections as it creates them, with no system call of ours.
        Connections created before that are found and switched: they are
        accepted in the order created, so the first one found with the
        algorithm ends the search.
        """
        port = getattr(transport, "server", None)
        if port is not None and port is self.port and not self.checking:
            return  # the listener gives it (a plain transport: the usual case)
        held = _underlying(transport)
        if held is None:
            return
        port = getattr(held, "server", None)
        if self.inherited(port, held.socket):
            return
        self.apply(transport)
        if self.name is not None and self.tryListener(port) and self._owns(port):
            self._setListener(port, self.name)

    def connectionHas(self, sock: Any) -> bool:
        return bool(
            sock.getsockopt(socket.IPPROTO_TCP, _TCP_CONGESTION, 16).rstrip(b"\0") == self.name
        )

    def _owns(self, port: Any) -> bool:
        # Whether every connection of this port qualifies, and the listening
        # socket is the proxy's own: not one handed over by systemd or
        # another program (Twisted's adopted ports do not shut it down),
        # which outlives the proxy and would keep the algorithm.
        if self.adopted:
            return False
        try:
            host = port.socket.getsockname()[0]
        except (OSError, AttributeError, IndexError, TypeError):
            return False
        return isinstance(host, str) and (not self.loopbackOnly or isLoopback(host))

    def _setListener(self, port: Any, name: Optional[bytes]) -> bool:
        try:
            port.socket.setsockopt(socket.IPPROTO_TCP, _TCP_CONGESTION, name)
        except (OSError, AttributeError, TypeError):
            return False  # refused, closed, or not TCP: each connection gets it
        self.given(port)
        return True

    def takeOver(self, previous: Congestion) -> None:
        """
        Replace C{previous} as the setting of the same listening port (on a
        reload).  If they choose the same algorithm, the listening socket
        stays as C{previous} left it.  Otherwise a listening socket that
        C{previous} changed is given this setting's algorithm at once (the
        connections created before are found and switched, as for the
        first), or, if this one gives it none, the system's algorithm as it
        is now: Linux has no way back to "whatever the system's is", so that
        listening socket keeps it until the proxy restarts.
        """
        port = previous.port
        if (self.name, self.loopbackOnly) == (previous.name, previous.loopbackOnly):
            self.port, self.checking, self.tried = port, previous.checking, previous.tried
            return
        if port is None:
            return  # this setting tries the listening socket at its first connection
        self.tried = True
        if self.name is not None and self._owns(port) and self._setListener(port, self.name):
            return
        default = systemDefault()
        if default:
            try:
                port.socket.setsockopt(socket.IPPROTO_TCP, _TCP_CONGESTION, default.encode())
            except (OSError, AttributeError):
                pass

    def _refused(self, e: OSError) -> None:
        refused = self._choices[0]
        self._choices = self._choices[1:]
        self.name = self._choices[0].encode() if self._choices else None
        instead = f"using {self._choices[0]!r}" if self._choices else "keeping the system's"
        key = (refused, e.errno or 0, instead)
        if key not in _reported:
            _reported.add(key)
            # "auto" going on with its next choice (root's choice, refused
            # once twistd has dropped root) is as designed; a setting the
            # operator wrote that cannot be had deserves a warning.
            emit = _log.info if self.setting == AUTO and self._choices else _log.warn
            emit(
                "congestion control {name!r} cannot be set: {error}; {instead}",
                name=refused, error=e.strerror or str(e), instead=instead,
            )


__all__ = [
    "AUTO",
    "SYSTEM",
    "Congestion",
    "available",
    "check",
    "isLoopback",
    "onThisHost",
    "paces",
    "summary",
    "systemDefault",
]
