"""
One listening socket per worker for a TCP listen endpoint, all bound to the
same address with C{SO_REUSEPORT}: the kernel spreads new connections among
them by a hash of the connection, instead of the workers taking turns at one
shared socket. The parent (L{txsockproxy.workers}) binds them all and keeps
them, so a worker that restarts gets its own socket (and the connections
waiting in it) back.

A reactor for building one listener's endpoint (C{serverFromString}): its
C{listenTCP} (and C{listenSSL}, which listens through it) binds the
sockets; anything else goes to the reactor it wraps (unix sockets, systemd's
sockets: one shared socket, as without it).

Before binding a port, the process takes its instance lock
(L{txsockproxy.instancelock}): C{SO_REUSEPORT} would otherwise let a second
instance of the same configuration bind the port too, and both accept.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Callable, Optional

from twisted.internet import error
from zope.interface import directlyProvides, providedBy

from txsockproxy.adopting import InheritedSocket
from txsockproxy.instancelock import (
    LOCKS,
    InstanceLocks,
    LockHeld,
    listeningElsewhere,
    tcpLockName,
)


def bindReusePort(family: int, address: tuple[str, int], backlog: int) -> socket.socket:
    """
    A non-blocking socket listening on C{address} with C{SO_REUSEPORT} (and
    C{SO_REUSEADDR}), so that others of the same user can join it.
    """
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(address)
        s.listen(backlog)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


class ReusePortReactor:
    """
    The reactor it wraps, except that C{listenTCP} binds C{count} sockets
    with C{SO_REUSEPORT} to the address asked for (an ephemeral port: the
    one the first got). The first is listened on as the wrapped reactor's
    port (adopted); the others' descriptors are in L{extra}.

    Before binding a port other than 0, it takes the address's instance
    lock in C{locks}, held until L{close}.

    @ivar extra: the other sockets' descriptors, owned by the caller.
    """

    def __init__(self, reactor: Any, count: int, locks: InstanceLocks = LOCKS,
                 elsewhere: Callable[[str, int], Optional[str]] = listeningElsewhere) -> None:
        self._elsewhere = elsewhere
        self._reactor = reactor
        self._count = count
        self._locks = locks
        self._lockName: Optional[str] = None
        self.extra: list[int] = []
        directlyProvides(self, *providedBy(reactor))

    def _lock(self, family: int, interface: str, port: int) -> None:
        """
        Take the instance lock of the address, for a port other than 0.

        @raise twisted.internet.error.CannotListenError: another process
            holds it.
        """
        if not port or self._lockName is not None:
            return
        name = tcpLockName(interface, port, family)
        address = f"[{interface}]:{port}" if ":" in interface else f"{interface or '*'}:{port}"
        try:
            self._locks.acquire(name, address)
        except LockHeld as e:
            raise error.CannotListenError(interface, port,
                                          OSError(errno.EADDRINUSE, str(e))) from None
        self._lockName = name

    def _unlock(self) -> None:
        name, self._lockName = self._lockName, None
        if name is not None:
            self._locks.release(name)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        """
        Bind the sockets and listen on the first.

        @raise twisted.internet.error.CannotListenError: one cannot be bound.
        """
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        self._lock(family, interface, port)
        if port:
            other = self._elsewhere(interface, port)
            if other is not None:
                self._unlock()
                raise error.CannotListenError(interface, port, OSError(
                    errno.EADDRINUSE, f"another process listens on {other}"))
        sockets: list[socket.socket] = []
        try:
            for _ in range(self._count):
                s = bindReusePort(family, (interface, port), backlog)
                sockets.append(s)
                port = s.getsockname()[1]
        except OSError as e:
            for s in sockets:
                s.close()
            self._unlock()
            raise error.CannotListenError(interface, port, e) from None
        try:
            listening = self._reactor.adoptStreamPort(sockets[0].fileno(), family, factory)
        finally:
            sockets[0].close()
        self.extra = [s.detach() for s in sockets[1:]]
        return listening

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        """
        Bind the sockets (the parent never accepts: no TLS needed here).
        """
        return self.listenTCP(port, factory, backlog, interface)

    def close(self) -> None:
        """
        Close the other sockets, and let the instance lock go.
        """
        self._unlock()
        extra, self.extra = self.extra, []
        for fd in extra:
            try:
                os.close(fd)
            except OSError:
                pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


class InheritedReusePortReactor(ReusePortReactor):
    """
    For the workers' parent of a process that took over (see
    above): the reactor it wraps (an L{AdoptingReactor}),
    whose C{listenTCP} adopts the socket handed over, with, in L{extra}, the
    old parent's other SO_REUSEPORT sockets of that listener, one for each
    worker but the first: the same sockets, with the connections waiting in
    them, go on being accepted from. Fewer workers than before: the
    sockets left over are closed (connections waiting in them then are
    reset). More: sockets are bound for them, as L{ReusePortReactor} does. A
    socket handed over without SO_REUSEPORT (an old instance that shared one
    socket) stays one shared socket.

    @ivar extra: the other sockets' descriptors, owned by the caller.
    """

    def __init__(self, reactor: Any, inherited: list[InheritedSocket], count: int,
                 locks: InstanceLocks = LOCKS) -> None:
        super().__init__(reactor, count, locks)
        self._inherited = inherited

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        """
        Adopt the socket handed over, and gather the others.

        @raise twisted.internet.error.CannotListenError: a socket to add
            cannot be bound.
        """
        # Adopted from the process taken over (held already), or taken now.
        self._lock(socket.AF_INET6 if ":" in interface else socket.AF_INET, interface, port)
        try:
            listening = self._reactor.listenTCP(port, factory, backlog, interface)
        except BaseException:
            self._unlock()
            raise
        handed = [s for s in self._inherited if s.fileno >= 0]
        fds = []
        for inherited in handed:
            fd, inherited.fileno = inherited.fileno, -1
            fds.append(fd)
        keep, surplus = fds[:self._count - 1], fds[self._count - 1:]
        for fd in surplus:
            os.close(fd)
        try:
            probe = socket.socket(fileno=os.dup(listening.fileno()))
            try:
                reusable = probe.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
                address = probe.getsockname()[:2]
                family = probe.family
            finally:
                probe.close()
            if reusable:
                while len(keep) < self._count - 1:
                    keep.append(bindReusePort(family, address, backlog).detach())
        except OSError as e:
            for fd in keep:
                os.close(fd)
            listening.stopListening()
            self._unlock()
            raise error.CannotListenError(interface, port, e) from None
        self.extra = keep if reusable else []
        if not reusable:
            for fd in keep:
                os.close(fd)
        return listening


__all__ = ["InheritedReusePortReactor", "ReusePortReactor", "bindReusePort"]
