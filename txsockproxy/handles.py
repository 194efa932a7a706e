"""
The socket under a transport, what it says about its peer, and the one
option the relay sets on every TCP socket (Nagle's algorithm off).

Twisted's transports give their socket through the public C{getHandle()};
a wrapping transport (TLS, the PROXY protocol) is looked through to the one
it wraps.
"""

from __future__ import annotations

import socket
from typing import Any, Optional

from txsockproxy.inherited import ListenerOption


def socketOf(transport: Any) -> Optional[socket.SocketType]:
    """
    The socket under C{transport}, if it has one: its C{getHandle()}, or
    that of the transport it wraps (TLS, PROXY protocol).
    """
    for _ in range(4):
        if transport is None:
            return None
        try:
            handle = transport.getHandle()
        except Exception:
            handle = None
        # SocketType: socket.socket, or the C type under it (the
        # accelerator's transports use it).
        if isinstance(handle, socket.SocketType):
            return handle
        transport = getattr(transport, "transport", None)
    return None


def pendingError(transport: Any) -> int:
    """
    The error waiting on the socket under C{transport} (taken from it), or
    0: none, or no socket to ask.

    A reactor can report a reset as an end of stream. Linux's poll may
    show a socket being reset as hung up and in error but not readable,
    and Twisted's reactors take a hang-up on a socket they read from with
    nothing to read for a clean close: the peer's reset is then still
    waiting on the socket, and only this tells it from a FIN.
    """
    return socketError(socketOf(transport))


def socketError(skt: Optional[socket.SocketType]) -> int:
    """
    L{pendingError} of the socket C{skt} itself (L{None}: 0), for a caller
    that keeps the socket of a transport (see L{socketOf}).
    """
    if skt is None:
        return 0
    try:
        return skt.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except OSError as e:
        return e.errno or 0


def noDelay(transport: Any) -> bool:
    """
    Turn Nagle's algorithm off (C{TCP_NODELAY}) on the TCP socket under
    C{transport}, as HAProxy and nginx do on both sides of what they relay:
    a proxy must add no delay of its own.  With Nagle on, a small write
    while an earlier one is not yet acknowledged waits for the peer's
    acknowledgement, which a peer with nothing to send delays (up to 40 ms
    on Linux): a TLS session's first reply, written after the handshake's
    last records, waited that long every time.

    @return: whether it was set (not for unix sockets, which refuse the
        option, or a transport without a socket).
    """
    return setNoDelay(socketOf(transport))


def setNoDelay(skt: Optional[socket.SocketType]) -> bool:
    """
    L{noDelay} on the socket C{skt} itself (L{None}: L{False}).
    """
    if skt is None:
        return False
    try:
        skt.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return False
    return True


class AcceptedNoDelay(ListenerOption):
    """
    C{TCP_NODELAY} for the connections of one listener, by way of the
    listening socket where it can (see L{txsockproxy.inherited}).
    Transports whose listening port is not known (TLS, other wrappers) get
    it one by one, as L{noDelay} does.
    """

    __slots__ = ()

    def apply(self, transport: Any, skt: Optional[socket.SocketType]) -> None:
        """
        Nagle's algorithm off on C{skt}, the socket under C{transport}, a
        connection its listening port accepted (C{transport.server}, as on
        Twisted's TCP transports).
        """
        port = getattr(transport, "server", None)
        if self.inherited(port, skt):
            return
        if setNoDelay(skt) and self.tryListener(port):
            listening = getattr(port, "socket", None)
            if setNoDelay(listening if isinstance(listening, socket.SocketType) else None):
                self.given(port)

    def connectionHas(self, sock: Any) -> bool:
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


__all__ = [
    "AcceptedNoDelay", "noDelay", "pendingError", "setNoDelay", "socketError", "socketOf",
]
