"""
Instance locks: one process at a time serves an address.

A TCP listener of the workers' parent binds one C{SO_REUSEPORT} socket per
worker (L{txsockproxy.reuseport}), and C{SO_REUSEPORT} lets any process of
the same user bind that address again: two instances of one configuration
would both accept from it, silently. So the parent first takes the address's
lock: a Linux abstract unix socket bound to a name derived from the address
and the user (C{\\0txsockproxy/UID/tcp/127.0.0.1/8080}). Binding it is atomic (C{EADDRINUSE}:
another process holds it), it needs no file, it is per network namespace as
ports are, and it vanishes with the last descriptor of it: a process that
dies leaves no stale lock. A take-over hands the locks over with the
listening sockets (L{txsockproxy.takeover}), so the address stays locked
throughout.

Where abstract sockets do not exist (not Linux), or the lock socket cannot
be made, there is no lock: one warning, and binding goes on as without it.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import socket
from typing import Callable, Optional

from twisted.logger import Logger

from txsockproxy import procfs

PREFIX = "txsockproxy/"
# The longest abstract name (sun_path's 108 bytes, less the leading NUL).
MAX_NAME = 107


class LockHeld(Exception):
    """
    Another process holds the lock; the message says which address.
    """


def tcpLockName(interface: str, port: int, family: int = socket.AF_INET) -> str:
    """
    The lock name of the TCP address C{interface}:C{port} (C{""}: every
    interface of C{family}), the same for every spelling of the address.
    """
    if not interface:
        interface = "::" if family == socket.AF_INET6 else "0.0.0.0"
    try:
        interface = ipaddress.ip_address(interface.split("%", 1)[0]).compressed
    except ValueError:
        pass
    return _fit(f"tcp/{interface}/{port}")


def pathLockName(kind: str, path: str) -> str:
    """
    The lock name of the filesystem path C{path} used as a C{kind}.
    """
    return _fit(f"{kind}{path}")


def _fit(name: str) -> str:
    # Room for the user id (at most 10 digits and a slash).
    if len((PREFIX + name).encode("utf-8")) <= MAX_NAME - 11:
        return name
    return "sha256/" + hashlib.sha256(name.encode("utf-8")).hexdigest()


def _abstract(name: str) -> str:
    """
    The abstract socket address of the lock C{name}: under this process's
    effective user id. Abstract names have no permissions, so a name of
    its own for each user keeps another user from holding the lock (only
    processes of one user can share an C{SO_REUSEPORT} address anyway).
    """
    return f"\0{PREFIX}{os.geteuid()}/{name}"


class InstanceLock:
    """
    One lock held by this process: its socket, named C{name}.

    @ivar fileno: its descriptor, or -1 once released.
    """

    def __init__(self, name: str, sock: socket.socket) -> None:
        self.name = name
        self._socket: Optional[socket.socket] = sock

    @property
    def fileno(self) -> int:
        """
        The lock socket's descriptor (-1: released).
        """
        return self._socket.fileno() if self._socket is not None else -1

    def release(self) -> None:
        """
        Close this process's descriptor of the lock (the lock is free once
        no process has one).
        """
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()


def acquire(name: str) -> Optional[InstanceLock]:
    """
    Take the lock C{name}.

    @return: the lock; or L{None}: locks are not available here (not
        Linux, or the socket cannot be made).
    @raise LockHeld: another process holds it.
    """
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        sock.bind(_abstract(name))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise LockHeld(name) from None
        return None
    return InstanceLock(name, sock)


def isLock(fileno: int, name: str) -> bool:
    """
    Whether the descriptor C{fileno} is the socket of the lock C{name}.
    """
    try:
        sock = socket.socket(fileno=os.dup(fileno))
    except OSError:
        return False
    try:
        return (sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
                and sock.getsockname() in (_abstract(name),
                                           _abstract(name).encode("utf-8")))
    except OSError:
        return False
    finally:
        sock.close()


def adopt(name: str, fileno: int) -> Optional[InstanceLock]:
    """
    Hold the lock C{name} whose socket another process handed over as
    C{fileno} (owned from now on).

    @return: the lock, or L{None} (closed): C{fileno} is not that lock.
    """
    if not isLock(fileno, name):
        try:
            os.close(fileno)
        except OSError:
            pass
        return None
    sock = socket.socket(fileno=fileno)
    return InstanceLock(name, sock)


class InstanceLocks:
    """
    The TCP address locks a process holds, by name (one registry per
    process: L{LOCKS}), so that a take-over can hand them over.
    """

    log = Logger()

    def __init__(self, lock: Callable[[str], Optional[InstanceLock]] = acquire) -> None:
        """
        @param lock: takes a lock (L{acquire}).
        """
        self._lock = lock
        self._held: dict[str, InstanceLock] = {}
        self._warned = False

    def acquire(self, name: str, address: str) -> None:
        """
        Hold the lock C{name} of C{address} (at once if held already, e.g.
        adopted in a take-over).

        @raise LockHeld: another process holds it ("another process serves
            ADDRESS").
        """
        if name in self._held:
            return
        try:
            lock = self._lock(name)
        except LockHeld:
            raise LockHeld(f"another process serves {address}") from None
        if lock is None:
            if not self._warned:
                self._warned = True
                self.log.warn("no instance lock (abstract unix sockets are Linux's): "
                              "another instance may bind {address} too", address=address)
            return
        self._held[name] = lock

    def adopt(self, lock: InstanceLock) -> None:
        """
        Hold C{lock} (handed over by the process taken over).
        """
        previous = self._held.pop(lock.name, None)
        if previous is not None:
            previous.release()
        self._held[lock.name] = lock

    def release(self, name: str) -> None:
        """
        Let the lock C{name} go, if held.
        """
        lock = self._held.pop(name, None)
        if lock is not None:
            lock.release()

    def held(self) -> list[InstanceLock]:
        """
        The locks held, to hand over.
        """
        return list(self._held.values())


# This process's.
LOCKS = InstanceLocks()


_LISTEN = "0A"


def _address(hexAddress: str) -> Optional[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """
    The address of a C{/proc/net/tcp} or C{tcp6} entry (host byte order,
    32-bit words).
    """
    try:
        raw = bytes.fromhex(hexAddress)
    except ValueError:
        return None
    if len(raw) not in (4, 16):
        return None
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _overlap(ours: ipaddress.IPv4Address | ipaddress.IPv6Address,
             theirs: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """
    Whether connections to one of two listening addresses of a port may
    reach the other: the same address, or either one every address (the
    IPv6 wildcard also takes IPv4: Twisted's IPv6 sockets are dual-stack).
    """
    if ours == theirs or theirs.is_unspecified and (ours.version == theirs.version
                                                    or theirs.version == 6):
        return True
    return ours.is_unspecified and (ours.version == theirs.version or ours.version == 6)


def listeningElsewhere(interface: str, port: int, proc: str = procfs.PROC) -> Optional[str]:
    """
    A TCP socket of another process (or of none: one this process does not
    hold) that listens on C{port} at an address overlapping C{interface}
    (C{""}: every address): the exact-address lock does not see those
    (C{0.0.0.0:8080} beside C{127.0.0.1:8080}), and C{SO_REUSEPORT} lets the
    same user bind both.

    @return: its address, as C{ADDRESS:PORT}; or L{None}: none (or it
        cannot be told: no C{/proc/net}).
    """
    try:
        ours = ipaddress.ip_address(interface.split("%", 1)[0] or "0.0.0.0")
    except ValueError:
        return None
    if isinstance(ours, ipaddress.IPv6Address) and ours.ipv4_mapped is not None:
        ours = ours.ipv4_mapped
    own: Optional[frozenset[int]] = None
    for table in ("tcp", "tcp6"):
        try:
            with open(os.path.join(proc, "net", table), encoding="ascii") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            hexAddress, _, hexPort = fields[1].partition(":")
            try:
                if int(hexPort, 16) != port:
                    continue
            except ValueError:
                continue
            theirs = _address(hexAddress)
            if theirs is None or not _overlap(ours, theirs):
                continue
            if own is None:
                own = procfs.socketInodes("self", proc) or frozenset()
            if fields[9].isdigit() and int(fields[9]) in own:
                continue
            shown = f"[{theirs}]" if theirs.version == 6 else str(theirs)
            return f"{shown}:{port}"
    return None


__all__ = ["LOCKS", "InstanceLock", "InstanceLocks", "LockHeld", "acquire", "adopt", "isLock",
           "listeningElsewhere",
           "pathLockName", "tcpLockName"]
