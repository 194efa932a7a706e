"""
Watching the sockets that are not being read.

A session stops reading one side while the other cannot take more bytes
(flow control), and a side that is not read is not heard either: its
reset, or its FIN queued behind the bytes not yet read, would go unnoticed
until the other side reads again, which may be never. L{PausedWatch} looks
at the paused sockets of a proxy, all in one C{poll()} every
L{WATCH_INTERVAL} seconds, for an error (a reset) or the peer's FIN, and
tells their sessions.

It uses the transports' public C{getHandle()} (a socket for TCP and unix
transports; a wrapping transport, as TLS's, is looked through to the one
it wraps), so it works on every reactor.
"""

from __future__ import annotations

import select
import socket
from typing import Any, Optional, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from txsockproxy.handles import socketOf

# Seconds between two looks at the paused sockets: how late at most a reset
# of a side that is not being read is noticed.
WATCH_INTERVAL = 1.0

_POLLRDHUP: int = getattr(select, "POLLRDHUP", 0)
_POLLFAILED = select.POLLERR | select.POLLHUP | select.POLLNVAL


class Watcher(Protocol):
    """
    What is told about a paused socket (a session).
    """

    def pausedSideFailed(self, client: bool, errno: int) -> None:
        """
        The paused side's socket has an error (the peer reset it).
        """

    def pausedSideFinished(self, client: bool) -> None:
        """
        The paused side's peer has sent its FIN (behind bytes not yet read).
        """


class PausedWatch:
    """
    The paused sides of the sessions of one proxy, looked at every
    C{interval} seconds while there are any.
    """

    def __init__(self, clock: IReactorTime, interval: float = WATCH_INTERVAL) -> None:
        self.clock = clock
        self.interval = interval
        # (watcher, client) -> [socket, FIN seen already]
        self._watched: dict[tuple[Watcher, bool], list[Any]] = {}
        self._call: Optional[IDelayedCall] = None

    def __len__(self) -> int:
        return len(self._watched)

    def add(self, watcher: Watcher, client: bool, transport: Any) -> None:
        """
        Watch C{transport}, the client's (C{client}) or backend's side of
        C{watcher}, until L{discard}ed.
        """
        if (watcher, client) not in self._watched:
            self.addSocket(watcher, client, socketOf(transport))

    def addSocket(self, watcher: Watcher, client: bool, skt: Any) -> None:
        """
        L{add}, given the socket under the transport (see L{socketOf}); a
        transport without one (L{None}) is not watched.
        """
        key = (watcher, client)
        if skt is None or key in self._watched:
            return
        self._watched[key] = [skt, False]
        if self._call is None:
            self._call = self.clock.callLater(self.interval, self._look)

    def discard(self, watcher: Watcher, client: bool) -> None:
        """
        Stop watching that side (it is read again, or the session ended).
        """
        # The pending look, if any, stays: it finds nothing and stops (a
        # call and a cancel per session would cost more).
        self._watched.pop((watcher, client), None)

    def _look(self) -> None:
        self._call = None
        poller = select.poll()
        byFd: dict[int, list[tuple[Watcher, bool]]] = {}
        for key, (skt, finSeen) in list(self._watched.items()):
            fd = skt.fileno()
            if fd < 0:
                # Closed under us: the session hears of it its own way.
                del self._watched[key]
                continue
            byFd.setdefault(fd, []).append(key)
            poller.register(fd, 0 if finSeen else _POLLRDHUP)
        try:
            events = poller.poll(0)
        except OSError:
            events = []
        for fd, mask in events:
            for key in byFd.get(fd, ()):
                entry = self._watched.get(key)
                if entry is None:
                    continue
                watcher, client = key
                skt = entry[0]
                if mask & _POLLFAILED:
                    try:
                        err = skt.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    except OSError as e:
                        err = e.errno or 0
                    if err:
                        self.discard(watcher, client)
                        watcher.pausedSideFailed(client, err)
                        continue
                if not entry[1] and mask & (_POLLRDHUP | select.POLLHUP):
                    entry[1] = True
                    watcher.pausedSideFinished(client)
        if self._watched and self._call is None:
            self._call = self.clock.callLater(self.interval, self._look)

    def stop(self) -> None:
        """
        Stop looking (the proxy is shutting down).
        """
        self._watched.clear()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


__all__ = ["PausedWatch", "WATCH_INTERVAL", "Watcher"]
